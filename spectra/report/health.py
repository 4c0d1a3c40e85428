"""Health flags: plain words for what a row's spectrum shows at a glance.

Each flag is a judgement of one report row, made from its σ, its floors and
its ``rank_ceiling``, with a threshold and the reason for it. ``analyze``
stores them in the ``health`` column (words separated by spaces, None when
none) and prints one line per flag under its table. Each says what was
measured, and no more.

``spike`` — one direction dominates: σ₁/σ₂ ≥ ``SPIKE_RATIO`` (10) **and**
    the top direction holds ≥ ``SPIKE_SHARE`` (90 %) of ‖ΔW‖_F². Both,
    because a rank-1 update in all but name is what breaks LoRA stacking and
    merging (one direction amplified far past the others: ai-toolkit #964),
    while a steep but spread spectrum (LoRA's usual σ₁ ≫ σ₈) is not a spike.
    At σ₁/σ₂ = 10 the second direction carries 1 % of σ₁²; the share test
    keeps a long flat tail of many small directions from hiding behind it.

``ceiling`` — the spectrum is spread evenly up to the most rank this ΔW can
    have: effective rank ≥ ``CEILING_SHARE`` (90 %) of the row's
    ``rank_ceiling`` c — r for a factored update (n·r for a MultiLoRA sum, a
    head's own r for a head), r₁·r₂ for LoHa, the product of the Kronecker
    factors' ranks for LoKr, min(d_out, d_in) for any other dense ΔW (a full
    fine-tune, DoRA), each capped by min(d_out, d_in). exp(entropy) reaches c
    only for a flat spectrum over all c directions, so every direction the
    update can hold is in use with similar weight. That is all it says: a
    well-trained adapter, an untrained one with random factors and a larger r
    that would have been used all look the same from one spectrum, so the flag
    does not claim that a larger r was wanted (compare runs at two ranks for
    that). Not for c = 1 (one direction always fills it: nothing measured),
    not with ``spike`` (a spike is one direction, not an even spread, however
    long its tail of small values: with c ≳ 20 000 both tests could pass) and
    not with ``noise`` (the spread is then the rounding's).

``noise`` — ΔW is not clearly above its rounding floor: less than
    ``noise.NOISE_SHARE`` (half) of Σσ lies above the rank tolerance, so
    entropy and effective rank weigh values at the floor more than the
    update's own directions (``noise.noise_summary`` says it once per
    report, with the range of the share above the floor).

``zero`` — ΔW is exactly zero (every metric is 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .noise import NOISE_SHARE
from .rows import row_key

__all__ = ["CEILING_SHARE", "FLAGS", "SPIKE_RATIO", "SPIKE_SHARE", "flag_lines", "row_flags"]

SPIKE_RATIO = 10.0
SPIKE_SHARE = 0.9
CEILING_SHARE = 0.9
FLAGS = {
    "spike": f"one direction dominates (σ₁/σ₂ ≥ {SPIKE_RATIO:g}, ≥ {SPIKE_SHARE:.0%} of ‖ΔW‖_F²)",
    "ceiling": (
        f"spread evenly to its rank ceiling (effective rank ≥ {CEILING_SHARE:.0%} of the most "
        "rank the update can have: r, LoHa r₁·r₂, LoKr's, min(d) if dense)"
    ),
    "noise": (
        f"under {NOISE_SHARE:.0%} of Σσ above the rounding floor "
        "(entropy and effective rank weigh the floor's values most)"
    ),
    "zero": "ΔW is exactly zero",
}


def row_flags(row: Mapping[str, object], sigma: Sequence[float]) -> str | None:
    """The flags of one row (module docstring), space-separated; None when none.

    ``sigma`` is the row's spectrum, descending (its first two values are
    enough); ``row`` holds its metrics, floors and ``rank_ceiling``.
    """
    if not row["spectral_norm"]:
        return "zero"
    found = []
    sigma_1 = float(sigma[0])
    sigma_2 = float(sigma[1]) if len(sigma) > 1 else 0.0
    ratio = sigma_1 / sigma_2 if sigma_2 > 0 else float("inf")
    spike = ratio >= SPIKE_RATIO and float(row["top_share@1"]) >= SPIKE_SHARE
    share = row.get("share_above_floor")
    noise = share is not None and row.get("noise_floor") is not None and share < NOISE_SHARE
    if spike:
        found.append("spike")
    ceiling = rank_ceiling(row)
    if (
        not spike
        and not noise
        and ceiling >= 2
        and float(row["effective_rank"]) >= CEILING_SHARE * ceiling
    ):
        found.append("ceiling")
    if noise:
        found.append("noise")
    return " ".join(found) or None


def rank_ceiling(row: Mapping[str, object]) -> int:
    """The row's ``rank_ceiling``; for rows made before it was stored, r or min(d_out, d_in)."""
    if row.get("rank_ceiling") is not None:
        return int(row["rank_ceiling"])
    full = min(int(row["d_out"]), int(row["d_in"]))
    rank = row.get("adapter_rank")
    return min(int(rank), full) if row.get("kind") == "factored" and rank else full


def flag_lines(rows: Sequence[Mapping[str, object]], leave_out: Sequence[str] = ()) -> list[str]:
    """One line per flag that some row carries: what it means and which rows (for tables).

    ``leave_out``: flags told elsewhere (``noise``, by the report's one warning).
    """
    lines = []
    for flag, meaning in FLAGS.items():
        if flag in leave_out:
            continue
        keys = [row_key(row) for row in rows if flag in str(row.get("health") or "").split()]
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            lines.append(f"{flag}: {meaning}: {shown}")
    return lines
