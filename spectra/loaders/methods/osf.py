"""OSF: ΔW = U diag(S) V − U₀ diag(S₀) V₀ (factored, rank ≤ 2r): trained minus initial low part.

Follows peft's ``tuners/osf/layer.py`` (``OSFLayer.get_delta_weight``) and
``tuners/osf/utils.py`` (``decompose_weight_matrix``). OSF splits W0 by its
SVD into the top ``effective_rank`` directions, kept frozen, and the other
``r_low`` ones, trained: ``U`` = ``osf_svd_params.U_low`` ``(d_out, r_low)``,
``S`` = ``S_low`` ``(r_low,)``, ``V`` = ``V_low`` ``(r_low, d_in)``. The
initial low part ``U₀ diag(S₀) V₀`` is not saved: peft takes it again from
W0 at load, by a float32 ``torch.linalg.svd`` of W0 (its last ``r_low``
singular triplets), and so does this module, in the same float32 call, so
that the frozen part is the one peft subtracts; the rest is float64.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta", "initial_low_part"]


def initial_low_part(
    base: torch.Tensor, r_low: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U₀ (d_out, r_low), S₀ (r_low,), V₀ (r_low, d_in)): W0's last singular triplets, as peft's.

    peft's ``decompose_weight_matrix`` runs ``torch.linalg.svd`` on W0 in
    float32 and keeps everything after the top ``min(d) − r_low``; the
    factors are returned widened to float64.
    """
    W32 = base.to(torch.float32).contiguous()  # (d_out, d_in), as peft holds it
    U, S, Vh = torch.linalg.svd(W32, full_matrices=False)
    kept = S.shape[0] - r_low  # effective_rank
    return U[:, kept:].double(), S[kept:].double(), Vh[kept:].double()


def delta(
    U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, base: torch.Tensor, rows: Rows = ALL_ROWS
) -> Factored:
    """OSF's ΔW of one module: ``[U·S, −U₀·S₀] @ [V; V₀]``."""
    r_low = S.shape[0]
    U0, S0, V0 = initial_low_part(base, r_low)
    B = torch.cat([U.double() * S.double(), -(U0 * S0)], dim=1)  # (d_out, 2·r_low)
    A = torch.cat([V.double(), V0], dim=0)  # (2·r_low, d_in)
    return Factored(B[rows], A, 1.0)
