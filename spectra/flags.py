"""Health flags: plain words for the rows whose spectrum says something is off.

Each flag is a judgement of one report row, made from its σ and its floors,
with a threshold and the reason for it. ``analyze`` stores them in the
``flags`` column (words separated by spaces, None when none) and prints one
line per flag under its table.

``spike`` — one direction dominates: σ₁/σ₂ ≥ ``SPIKE_RATIO`` (10) **and**
    the top direction holds ≥ ``SPIKE_SHARE`` (90 %) of ‖ΔW‖_F². Both,
    because a rank-1 update in all but name is what breaks LoRA stacking and
    merging (one direction amplified far past the others: ai-toolkit #964),
    while a steep but spread spectrum (LoRA's usual σ₁ ≫ σ₈) is not a spike.
    At σ₁/σ₂ = 10 the second direction carries 1 % of σ₁²; the share test
    keeps a long flat tail of many small directions from hiding behind it.

``ceiling`` — the update fills the adapter's rank: effective rank ≥
    ``CEILING_SHARE`` (90 %) of the adapter rank r. exp(entropy) reaches r
    only for a flat spectrum over all r directions, so at 90 % nearly every
    direction the adapter has is in use with similar weight: a larger r may
    have been wanted. Only for adapters (rows with ``adapter_rank``).

``noise`` — ΔW is not clearly above its rounding floor: less than
    ``report.NOISE_SHARE`` (half) of Σσ lies above the rank tolerance, so the
    balance metrics measure the checkpoint dtype's rounding, not the update
    (``report.noise_warning`` says it in words).

``zero`` — ΔW is exactly zero (every metric is 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .report import NOISE_SHARE, spectrum_key

__all__ = ["CEILING_SHARE", "FLAGS", "SPIKE_RATIO", "SPIKE_SHARE", "flag_lines", "row_flags"]

SPIKE_RATIO = 10.0
SPIKE_SHARE = 0.9
CEILING_SHARE = 0.9
FLAGS = {
    "spike": f"one direction dominates (σ₁/σ₂ ≥ {SPIKE_RATIO:g}, ≥ {SPIKE_SHARE:.0%} of ‖ΔW‖_F²)",
    "ceiling": f"effective rank ≥ {CEILING_SHARE:.0%} of the adapter rank r (a larger r wanted?)",
    "noise": f"under {NOISE_SHARE:.0%} of Σσ above the rounding floor (metrics measure rounding)",
    "zero": "ΔW is exactly zero",
}


def row_flags(row: Mapping[str, object], sigma: Sequence[float]) -> str | None:
    """The flags of one row (module docstring), space-separated; None when none.

    ``sigma`` is the row's spectrum, descending; ``row`` holds its metrics.
    """
    if not row["spectral_norm"]:
        return "zero"
    found = []
    sigma_1 = float(sigma[0])
    sigma_2 = float(sigma[1]) if len(sigma) > 1 else 0.0
    ratio = sigma_1 / sigma_2 if sigma_2 > 0 else float("inf")
    if ratio >= SPIKE_RATIO and float(row["top_share@1"]) >= SPIKE_SHARE:
        found.append("spike")
    rank = row.get("adapter_rank")
    if rank and float(row["effective_rank"]) >= CEILING_SHARE * int(rank):
        found.append("ceiling")
    share = row.get("share_above_floor")
    if share is not None and row.get("noise_floor") is not None and share < NOISE_SHARE:
        found.append("noise")
    return " ".join(found) or None


def flag_lines(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """One line per flag that some row carries: what it means and which rows (for tables)."""
    lines = []
    for flag, meaning in FLAGS.items():
        keys = [_key(row) for row in rows if flag in str(row.get("flags") or "").split()]
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            lines.append(f"{flag}: {meaning}: {shown}")
    return lines


def _key(row: Mapping[str, object]) -> str:
    return spectrum_key(row["layer"], row["module"], row.get("head"), row.get("expert"))
