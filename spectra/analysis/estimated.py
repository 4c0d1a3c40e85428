"""``analyze(..., estimate=True)``: rows of dense ΔW from ``metrics.estimate``, with errors.

A dense ΔW is not decomposed: ``estimate_metrics`` gives the metrics of
``ESTIMATED`` with an error each (one standard error, a bound, or exact: its
docstring), on the run's device. A factored ΔW keeps the exact QR-core path,
which is already cheap. The rows of an estimated report carry
``estimated`` (True for an estimated row) and ``<metric>_err`` for every
estimated metric (0 on exact rows); the metrics the estimate does not give
are missing (None), never computed from the top σ. The spectrum stored for
an estimated row is its top-k σ (Ritz values, each at most the true σ_i).
``meta["estimate"]`` says what each error column holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..arguments import ESTIMATE
from ..defaults import SUMMARY_METRICS
from ..delta import Dense, LayerDelta
from ..errors import SpectraError
from ..io.workers import read_ahead
from ..metrics import METRICS
from ..metrics.estimate import (
    DEFAULT_PROBES,
    DEFAULT_STEPS,
    DEFAULT_TOP,
    ESTIMATED,
    Estimate,
    estimate_metrics,
)
from ..report import row_flags, spectrum_key
from ..svd import check_finite, singular_values

__all__ = [
    "ESTIMATE_NOTE",
    "EstimateSettings",
    "Estimates",
    "error_column",
    "estimate_columns",
    "estimate_stream",
    "estimated_row",
    "exact_row",
    "summary_means",
]

ESTIMATE_NOTE = (
    "estimated rows (estimated = True): metrics of dense ΔW estimated with the error in "
    "<metric>_err (the estimate's errors in report.json say which kind); '–' marks metrics not "
    "estimated"
)


def error_column(metric: str) -> str:
    """The column holding ``metric``'s error in an estimated report: ``<metric>_err``.

    Args:
        metric: a metric of ``ESTIMATED``.

    Returns:
        Its error column's name.

    Example:
        >>> error_column("effective_rank")
        'effective_rank_err'
    """
    return f"{metric}_err"


@dataclass(frozen=True)
class EstimateSettings:
    """How dense ΔW are estimated: the arguments of ``estimate_metrics``.

    Args:
        probes: probe vectors of the quadrature (≥ 2: the error needs two).
        steps: the Gauss rule's nodes per probe (≥ 1; one Lanczos step more is taken).
        top: the top singular values found and stored as the row's spectrum (≥ 1).
        seed: the seed of the probes and the Krylov block.

    Example:
        >>> EstimateSettings().probes, EstimateSettings(probes=8).check().probes
        (16, 8)
    """

    probes: int = DEFAULT_PROBES
    steps: int = DEFAULT_STEPS
    top: int = DEFAULT_TOP
    seed: int = 0

    def check(self) -> EstimateSettings:
        """These settings, or ``SpectraError`` naming the one out of range."""
        for name, least in (("probes", 2), ("steps", 1), ("top", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise SpectraError(
                    f"{ESTIMATE}: {name} must be an integer >= {least}; got {value!r}"
                )
        return self


class Estimates(dict):
    """The ``Estimate`` of each estimated row by spectrum key, and the run's ``settings``.

    Args:
        settings: the estimate's probes, steps, top and seed.

    Example:
        >>> Estimates.asked(True).settings.probes, Estimates.asked(False)
        (16, None)
    """

    def __init__(self, settings: EstimateSettings) -> None:
        super().__init__()
        self.settings = settings.check()

    @classmethod
    def asked(cls, estimate: bool | EstimateSettings | None) -> Estimates | None:
        """An empty ``Estimates`` for ``analyze``'s ``estimate`` (True: defaults), else None."""
        if estimate is False or estimate is None:
            return None
        return cls(estimate if isinstance(estimate, EstimateSettings) else EstimateSettings())

    def meta(self) -> dict[str, object]:
        """``meta["estimate"]``: the settings, what each error column holds, which rows."""
        return estimate_meta(self.settings, self)


def estimate_stream(
    deltas: Iterable[LayerDelta],
    device: torch.device,
    method: str,
    estimates: Estimates,
    *,
    prefetch: int = 1,
) -> Iterator[tuple[LayerDelta, torch.Tensor]]:
    """Yield ``(delta, σ)`` in order: a dense ΔW estimated, a factored one exact.

    One module at a time, the next read on a background thread (``prefetch``
    ahead, 0 to read in turn); the products run on ``device`` on all of its
    threads. For a dense ΔW, σ is the top ``settings.top`` Ritz values and
    its ``Estimate`` is put in ``estimates`` under the delta's spectrum key
    before it is yielded; a factored ΔW gets all its σ (``method`` is unused
    for it).

    Args:
        deltas: the modules, as ``Checkpoint.deltas_for`` gives them.
        device: where the products run.
        method: the SVD method of any dense ΔW not estimated (none today).
        estimates: filled with each estimated delta's ``Estimate``, by key;
            its ``settings`` are the estimate's probes, steps, top and seed.
        prefetch: modules read ahead.

    Returns:
        An iterator of ``(delta, σ)``, σ a float64 CPU tensor, descending.

    Example::

        estimates = Estimates(EstimateSettings(probes=32))
        for delta, sigma in estimate_stream(deltas, torch.device("cpu"), "fast", estimates):
            ...
    """
    settings = estimates.settings
    source = read_ahead(deltas, prefetch) if prefetch > 0 else iter(deltas)
    for delta in source:
        if not isinstance(delta.update, Dense):
            yield delta, singular_values(delta, device, method)
            continue
        check_finite(delta)
        estimate = estimate_metrics(
            delta.update.matrix,
            probes=settings.probes,
            steps=settings.steps,
            top=settings.top,
            seed=settings.seed,
            device=device,
        )
        estimates[spectrum_key(delta.layer, delta.role, delta.head, delta.expert)] = estimate
        yield delta, estimate.top.cpu()


def estimated_row(
    row: Mapping[str, object], estimate: Estimate, base_norm: float | None = None
) -> dict[str, object]:
    """The row of a dense ΔW with its metrics from ``estimate`` and their errors.

    ``row`` is the ordinary row built from the top σ: its ids stay, every
    metric is replaced by the estimate's or left missing (None), the floors
    that need all σ (``accuracy_floor``, ``share_above_floor``) are missing,
    and ``relative_norm`` is ‖ΔW‖_F (exact) over ‖W0‖_F.

    Args:
        row: the row ``report_row`` made from the estimate's top σ.
        estimate: the estimate of this ΔW.
        base_norm: ‖W0‖_F (``LayerDelta.base_norm``), None without a base.

    Returns:
        The row with ``estimated = True`` and a ``<metric>_err`` per estimated metric.

    Example::

        row = estimated_row(report_row(delta, estimate.top)[0], estimate, delta.base_norm)
    """
    updated: dict[str, object] = dict(row)
    frobenius = estimate.values["frobenius_norm"]
    zero = frobenius == 0  # ΔW = 0: every metric is 0, exactly (METRICS.md), as on exact rows
    for name in METRICS:
        value = estimate.values.get(name)
        updated[name] = 0.0 if zero and value is not None else value
    updated["relative_norm"] = frobenius / base_norm if base_norm else None
    updated["accuracy_floor"] = None
    updated["share_above_floor"] = None
    updated["estimated"] = True
    for name in ESTIMATED:  # a metric the estimate left missing (top_share@8 of top < 8): None
        error = estimate.errors.get(name)
        updated[error_column(name)] = 0.0 if zero and error is not None else error
    # health from what is known: σ_1, σ_2 (Ritz values) and top_share@1 = σ_1²/‖ΔW‖_F²
    updated["health"] = row_flags(updated, estimate.top[:2].tolist())
    return updated


def exact_row(row: Mapping[str, object]) -> dict[str, object]:
    """A row computed from all its σ, in an estimated report: ``estimated = False``, errors 0.

    Args:
        row: the ordinary row.

    Returns:
        The row with ``estimated = False`` and every ``<metric>_err`` 0.0.

    Example:
        >>> exact_row({"effective_rank": 2.0})["effective_rank_err"]
        0.0
    """
    return {**row, "estimated": False, **{error_column(name): 0.0 for name in ESTIMATED}}


def estimate_meta(settings: EstimateSettings, estimates: Mapping[str, Estimate]) -> dict:
    """``meta["estimate"]``: the settings, what each error column holds, which rows.

    Args:
        settings: the estimate's probes, steps, top and seed.
        estimates: the estimate of each estimated row, by key.

    Returns:
        A JSON-ready dict.

    Example:
        >>> estimate_meta(EstimateSettings(), {})["errors"]["effective_rank_err"][:12]
        'one standard'
    """
    from ..metrics.estimate import ERROR_KINDS

    kinds = {}
    for name in ESTIMATED:  # the kind of each metric's error; exact where the top σ sufficed
        seen = {e.error_kinds[name] for e in estimates.values() if name in e.error_kinds}
        kinds[error_column(name)] = " / ".join(sorted(seen or {ERROR_KINDS[name]}))
    return {
        "probes": settings.probes,
        "steps": settings.steps,
        "top": settings.top,
        "seed": settings.seed,
        "rows": sorted(estimates),
        "errors": kinds,
        "spectrum": (
            f"the stored spectrum of an estimated row is its top {settings.top} σ (randomized "
            "block Krylov Ritz values, each at most the true σ_i), not all of them"
        ),
        "missing": [name for name in METRICS if name not in ESTIMATED and name != "relative_norm"]
        + [f"top_share@{m}" for m in (1, 8) if m > settings.top],  # needs m top σ
        "note": ESTIMATE_NOTE,
    }


def estimate_columns(reports: Sequence) -> list[str]:
    """The summary columns a comparison adds when a report is estimated.

    ``estimated_rows`` (how many of the rows averaged were estimated) and
    ``<metric>_err`` of each summary metric the estimate gives.

    Args:
        reports: the comparison's reports.

    Returns:
        The column names; none when no report is estimated.

    Example:
        >>> estimate_columns([])
        []
    """
    if not any("estimate" in report.meta for report in reports):
        return []
    return ["estimated_rows", *(error_column(m) for m in SUMMARY_METRICS if m in ESTIMATED)]


def summary_means(rows: Sequence[Mapping], reports: Sequence) -> dict[str, object]:
    """A comparison summary row's means over ``rows`` of the summary metrics, with their errors.

    A metric missing from any row (one the estimate does not give) has no
    mean (None). When a report is estimated (``estimate_columns``), the row
    also holds ``estimated_rows`` and ``<metric>_err``, the mean of the
    rows' errors (0 for an exact row): for a standard error, the mean's
    standard error is at most this whatever the rows' correlation; for a
    bound, it bounds the mean.

    Args:
        rows: one role's rows of one report.
        reports: every report of the comparison (which columns it has).

    Returns:
        Column → value.

    Example:
        >>> summary_means([{"effective_rank": 2.0}, {"effective_rank": 4.0}], [])["effective_rank"]
        3.0
    """
    means: dict[str, object] = {}
    for metric in SUMMARY_METRICS:
        values = [row.get(metric) for row in rows]
        missing = None in values or not values
        means[metric] = None if missing else sum(float(v) for v in values) / len(values)
    if estimate_columns(reports):
        means["estimated_rows"] = sum(bool(row.get("estimated")) for row in rows)
        for metric in (m for m in SUMMARY_METRICS if m in ESTIMATED):
            # an exact row's error is 0; an estimated row without the column (a report saved
            # before spectra estimated the metric) has none, and then neither has the mean
            column = error_column(metric)
            errors = [row.get(column) if row.get("estimated") else 0.0 for row in rows]
            missing = means[metric] is None or None in errors or not errors
            means[error_column(metric)] = None if missing else sum(errors) / len(errors)
    return means
