"""C3A: ΔW = the block-circulant matrix of ``c3a_kernel``, divided by d_in (dense).

Follows peft's ``tuners/c3a/layer.py`` (``C3ALayer.get_delta_weight``:
``get_circulant_fast(c3a_kernel) / d_in``) and ``tuners/c3a/utils.py``
(``get_circulant_fast``). ``c3a_kernel`` is ``(d_out/b, d_in/b, b)``, b the
block size: block (p, q) of ΔW is the b×b circulant matrix of the kernel
``w = c3a_kernel[p, q]``. peft builds it with FFTs,
``fft(ifft(x) ⊙ fft(w))`` of each unit vector x, which is the circular
cross-correlation ``C[k, j] = w[(j − k) mod b]``; here the blocks are laid
out from that rule directly, exact in float64 (peft computes in float32).
A block-circulant matrix can have full rank: no bound.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(kernel: torch.Tensor, rows: Rows = ALL_ROWS) -> Dense:
    """C3A's ΔW of one module from ``c3a_kernel`` ``(d_out/b, d_in/b, b)``.

    Args:
        kernel: ``c3a_kernel``, one length-b kernel per block.
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Dense`` ΔW ``(d_out, d_in)`` in float64: block (p, q) is
        ``C[k, j] = kernel[p, q, (j − k) mod b]``, all divided by d_in.

    Example:
        >>> delta(torch.tensor([[[1.0, 2.0, 3.0]]])).matrix * 3
        tensor([[1., 2., 3.],
                [3., 1., 2.],
                [2., 3., 1.]], dtype=torch.float64)
    """
    blocks_out, blocks_in, size = kernel.shape
    position = torch.arange(size)
    shift = (position[None, :] - position[:, None]) % size  # (b, b): (j − k) mod b
    circulant = kernel.double()[:, :, shift]  # (d_out/b, d_in/b, b, b): [p, q, k, j]
    d_in = blocks_in * size
    matrix = circulant.permute(0, 2, 1, 3).reshape(blocks_out * size, d_in) / d_in
    return Dense(matrix[rows])  # (d_out, d_in)
