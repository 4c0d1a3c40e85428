"""Rows at their rounding floor: which ones, and the one warning that says so."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..selection import layer_ranges
from .rows import row_key

__all__ = ["NOISE_SHARE", "at_noise_floor", "noise_summary", "noise_warning"]

NOISE_SHARE = 0.5  # rows with less of Σσ above the rounding floor get a warning


def at_noise_floor(row: Mapping[str, object]) -> bool:
    """Whether a row's ΔW ≠ 0 has less than ``NOISE_SHARE`` of Σσ above its rank tolerance.

    Only rows with a rounding floor (dense ΔW subtracted from stored weights)
    can be; half, because below it the values at the floor weigh more in
    p_i = σ_i/Σσ (entropy, effective rank) than the update's own directions.
    """
    if row.get("noise_floor") is None or not row["spectral_norm"]:  # also: reports before 0.2
        return False
    if row.get("share_above_floor") is None:  # an estimated row: all its σ were not taken
        return False
    return float(row["share_above_floor"]) < NOISE_SHARE


def noise_warning(row: Mapping[str, object]) -> str | None:
    """What was measured of one row at its rounding floor (``at_noise_floor``), else None."""
    if not at_noise_floor(row):
        return None
    key = row_key(row)
    return (
        f"{key}: {float(row['share_above_floor']):.0%} of Σσ lies above the {row['dtype']} "
        f"rounding floor (σ ≤ {row['noise_floor']:.3g}; numerical rank {row['numerical_rank']})"
    )


def noise_summary(rows: Sequence[Mapping[str, object]]) -> str | None:
    """One warning for all rows at their rounding floor (``at_noise_floor``), else None.

    Says how many rows, which roles and layers (or the rows themselves when
    there are three or fewer), the dtypes, and the range of their share of
    Σσ above the floor: what was measured, once per report.
    """
    noisy = [row for row in rows if at_noise_floor(row)]
    if not noisy:
        return None
    shares = [float(row["share_above_floor"]) for row in noisy]
    if len(noisy) <= 3:
        where = ", ".join(row_key(row) for row in noisy)
    else:
        roles = ", ".join(dict.fromkeys(str(row["role"]) for row in noisy))
        where = f"roles {roles}; layers {layer_ranges(int(row['layer']) for row in noisy)}"
    dtypes = "/".join(dict.fromkeys(str(row["dtype"]) for row in noisy))
    low, high = min(shares), max(shares)
    spread = f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%} to {high:.0%}"
    verb = "has" if len(noisy) == 1 else "have"
    return (
        f"{len(noisy)} of {len(rows)} modules ({where}) {verb} only {spread} of Σσ above the "
        f"{dtypes} rounding floor: "
        "their entropy and effective rank weigh values at that floor more than the update "
        "(health: noise)"
    )
