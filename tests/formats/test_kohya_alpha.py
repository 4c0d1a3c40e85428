"""kohya files whose ``alpha`` tensor is 0: alpha = r, scale 1, against a hand-computed ΔW.

kohya's ``networks/lora.py`` (``LoRAModule.__init__``) reads ``alpha is None
or alpha == 0`` as ``alpha = lora_dim``, so the scale alpha / r is 1; a
module with alpha 8 and r 4 has scale 2. The reference here is numpy's
``up @ down`` in float64 of the tensors read back from the saved file, times
that scale written as a literal, and numpy's SVD of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import spectra
from tests.helpers.checks import DTYPES, dtype_id

HIDDEN, RANK = 24, 4
PREFIX = "lora_te1_text_model_encoder_layers_{layer}_self_attn_{role}_proj"
# (layer, role) → the alpha tensor written, and the scale kohya gives it (by hand)
ALPHAS = {(0, "k"): (0.0, 1.0), (0, "v"): (0.0, 1.0), (1, "k"): (8.0, 2.0), (1, "v"): (0.0, 1.0)}


def _kohya_file(folder, dtype):
    generator = torch.Generator().manual_seed(41)
    tensors = {}
    for (layer, role), (alpha, _) in ALPHAS.items():
        module = PREFIX.format(layer=layer, role=role)
        tensors[f"{module}.lora_down.weight"] = torch.randn(RANK, HIDDEN, generator=generator)
        tensors[f"{module}.lora_up.weight"] = torch.randn(HIDDEN, RANK, generator=generator)
        tensors[f"{module}.alpha"] = torch.tensor(alpha)
    path = folder / "te_lora.safetensors"
    save_file({name: t.to(dtype) for name, t in tensors.items()}, str(path))
    return path


def _reference(path, layer, role) -> np.ndarray:
    """scale · up @ down in float64, from the saved tensors and the scale of ALPHAS."""
    module = PREFIX.format(layer=layer, role=role)
    with safe_open(str(path), "pt") as file:
        up = file.get_tensor(f"{module}.lora_up.weight").double().numpy()  # (out, r)
        down = file.get_tensor(f"{module}.lora_down.weight").double().numpy()  # (r, in)
    return ALPHAS[(layer, role)][1] * (up @ down)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_alpha_0_is_scale_1(tmp_path, dtype):
    path = _kohya_file(tmp_path, dtype)
    checkpoint = spectra.load(path)
    assert checkpoint.format == "kohya"
    seen = set()
    for delta in checkpoint.deltas(modules="k,v"):
        key = (delta.layer, delta.role)
        reference = _reference(path, *key)
        rebuilt = delta.update.to_dense().numpy()
        assert np.linalg.norm(rebuilt - reference) <= 1e-12 * np.linalg.norm(reference), key
        seen.add(key)
    assert seen == set(ALPHAS)

    report = spectra.analyze(path)
    for row in report.rows:
        key = (row["layer"], row["role"])
        assert row["scale"] == ALPHAS[key][1], key
        expected = np.linalg.svd(_reference(path, *key), compute_uv=False)
        sigma = report.spectrum(*key)
        assert len(sigma) == RANK
        np.testing.assert_allclose(sigma, expected[:RANK], rtol=1e-10)
    sources = {m.layer: m.scale_source for m in checkpoint.describe().modules if m.role == "k"}
    assert sources[0] == "alpha tensor 0: alpha = r, scale 1"
    assert sources[1] == "alpha tensor: 8/r = 8/4"
