"""σ as every metric takes it: validated, float64, sorted, scaled by σ_1.

The helpers the metric modules share (private: the public functions are
re-exported by ``spectra.metrics``). See the package docstring for the
conventions they enforce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SpectrumLike = torch.Tensor | Sequence[float]


def _sorted_spectrum(sigma: SpectrumLike) -> torch.Tensor:
    """σ as a descending float64 CPU tensor, validated."""
    values = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
    if not torch.isfinite(values).all():
        raise ValueError("singular values must be finite; got NaN or Inf")
    if (values < 0).any():
        raise ValueError(f"singular values must be >= 0; got minimum {values.min().item()!r}")
    return torch.sort(values, descending=True).values


def _unit_spectrum(sigma: SpectrumLike) -> torch.Tensor | None:
    """σ/σ_1, descending; ``None`` for the zero (or empty) spectrum."""
    values = _sorted_spectrum(sigma)
    if values.numel() == 0 or values[0] == 0:
        return None
    return values / values[0]
