"""AdaLoRA's scale after budget pruning, against peft's own reload and float64 merge.

peft's ``AdaLoraModel.resize_modules_by_rank_pattern`` rebuilds each module of
``rank_pattern`` at its kept rank k: ``update_layer`` sets ``scaling`` to
``lora_alpha``, or to ``float(k)`` when ``lora_alpha ≤ 0``, and ``ranknum``
is copied back from the module made at ``init_r``. So with ``lora_alpha ≤ 0``
a pruned module's ΔW is ``B @ (A ⊙ E) · k / (init_r + 1e-5)``, and a module
missing from ``rank_pattern`` keeps ``init_r / (init_r + 1e-5)``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import SpectraError
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.checks import DTYPES, dtype_id, reference_sigma

INIT_R = 6
# Kept ranks per (layer, role) of the pruned modules; the others are not in rank_pattern.
KEPT = {(0, "key"): 2, (0, "value"): 4, (1, "key"): 1, (1, "value"): 0, (2, "key"): 2}
ROLE_OF = {"key": "k", "value": "v"}


def _pruned_adalora(tmp_path, minilm_dir, dtype, lora_alpha):
    from peft import AdaLoraConfig

    config = AdaLoraConfig(
        init_r=INIT_R,
        target_r=2,
        lora_alpha=lora_alpha,
        target_modules=["key", "value"],
        layers_to_transform=[0, 1, 2],
        total_step=100,
    )
    model = random_peft_model(minilm_dir, config, seed=23)
    pattern = {}
    for (layer, role), kept in KEPT.items():
        # a keep-mask as peft's RankAllocator writes it: not the first k ranks
        keep = [index in (5, 2, 0, 4, 1, 3)[:kept] for index in range(INIT_R)]
        pattern[f"encoder.layer.{layer}.attention.self.{role}.lora_E"] = keep
    model.peft_config["default"].rank_pattern = pattern
    return save_peft_adapter(model, tmp_path / "adalora", minilm_dir, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("lora_alpha", [0, -3])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_alpha_at_most_0_scales_at_the_kept_rank_as_peft_reloads(
    tmp_path, minilm_dir, dtype, lora_alpha
):
    adapter = _pruned_adalora(tmp_path, minilm_dir, dtype, lora_alpha)
    # the saved tensors hold the kept ranks only (peft's resize_state_dict_by_rank_pattern)
    from safetensors.torch import load_file

    saved = load_file(str(adapter.path / "adapter_model.safetensors"))
    assert saved["base_model.model.encoder.layer.0.attention.self.key.lora_A"].shape[0] == 2
    assert saved["base_model.model.encoder.layer.2.attention.self.value.lora_A"].shape[0] == 6
    assert {t.dtype for t in saved.values()} == {dtype}

    checkpoint = spectra.load(adapter.path)
    seen = set()
    for delta in checkpoint.deltas(modules="k,v"):
        key = (delta.layer, delta.role)
        if key == (1, "v"):  # pruned to rank 0: peft's merge leaves W0 as it was
            assert key not in adapter.reference
            assert np.count_nonzero(delta.update.to_dense().numpy()) == 0
            continue
        reference = adapter.reference[key]
        rebuilt = delta.update.to_dense().numpy()
        error = np.linalg.norm(rebuilt - reference) / np.linalg.norm(reference)
        assert error < 1e-9, (delta.key, error)
        seen.add(key)
    assert seen == set(adapter.reference)
    assert len(seen) == 5  # 4 pruned modules with ranks, and layer 2's v at init_r

    report = spectra.analyze(adapter.path)
    scales = {(row["layer"], row["role"]): row["scale"] for row in report.rows}
    assert scales[(0, "k")] == pytest.approx(2 / 6.00001, rel=1e-12)
    assert scales[(0, "v")] == pytest.approx(4 / 6.00001, rel=1e-12)
    assert scales[(2, "v")] == pytest.approx(6 / 6.00001, rel=1e-12)  # not pruned: init_r
    for row in report.rows:
        key = (row["layer"], row["role"])
        if key == (1, "v"):
            continue
        sigma = report.spectrum(*key)
        expected = reference_sigma(adapter.reference[key])
        np.testing.assert_allclose(sigma, expected[: len(sigma)], rtol=1e-9)
        assert row["numerical_rank"] == {(1, "k"): 1, (0, "k"): 2, (2, "k"): 2}.get(
            key, 4 if key == (0, "v") else 6
        )


def test_positive_alpha_keeps_alpha_over_init_r(tmp_path, minilm_dir):
    adapter = _pruned_adalora(tmp_path, minilm_dir, torch.float32, 8)
    report = spectra.analyze(adapter.path)
    for row in report.rows:
        key = (row["layer"], row["role"])
        if key == (1, "v"):
            continue
        assert row["scale"] == pytest.approx(8 / 6.00001, rel=1e-12)
        expected = reference_sigma(adapter.reference[key])
        sigma = report.spectrum(*key)
        np.testing.assert_allclose(sigma, expected[: len(sigma)], rtol=1e-9)


def _edited(adapter, tmp_path, edit):
    folder = tmp_path / "edited"
    shutil.copytree(adapter.path, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    edit(config)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_a_rank_pattern_that_disagrees_with_the_file_is_refused(tmp_path, minilm_dir):
    adapter = _pruned_adalora(tmp_path, minilm_dir, torch.float32, 0)
    key = "encoder.layer.0.attention.self.key.lora_E"

    def keep_three(config):
        config["rank_pattern"][key] = [True, True, True, False, False, False]

    with pytest.raises(SpectraError) as caught:
        spectra.load(_edited(adapter, tmp_path, keep_three))
    message = str(caught.value)
    assert "adapter_model.safetensors" in message
    assert "encoder.layer.0.attention.self.key holds 2 ranks" in message
    assert "keeps 3" in message

    def not_a_mask(config):
        config["rank_pattern"][key] = 2

    with pytest.raises(SpectraError, match="list of true/false"):
        spectra.load(_edited(adapter, tmp_path / "b", not_a_mask))

    def forgotten(config):  # peft would rebuild layer 0's k at init_r = 6 and fail to load
        del config["rank_pattern"][key]

    with pytest.raises(SpectraError, match="init_r"):
        spectra.load(_edited(adapter, tmp_path / "c", forgotten))
