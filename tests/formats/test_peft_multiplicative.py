"""Multiplicative and rotational peft methods, made by peft 0.21 on MiniLM, against its merge.

(IA)³, OFT, BOFT, HRA, RoAd, PSOFT, GLoRA and HiRA each multiply or rotate
W0, so each needs the base. Every case is a real adapter of layer 0's key and
value (and, for (IA)³, the feedforward ``intermediate.dense``, whose vector
scales columns instead of rows), its tensors perturbed away from the identity
update, saved in float32, bfloat16 and float16 (the non-default options in
float32). The reference is peft's own load of the saved file, merged in
float64, minus W0; spectra's rebuild must equal it to 1e-10 relative
Frobenius error and its exact σ numpy's SVD of it to 1e-10 of σ₁.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import FormatError, MissingBaseError
from tests.helpers.adapters import random_peft_model
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)
from tests.helpers.models import load_bert
from tests.helpers.peft_methods import SAFETENSORS_DTYPE, file_dtypes

_PATHS = {"k": "attention.self.key", "v": "attention.self.value", "up": "intermediate.dense"}
_LAYER0 = {"layers_to_transform": [0], "target_modules": ["key", "value"]}
_LAYER0_RE = r".*layer\.0\..*(key|value)$"  # for configs without layers_to_transform
# Trainable tensors that start at one (a scale): perturbed around one, not around zero.
_ONES = re.compile(r"(ia3_l|boft_s|road_alpha|vector_[ab])")


@dataclass(frozen=True)
class Case:
    """One adapter to make: its peft config, the roles it adapts, and how peft must run."""

    config: object
    roles: tuple[str, ...] = ("k", "v")
    base_dtype: torch.dtype = torch.float64  # PSOFT's SVD needs a float32 base in peft
    butterfly: bool = False  # BOFT with several factors: peft's CUDA block-diagonal, on CPU


def _cases() -> dict[str, Case]:
    import peft

    return {
        "ia3": Case(
            peft.IA3Config(
                target_modules=r".*layer\.0\..*(key|value|intermediate\.dense)$",
                feedforward_modules=r".*intermediate\.dense$",
            ),
            roles=("k", "v", "up"),
        ),
        "oft": Case(peft.OFTConfig(oft_block_size=32, **_LAYER0)),
        "oft-cayley-coft": Case(
            peft.OFTConfig(
                r=16, oft_block_size=0, use_cayley_neumann=False, coft=True, eps=4.7, **_LAYER0
            )
        ),
        "oft-shared-3-terms": Case(
            peft.OFTConfig(
                oft_block_size=16, block_share=True, num_cayley_neumann_terms=3, **_LAYER0
            )
        ),
        "boft": Case(peft.BOFTConfig(boft_block_size=8, **_LAYER0)),
        "boft-2-factors": Case(
            peft.BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, **_LAYER0),
            butterfly=True,
        ),
        "boft-3-factors": Case(
            peft.BOFTConfig(
                boft_block_size=0, boft_block_num=16, boft_n_butterfly_factor=3, **_LAYER0
            ),
            butterfly=True,
        ),
        "hra": Case(peft.HRAConfig(r=4, **_LAYER0)),
        "hra-gram-schmidt": Case(peft.HRAConfig(r=3, apply_GS=True, **_LAYER0)),
        "road": Case(peft.RoadConfig(group_size=64, target_modules=_LAYER0_RE)),
        "road-2": Case(peft.RoadConfig(variant="road_2", group_size=32, target_modules=_LAYER0_RE)),
        "road-4": Case(peft.RoadConfig(variant="road_4", group_size=64, target_modules=_LAYER0_RE)),
        "psoft": Case(peft.PsoftConfig(r=8, **_LAYER0), base_dtype=torch.float32),
        "psoft-pissa-lowrank-neumann": Case(
            peft.PsoftConfig(
                r=6,
                psoft_alpha=12,
                ab_svd_init="pissa_init",
                psoft_svd="lowrank",
                psoft_svd_lowrank_niter=3,
                random_seed=5,
                use_cayley_neumann=True,
                num_cayley_neumann_terms=4,
                cayley_neumann_eps=0.5,
                psoft_mag_a=False,
                **_LAYER0,
            ),
            base_dtype=torch.float32,
        ),
        "psoft-not-orthogonal": Case(
            peft.PsoftConfig(r=4, psoft_orth=False, psoft_mag_b=False, **_LAYER0),
            base_dtype=torch.float32,
        ),
        "glora": Case(peft.GloraConfig(r=4, target_modules=_LAYER0_RE)),
        "glora-vector": Case(peft.GloraConfig(config_A_B="vector", target_modules=_LAYER0_RE)),
        "glora-constant": Case(peft.GloraConfig(config_A_B="constant", target_modules=_LAYER0_RE)),
        "hira": Case(peft.HiraConfig(r=4, **_LAYER0)),
    }


DEFAULTS = ["ia3", "oft", "boft", "hra", "road", "psoft", "glora", "hira"]
OPTIONS = [
    "oft-cayley-coft",
    "oft-shared-3-terms",
    "boft-2-factors",
    "boft-3-factors",
    "hra-gram-schmidt",
    "road-2",
    "road-4",
    "psoft-pissa-lowrank-neumann",
    "psoft-not-orthogonal",
    "glora-vector",
    "glora-constant",
]
RUNS = [(name, dtype) for name in DEFAULTS for dtype in DTYPES]
RUNS += [(name, torch.float32) for name in OPTIONS]


class _BlockDiagonal:
    """peft's CUDA kernel ``fbd_cuda`` on the CPU: each factor's blocks as one block diagonal.

    peft builds BOFT with several butterfly factors only where that kernel
    compiles; with this stand-in its own permutations and products run here.
    """

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:  # (m, n, b, b) → [(m, nb, nb)]
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]


@contextlib.contextmanager
def _peft_context(case: Case):
    """BOFT's kernel: the stand-in, or none (peft's CPU path, without its compile attempt)."""
    from peft.tuners.boft import layer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layer, "get_fbd_cuda", lambda: _BlockDiagonal() if case.butterfly else None)
        yield


def _perturb(model, seed: int) -> None:
    """Random trainable tensors: around one for the scales, around zero for the rest."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                centre = 1.0 if _ONES.search(name) else 0.0
                parameter.copy_(centre + (0.1 if centre else 0.05) * noise)


def _weights(model, roles) -> dict[tuple[int, str], np.ndarray]:
    return {
        (0, role): model.get_submodule(f"encoder.layer.0.{_PATHS[role]}")
        .weight.detach()
        .double()
        .numpy()
        .copy()
        for role in roles
    }


def _peft_merge(folder: Path, base: Path, case: Case) -> dict[tuple[int, str], np.ndarray]:
    """peft's load of the saved file, merged in float64, minus W0, per (layer, role)."""
    from peft import PeftModel

    model = load_bert(base, case.base_dtype)
    before = _weights(model, case.roles)
    merged = PeftModel.from_pretrained(model, str(folder)).double().merge_and_unload()
    return {key: weight - before[key] for key, weight in _weights(merged, case.roles).items()}


@dataclass
class Saved:
    path: Path
    case: Case
    reference: dict[tuple[int, str], np.ndarray]
    base: dict[tuple[int, str], np.ndarray]
    base_norms: dict[tuple[int, str], float]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_dir):
    """``saved(name, dtype)``: the case's adapter saved in ``dtype``; each model made once."""
    cases, models, files = _cases(), {}, {}

    def make(name: str, dtype: torch.dtype) -> Saved:
        if (name, dtype) in files:
            return files[(name, dtype)]
        case = cases[name]
        with _peft_context(case):
            if name not in models:
                models[name] = random_peft_model(minilm_dir, case.config, seed=3)
                _perturb(models[name], seed=len(name))
            model = models[name]
            if dtype != torch.float32:
                model = copy.deepcopy(model).to(dtype)
            folder = tmp_path_factory.mktemp(name) / dtype_id(dtype)
            model.save_pretrained(str(folder))
            reference = _peft_merge(folder, minilm_dir, case)
        base = _weights(load_bert(minilm_dir), case.roles)
        norms = {key: float(np.linalg.norm(weight)) for key, weight in base.items()}
        files[(name, dtype)] = Saved(folder, case, reference, base, norms)
        return files[(name, dtype)]

    return make


def _jobs(name: str) -> int | None:
    """PSOFT decomposes on the caller's threads, as peft's merge did (see ``_assert_sigma``)."""
    return 1 if name.startswith("psoft") else None


def _assert_sigma(report, adapter: Saved, tolerance: float = 1e-10) -> None:
    """σ of each row against numpy's SVD of the reference, to ``tolerance`` of σ₁.

    PSOFT's A and B are a float32 SVD of W0 that peft computes on load and
    spectra computes again; its singular vectors move by ~1e-5 with the number
    of threads it runs on (peft's own load does the same), so its rebuild is
    bit for bit peft's only on the same threads, and to ~1e-6 otherwise.
    """
    for row in report.rows:
        expected = reference_sigma(adapter.reference[(row["layer"], row["role"])])
        sigma = report.spectrum(row["layer"], row["role"])
        bound = tolerance * expected[0]
        np.testing.assert_allclose(sigma, expected[: len(sigma)], rtol=0, atol=bound)
        assert np.all(expected[len(sigma) :] <= bound)


@pytest.mark.parametrize(("name", "dtype"), RUNS, ids=[f"{n}-{dtype_id(d)}" for n, d in RUNS])
def test_rebuild_matches_peft_merge(saved, name, dtype):
    adapter = saved(name, dtype)
    roles = list(adapter.case.roles)
    assert set(file_dtypes(adapter.path).values()) == {SAFETENSORS_DTYPE[dtype]}  # the premise
    checkpoint = spectra.load(adapter.path)  # the base from base_model_name_or_path
    first = read_deltas(checkpoint, modules=roles)
    assert_same_reads(first, read_deltas(checkpoint, modules=roles))  # nothing written into
    assert {(r.delta.layer, r.delta.role) for r in first} == set(adapter.reference)
    for read in first:
        key = (read.delta.layer, read.delta.role)
        reference = adapter.reference[key]
        # the premise: a real update, neither zero nor W0 thrown away (ΔW = −W0)
        assert np.linalg.norm(reference) > 1e-4 * adapter.base_norms[key], key
        assert np.linalg.norm(reference + adapter.base[key]) > 0.1 * adapter.base_norms[key], key
        error = relative_error(read.dense, reference)
        assert error <= 1e-10, (key, error)

    _assert_sigma(
        spectra.analyze(adapter.path, modules=roles, method="exact", jobs=_jobs(name)), adapter
    )
    if name.startswith("psoft"):  # side by side, a thread each: a float32 SVD of other threads
        default = spectra.analyze(adapter.path, modules=roles, method="exact")
        _assert_sigma(default, adapter, tolerance=1e-5)

    # nothing vanishes: each tensor is read for an analysed module, or listed with its reason
    left_out = dict(checkpoint.not_analysed())
    modules = {read.delta.name for read in first}
    for tensor in file_dtypes(adapter.path):
        if tensor in left_out:
            assert left_out[tensor], tensor
        else:
            assert any(f".{module}." in f".{tensor}" for module in modules), tensor
    if name.startswith("glora"):  # the bias paths C, D, E: listed, with why
        assert left_out and all("bias" in reason for reason in left_out.values())
    else:
        assert left_out == {}


@pytest.mark.parametrize("name", DEFAULTS)
def test_without_a_base_the_error_names_the_base_argument(saved, name, tmp_path, minilm_dir):
    adapter = saved(name, torch.float32)
    folder = tmp_path / name
    shutil.copytree(adapter.path, folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "nowhere/to-be-found"
    config_path.write_text(json.dumps(config))
    roles = list(adapter.case.roles)
    with pytest.raises(MissingBaseError, match=r"it needs W0\. .*base=DIR"):
        spectra.analyze(folder, modules=roles)
    with pytest.raises(MissingBaseError, match="base=DIR"):
        list(spectra.load(folder).deltas(modules=roles))
    info = spectra.load(folder).describe()  # describing needs no base
    assert {m.role for m in info.modules} == set(roles)
    assert all(
        m.kind == ("factored" if name in ("hra", "psoft") else "dense") for m in info.modules
    )
    report = spectra.analyze(
        folder, base=minilm_dir, modules=roles, method="exact", jobs=_jobs(name)
    )
    _assert_sigma(report, adapter)


def _edited_copy(adapter: Saved, folder: Path, **changes) -> Path:
    """A copy of the adapter folder with config fields changed (``None``: removed)."""
    shutil.copytree(adapter.path, folder)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for field, value in changes.items():
        if value is None:
            config.pop(field, None)
        else:
            config[field] = value
    path.write_text(json.dumps(config))
    return folder


def test_oft_saved_by_a_peft_with_another_series_is_refused(saved, tmp_path):
    adapter = saved("oft", torch.float32)
    older = _edited_copy(adapter, tmp_path / "older", peft_version="0.17.1")
    with pytest.raises(FormatError, match=r"peft 0\.17\.1; peft 0\.18 changed that series"):
        spectra.load(older)
    unversioned = _edited_copy(adapter, tmp_path / "unversioned", peft_version=None)
    with pytest.raises(FormatError, match=r"older than 0\.18"):
        spectra.load(unversioned)
    exact = _edited_copy(adapter, tmp_path / "exact", peft_version=None, use_cayley_neumann=False)
    assert spectra.load(exact).describe().variant == "OFT"  # peft 0.18 changed the series only
    layout = _edited_copy(adapter, tmp_path / "layout", oft_block_size=None)
    with pytest.raises(FormatError, match=r"before 0\.14"):
        spectra.load(layout)


def test_boft_says_when_the_file_holds_other_factors_than_asked(saved, tmp_path):
    adapter = saved("boft", torch.float32)
    assert not any("butterfly" in w for w in spectra.load(adapter.path).describe().warnings)
    asked = _edited_copy(adapter, tmp_path / "asked", boft_n_butterfly_factor=2)
    warnings = spectra.load(asked).describe().warnings
    assert any("asks for 2 butterfly factors, the file holds 1" in w for w in warnings)
