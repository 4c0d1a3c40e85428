"""``analyze()``: one checkpoint through the streaming pipeline into a ``Report``.

Load (``spectra.loaders``), plan the selection before any work, stream each
module's ΔW through ``svd.singular_values_stream`` (reading overlaps
computing), and turn each σ into a report row: the ids, the floors its σ can
be trusted down to, and every metric of ``spectra.metrics``. Rows whose ΔW
is not clearly above the checkpoint's rounding floor, exactly zero, or left
out for NaN/Inf are named in the warnings.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..arguments import BASE, SKIP_NONFINITE
from ..defaults import INTRUDER_EPS, INTRUDER_TOP
from ..delta import Factored, LayerDelta
from ..errors import NonFiniteError, warn
from ..io.hub import locate
from ..loaders import Checkpoint, Selection
from ..metrics import compute, rank_tolerance, rounding_floor, share_above
from ..report import Progress, Report, noise_summary, row_flags, spectrum_key
from ..svd import (
    accuracy_floor,
    check_method,
    default_jobs,
    finite_only,
    resolve_device,
    singular_values_stream,
)
from .estimated import Estimates, EstimateSettings, estimate_stream, estimated_row, exact_row
from .heads import HeadCollector
from .sources import load
from .weights import WeightMeasures, check_weight_options, with_base

__all__ = ["analyze", "build_report", "report_row", "rounding_floor_of"]


def analyze(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    device: str = "auto",
    method: str = "fast",
    *,
    format: str = "auto",
    progress: Progress | None = None,
    prefetch: int = 1,
    batch_size: int | None = None,
    jobs: int | None = None,
    skip_nonfinite: bool = False,
    each: Callable[[Checkpoint, LayerDelta, torch.Tensor], None] | None = None,
    checkpoint: Checkpoint | None = None,
    esd: bool = False,
    intruders: bool = False,
    intruder_top: int = INTRUDER_TOP,
    intruder_eps: float = INTRUDER_EPS,
    ray: bool | str | None = None,
    estimate: bool | EstimateSettings = False,
    **options: object,
) -> Report:
    """Rebuild ΔW of each selected module, take its singular values, compute every metric.

    ``path`` and ``base`` are as ``spectra.load`` takes them (a path, a Hub id
    in the local cache, ``hf://org/name[@revision]`` to download); each is
    resolved once, and ``meta["source"]`` records the Hub id, the revision
    asked for and the commit of the snapshot analysed (``hub_id``,
    ``revision``, ``commit``; ``base_hub_id``, ``base_commit`` for the base).
    ``modules`` are roles, written as on the command line or as a list
    (``"k,v"``, ``["k", "v"]``, ``"all"`` for every role the checkpoint has);
    ``None`` means k and v, whichever the checkpoint has. ``layers`` likewise
    (``"0-3,7"``, ``[0, 1, 2, 3, 7]``); ``None`` means every layer.
    ``method`` is ``"fast"`` (Gram eigenvalues) or ``"exact"`` (float64 SVD)
    for dense ΔW; factored ΔW always takes the exact QR core.
    ``progress(done, total, label)`` is called after each module. Reading
    overlaps computing: on the CPU, ``jobs`` modules (default 2, 1 on a
    single thread) are read and decomposed side by side, each on
    ``torch.get_num_threads() // jobs`` threads; with ``jobs=1`` or on a GPU,
    the next module is read on a background thread while one is decomposed
    (``prefetch`` modules ahead, 0 to read in turn), and on a GPU same-shaped
    dense updates are decomposed in batches of ``batch_size`` (default 8).
    None of these changes the results beyond rounding (identical for the
    same thread count). A module whose weights hold NaN or Inf
    raises ``NonFiniteError``, or with ``skip_nonfinite=True`` is left out and
    named in the warnings and in ``meta["skipped"]``. Every tensor of the
    checkpoint that no analysed ΔW uses is in ``meta["not_analysed"]`` as
    ``[tensor, reason]``; every (layer, role) it has that the selection leaves
    out is in ``meta["not_selected"]`` as ``[layer, role]``, named in one line
    by ``meta["not_selected_note"]`` (``Report.not_selected``).
    ``each(checkpoint, delta, σ)``, if given, is called for every module
    while its ΔW is in memory (``compare`` takes the subspace metrics this
    way, in the same read). ``checkpoint`` is ``path`` already
    opened with these ``base`` and ``options`` (a sweep opens each checkpoint
    once, to check it before any work). ``options`` go to ``spectra.load``
    (``adapter``, ``per_head``, ``directional_only``, ``lora_alpha``).
    ``esd=True`` and ``intruders=True`` need the base weights W0 (``base``,
    or a PEFT config's base when it is a local folder or cached) and add
    columns per module (``analysis.weights``): α of the eigenvalue spectrum
    of W0 and of W0 + ΔW as WeightWatcher 0.7.7 fits it (``alpha_base``,
    ``xmin_base``, ``ks_base``, ``alpha_tuned``, ``xmin_tuned``,
    ``ks_tuned``), and the count of intruder dimensions among the top
    ``intruder_top`` left singular vectors of W0 + ΔW (``intruder_dimensions``).
    Each costs two more dense decompositions per module (shared when both
    are asked).

    Args:
        path: the checkpoint: a local path or a Hub id (as ``spectra.load``).
        base: the model it was tuned from: required for a full fine-tune or a
            DoRA adapter, optional otherwise (it adds ``relative_norm``);
            ``None`` (the default): none.
        modules: roles, ``"k,v"``, ``["k", "v"]`` or ``"all"``; ``None`` (the
            default): k and v, whichever the checkpoint has.
        layers: ``"0-3,7"`` or ``[0, 1, 2, 3, 7]``; ``None`` (the default):
            every layer.
        device: ``"auto"`` (the default: CUDA when PyTorch sees a GPU, else
            the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        method: ``"fast"`` (the default: Gram eigenvalues) or ``"exact"``
            (float64 SVD), for dense ΔW.
        format: ``"auto"`` (the default: detect) or a registered format's name.
        progress: ``progress(done, total, label)`` after each module; ``None``
            (the default): no calls.
        prefetch: modules read ahead on a background thread (with ``jobs=1``
            or on a GPU); default 1, 0 to read in turn.
        batch_size: same-shaped dense updates decomposed together on a GPU;
            ``None`` (the default): 8.
        jobs: modules read and decomposed side by side on the CPU; ``None``
            (the default): 2, or 1 on a single thread.
        skip_nonfinite: leave out modules whose weights hold NaN or Inf and
            name them, instead of raising; default False.
        each: ``each(checkpoint, delta, σ)`` for every module while its ΔW is
            in memory; ``None`` (the default): no calls.
        checkpoint: ``path`` already opened with these ``base`` and
            ``options``; ``None`` (the default): opened here.
        esd: also fit α of the eigenvalue spectrum of W0 and of W0 + ΔW;
            default False.
        intruders: also count intruder dimensions; default False.
        intruder_top: intruders are sought among this many top left singular
            vectors of W0 + ΔW; default 10.
        intruder_eps: a vector is an intruder when its largest ``|cos|`` with
            W0's left singular vectors is below this; default 0.5.
        ray: run each module as a Ray task (``analysis.distributed``): True
            to start or join Ray as ``ray.init()`` does, or a cluster address
            (``"auto"``); ``None`` (the default): here. The report equals a
            local run's, with ``meta["executor"]`` saying where it ran.
        estimate: estimate the metrics of each dense ΔW with stated errors
            instead of decomposing it (``analysis.estimated``: columns
            ``estimated`` and ``<metric>_err``, ``meta["estimate"]``; the
            spectrum stored is the top-k σ); factored ΔW stay exact. ``True``
            for the default probes, steps and top, or an ``EstimateSettings``;
            default False. One module at a time on ``device``, on all its threads
            (with ``ray``: each task on as many threads as this process has).
        **options: the format's loader options (``spectra.formats()``).

    Returns:
        A ``Report``: one row per (layer, role[, expert][, head]) with every
        metric, the σ of each ΔW (``spectrum``), and ``meta`` (the source,
        scales, device, method, versions, warnings, ``not_analysed``,
        ``not_selected``); with ``per_head=True`` on a multi-head source, its
        head diversity in ``heads`` and ``head_shares`` (``analysis.heads``).

    Raises:
        FormatError: the path or an option is not readable as a checkpoint.
        MissingBaseError: ΔW needs ``base`` and none was given, or ``esd`` or
            ``intruders`` was asked without a base.
        BaseMismatchError: ``base`` does not match the checkpoint.
        SelectionError: a module or layer asked for is not in the checkpoint.
        NonFiniteError: a module's weights hold NaN or Inf (without
            ``skip_nonfinite``).
        DeviceError: the device asked for is not available.
        SpectraError: an unknown ``method`` (every error above is one).

    Example::

        report = spectra.analyze("adapter/", modules="all", layers="0-3")
        df = report.to_pandas()  # one row per layer × module
        sigma = report.spectrum(0, "v")  # descending, float64
        report.save("adapter-report/")
        full = spectra.analyze("full-finetune/", base="base-model/", method="exact")
        alphas = spectra.analyze("adapter/", base="base-model/", esd=True, intruders=True)
    """
    source = locate(path, "CKPT")  # each Hub id once: the snapshot recorded is the one read
    base_source = locate(base, BASE) if base is not None else None
    check_weight_options(esd, intruders, intruder_top, intruder_eps, options)
    if checkpoint is None:
        checkpoint = load(source, base=base_source, format=format, **options)
    base_note = None
    if esd or intruders:  # W0 is needed: the config's base, when none was given
        checkpoint, base_note = with_base(
            checkpoint, esd, intruders, lambda found: load(source, found, format, **options)
        )
    selection = checkpoint.plan(modules, layers)
    target = resolve_device(device)
    check_method(method)
    measures = None
    if esd or intruders:  # on the CPU, beside the stream's workers, on their share of threads
        workers = (jobs or default_jobs(target)) if target.type == "cpu" else None
        threads = max(1, torch.get_num_threads() // workers) if workers else None
        measures = WeightMeasures(
            esd, intruders, target, method, intruder_top, intruder_eps, threads
        )
        measures.notes.extend([base_note] if base_note else [])
    total = len(selection.keys)  # progress counts modules; a module may have several heads
    done: set[tuple[int, str]] = set()
    skipped: list[str] = []
    deltas = checkpoint.deltas_for(selection)
    if skip_nonfinite:
        deltas = finite_only(deltas, skipped)
    estimates = Estimates.asked(estimate)  # None, or filled as the stream runs
    if estimates is not None:  # dense ΔW estimated, factored exact (analysis.estimated)
        stream = estimate_stream(deltas, target, method, estimates, prefetch=prefetch)
    else:
        stream = singular_values_stream(
            deltas, target, method, prefetch=prefetch, batch_size=batch_size, jobs=jobs
        )
    executor = None
    if ray is not None and ray is not False:  # each module a Ray task; the report is built here
        from .distributed import Opened, check_ray_options, spectra_on_ray

        check_ray_options(esd, intruders, each, options)
        local = (device, method, skip_nonfinite, jobs)  # how a local run would take σ
        opened = Opened(source, base_source, checkpoint.format, dict(options))
        stream, executor = spectra_on_ray(
            opened, checkpoint, selection, local, ray, progress, skipped, estimates
        )

    heads = HeadCollector()  # per-head ΔW of a multi-head source: head diversity (heads.py)

    def after(delta: LayerDelta, sigma: torch.Tensor, key: str) -> None:
        heads(checkpoint, delta)
        if measures is not None:  # what needs W0, while this module's ΔW is in memory
            measures(checkpoint, delta)
        done.add((delta.layer, delta.role))
        if progress is not None and executor is None:  # Ray's tasks told progress as they ran
            progress(len(done) + len(skipped), total, key)
        if each is not None:  # more from the same ΔW, in this one read (subspace metrics)
            each(checkpoint, delta, sigma)

    source_meta = {
        "path": str(source.path.resolve()),
        "hub_id": source.hub_id,
        "revision": source.revision,
        "commit": source.commit,
        "base": str(Path(checkpoint.base).resolve()) if checkpoint.base is not None else None,
        "base_hub_id": base_source.hub_id if base_source is not None else None,
        "base_commit": base_source.commit if base_source is not None else None,
        "format": checkpoint.format,
        "variant": checkpoint.variant,
        "options": {k: v for k, v in options.items() if v not in (None, False)},
    }
    try:
        report = build_report(
            checkpoint, selection, stream, target, method, source_meta, skipped, after, estimates
        )
    except NonFiniteError as exc:  # the module is named; say which checkpoint holds it
        raise NonFiniteError(f"{source.path}: {exc}") from None
    finally:
        if measures is not None:
            measures.close()
    if measures is not None:
        measures.fill(report)
    heads.attach(report)  # Report.heads and head_shares, when heads were analysed
    if executor is not None:
        report.meta["executor"] = executor  # Ray: its address, nodes, CPUs, GPUs
    for warning in report.warnings:  # in Python, also through the warnings module (SpectraWarning)
        warn(f"{source.path}: {warning}")
    return report


def build_report(
    checkpoint: Checkpoint,
    selection: Selection,
    results: Iterable[tuple[LayerDelta, torch.Tensor]],
    device: torch.device,
    method: str,
    source: dict[str, object],
    skipped: Sequence[str] = (),
    after: Callable[[LayerDelta, torch.Tensor, str], None] | None = None,
    estimates: Estimates | None = None,
) -> Report:
    """The ``Report`` of ``checkpoint``'s ``selection`` from its ``(delta, σ)`` ``results``.

    The one report builder: ``analyze`` and the live monitor
    (``spectra.integrations``) both make their reports here, so that their
    rows (``report_row``) and metadata have the same keys. ``results`` is
    consumed in order; ``after(delta, σ, key)``, if given, is called for each
    while its ΔW is in memory. ``device`` and ``method`` are those σ was taken
    on and with; ``source`` is ``meta["source"]`` (where the checkpoint came
    from: files, or a model in memory); ``skipped`` names the modules left
    out for NaN/Inf weights, read once ``results`` is consumed. ``estimates``
    (filled by ``estimate_stream`` as ``results`` is consumed) makes the
    rows of the keys it holds estimated, the others exact (``analysis.estimated``).
    """
    warnings = [*checkpoint.warnings(), *selection.warnings]
    rows: list[dict[str, object]] = []
    spectra: dict[str, np.ndarray] = {}
    scales: dict[str, dict[str, object]] = {}
    for delta, sigma in results:  # σ: (k,) float64, descending
        info = checkpoint.module_info((delta.layer, delta.role))
        row, notes = report_row(delta, sigma, method, info.rank)
        key = spectrum_key(delta.layer, delta.role, delta.head, delta.expert)
        if estimates is not None:  # estimated (dense) or exact, said on every row
            guess = estimates.get(key)
            row = estimated_row(row, guess, delta.base_norm) if guess else exact_row(row)
        rows.append(row)
        spectra[key] = sigma.numpy()
        if info.scale is not None:
            scales[key] = {"scale": info.scale, "source": info.scale_source}
        warnings.extend(notes)
        if after is not None:
            after(delta, sigma, key)
        del delta, sigma  # free this module's ΔW before the next ones are read and decomposed
    noise = noise_summary(rows)  # one line for every row at its rounding floor
    if noise is not None:
        warnings.append(noise)
    if skipped:
        warnings.append(
            f"{len(skipped)} modules skipped for NaN/Inf weights ({SKIP_NONFINITE}): "
            f"{', '.join(skipped)}; this report is not the whole selection"
        )
    meta = {
        "spectra_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "modules": list(dict.fromkeys(role for _, role in selection.keys)),
        "layers": sorted({layer for layer, _ in selection.keys}),
        "device": str(device),
        "method": method,
        "dtype": "float64",
        "scales": scales,
        "rank_tolerance": (
            "max(accuracy_floor, noise_floor): accuracy_floor = σ_1·max(d)·ε64 for factored "
            "and exact, σ_1·√(max(d)·ε64) for fast; noise_floor = ε(source dtype)·rms(W)·"
            "(√d_out+√d_in), only for dense ΔW subtracted from stored weights"
        ),
        "versions": _versions(),
        "warnings": warnings,
        "skipped": list(skipped),
        # every tensor no analysed ΔW uses, with why (loaders/base.py): [[tensor, reason], …]
        "not_analysed": [[name, reason] for name, reason in checkpoint.not_analysed()],
        # what the checkpoint's files say about its training (loaders/storage/metadata.py)
        "training": checkpoint.training(),
        # (layer, role) pairs the checkpoint has that the selection left out (loaders/base.py)
        "not_selected": [[layer, role] for layer, role in selection.not_selected],
        "not_selected_note": selection.not_selected_note,
    }
    if estimates is not None:
        meta["estimate"] = estimates.meta()
    return Report(rows=rows, spectra=spectra, meta=meta)


def rounding_floor_of(delta: LayerDelta) -> float | None:
    """The rounding-noise floor of a dense ΔW subtracted from known weights, else None.

    A factored ΔW is exactly low rank whatever its factors' dtype, and a dense
    one rebuilt from adapter factors (DoRA, LoHa, LoKr) is exact in float64:
    neither carries rounding noise (their ``weight_rms`` is None).
    """
    if isinstance(delta.update, Factored) or delta.weight_rms is None:
        return None
    return rounding_floor(delta.shape, delta.source_dtype, delta.weight_rms)


def report_row(
    delta: LayerDelta, sigma: torch.Tensor, method: str = "fast", rank: int | None = None
) -> tuple[dict[str, object], list[str]]:
    """One report row of a ΔW and its σ, and the row's warnings (ΔW exactly zero).

    What ``analyze`` does for each module, public so that reports made
    elsewhere (``spectra.integrations``: a live model during training) get
    the same rows. ``method`` is the SVD method σ was taken with; ``rank``
    is the adapter's r for a dense adapter update (DoRA, LoHa, LoKr). Rows
    at their rounding floor are told once per report, by the caller
    (``report.noise_summary`` of all rows).
    """
    row = _row(delta, sigma, method, rank)
    key = spectrum_key(delta.layer, delta.role, delta.head, delta.expert)
    notes = []
    if row["spectral_norm"] == 0:
        notes.append(f"{key}: ΔW is exactly zero; every metric is 0 for it")
    return row, notes


def _row(
    delta: LayerDelta, sigma: torch.Tensor, method: str, rank: int | None
) -> dict[str, object]:
    """One report row; ``rank`` is the adapter's r for a dense adapter update (DoRA, LoHa, LoKr)."""
    factored = isinstance(delta.update, Factored)
    kind = "factored" if factored else "dense"
    relative = accuracy_floor(delta.shape, kind, method)  # the SVD path's floor, over σ_1
    noise = rounding_floor_of(delta)
    # METRICS.md's numerical-rank tolerance: the larger of the two floors (one definition)
    tol = rank_tolerance(sigma, delta.shape, relative_floor=relative, rounding=noise)
    sigma_1 = float(sigma.max()) if sigma.numel() else 0.0
    row: dict[str, object] = {
        "layer": delta.layer,
        "role": delta.role,
        "expert": delta.expert,
        "head": delta.head,
        "name": delta.name,
        "d_out": delta.shape[0],
        "d_in": delta.shape[1],
        "kind": kind,
        "dtype": str(delta.source_dtype).removeprefix("torch."),
        "scale": float(delta.update.scale) if factored else None,
        "adapter_rank": delta.update.rank if factored else rank,
        "rank_ceiling": delta.update.rank_ceiling,  # r, LoHa r₁·r₂, LoKr's, else min(d)
        "accuracy_floor": sigma_1 * relative,
        "noise_floor": noise,
        "share_above_floor": share_above(sigma, tol),
    }
    row.update(compute(sigma, delta.shape, tol=tol, base_norm=delta.base_norm))
    row["health"] = row_flags(row, sigma[:2].tolist())  # spike, ceiling, noise, zero (flags.py)
    return row


def _versions() -> dict[str, str]:
    import safetensors

    return {
        "spectra": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }
