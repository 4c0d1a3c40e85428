"""Independent references and checks: dtypes, numpy's spectrum, reads captured as yielded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# The dtypes checkpoints are saved in; half-precision values are exact in float64.
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def dtype_id(dtype: torch.dtype) -> str:
    """``bfloat16`` for ``torch.bfloat16``: a readable test id."""
    return str(dtype).removeprefix("torch.")


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


def folded_column(page: str, title: str, column: str) -> list[str]:
    """The cells of ``column`` in the page's folded table whose summary begins ``title``."""
    import html
    import re

    start = page.index(f"<summary>{html.escape(title)}")
    section = page[start : page.index("</details>", start)]
    cells = re.findall(rf'<td data-column="{re.escape(column)}"[^>]*>([^<]*)</td>', section)
    return [html.unescape(cell) for cell in cells]
