"""The ``spectra`` command group: analyze, inspect, compare, sweep, plot, convert, demo.

Each command parses its options, calls the public ``spectra`` API, and
prints. A ``SpectraError`` becomes one red line on stderr and exit status 1;
click's usage errors exit with 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

import spectra
from spectra import plot as plot_module
from spectra.atomic import check_replaceable
from spectra.analysis.comparison import SUMMARY_METRICS, check_comparison_target
from spectra.errors import ReportExistsError, SpectraError
from spectra.examples.demo import DEMO_LORA_ALPHA, write_demo_checkpoints
from spectra.loaders import write_multilora
from spectra.memory import release_large_blocks
from spectra.plot import NORMALIZATIONS
from spectra.report import check_target, noise_warning, version_warning
from spectra.subspace import INTRUDER_EPS, INTRUDER_TOP, SUBSPACE_RANK
from spectra.analysis.sweeps import SWEEP_METRICS, check_sweep_target, run_sweep

from .options import LAYERS, MODULES, TOP
from .table import format_value, render

TABLE_COLUMNS = (
    ("layer", "layer"),
    ("module", "module"),
    ("shape", "shape"),
    ("numerical_rank", "rank"),
    ("entropy", "entropy"),
    ("effective_rank", "eff. rank"),
    ("stable_rank", "stable rank"),
    ("energy_rank@0.9", "energy rank@0.9"),
)


class SpectraGroup(click.Group):
    """A click group that turns library errors into one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpectraError as exc:
            message = " ".join(str(exc).split())
            click.secho(f"error: {message}", fg="red", err=True)
            ctx.exit(1)
        except OSError as exc:  # unreadable files, full disks: still one line, not a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"error: {where}{exc.strerror or exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted: no report was written", fg="red", err=True)
            ctx.exit(130)


class _ProgressBar:
    """A progress bar over modules on stderr, shown only on a terminal and without --quiet."""

    def __init__(self, quiet: bool, label: str = "analysing", unit: str = "modules"):
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.unit = unit
        self._bar = None
        self._start = time.perf_counter()

    def __call__(self, done: int, total: int, key: str) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(
                length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True
            )
            self._bar.__enter__()
        rate = done / max(time.perf_counter() - self._start, 1e-9)
        self._bar.label = f"{self.label} {key} ({rate:.1f} {self.unit}/s)"
        self._bar.update(done - self._bar.pos)  # heads of one module share a step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def _warn(messages) -> None:
    for message in messages:
        click.secho(f"warning: {message}", fg="yellow", err=True)


def _metrics_table(report: spectra.Report) -> str:
    """The analyze table; rows at the rounding-noise floor are marked in a last column."""
    noisy = [noise_warning(row) is not None for row in report.rows]
    rows = []
    for row, noise in zip(report.rows, noisy, strict=True):
        values = dict(row, shape=f"{row['d_out']}x{row['d_in']}")
        if row.get("head") is not None:
            values["module"] = f"{row['module']}.h{row['head']}"
        rows.append(
            [values[key] for key, _ in TABLE_COLUMNS]
            + (["noise" if noise else ""] if any(noisy) else [])
        )
    header = [title for _, title in TABLE_COLUMNS] + (["floor"] if any(noisy) else [])
    table = render(header, rows)
    if any(noisy):
        table += (
            f"\nnoise: {sum(noisy)} of {len(noisy)} modules are not clearly above their rounding "
            "floor; their entropy and effective rank measure rounding, not the update"
        )
    return table


def _with_progress(quiet: bool, call, *args, **kwargs):
    """Run ``spectra.analyze`` or ``spectra.compare`` with a progress bar over modules."""
    bar = _ProgressBar(quiet, "analysing")
    try:
        return call(*args, progress=bar, **kwargs)
    finally:
        bar.close()


@click.group(cls=SpectraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(spectra.__version__, prog_name="spectra")
def cli() -> None:
    """spectra: what did fine-tuning do to each layer?

    Rebuilds the weight update ΔW of each layer from a full fine-tune, a PEFT
    adapter (LoRA, rsLoRA, DoRA, AdaLoRA, LoHa, LoKr, VeRA, multi-head LoRA)
    or a MultiLoRA checkpoint, takes its singular values, and measures how
    balanced they are (entropy, effective rank, stable rank, energy rank, …).
    """
    release_large_blocks()  # peak memory that does not grow with the model (spectra.memory)


_path = click.Path(path_type=Path)
# checkpoints stay strings: pathlib would make hf://org/name into hf:/org/name
_source = click.Path(path_type=str)
HUB_HELP = (
    "Hub ids: a checkpoint or --base that is not a local path may name a Hugging Face Hub "
    "model. org/name[@revision] is looked up in the local Hugging Face cache only "
    "(HF_HUB_CACHE, HF_HOME) and never downloaded, so a mistyped folder is an error, not a "
    "request. hf://org/name[@revision] downloads it (weights and configs only; needs "
    "pip install 'spectra[hub]'), or reads only the cache when HF_HUB_OFFLINE=1."
)


def _with_options(command, options):
    """Apply click options so that they show in ``--help`` in the order listed."""
    for option in reversed(options):
        command = option(command)
    return command


def loader_options(command):
    """Options that say how to read a checkpoint, shared by analyze, inspect, sweep, convert."""
    options = [
        click.option(
            "--adapter",
            help="A PEFT adapter by name: saved in a sub-folder, or one of several in one file.",
        ),
        click.option(
            "--per-head",
            is_flag=True,
            help="Multi-head LoRA and MultiLoRA: one row per head instead of the whole ΔW.",
        ),
        click.option(
            "--directional-only",
            is_flag=True,
            help="DoRA without a base: analyse the directional part s·B@A alone.",
        ),
        click.option(
            "--lora-alpha",
            type=float,
            help="MultiLoRA: α, which its checkpoints do not save (norms scale by α/r).",
        ),
    ]
    return _with_options(command, options)


def analysis_options(command):
    """What to analyse and how, shared by analyze, compare and sweep."""
    options = [
        click.option(
            "--modules",
            type=MODULES,
            default=None,
            help="Roles to analyse, e.g. k,v or q,k,v,o,up,down,gate or all [default: k,v].",
        ),
        click.option(
            "--layers", type=LAYERS, default=None, help="Layers, e.g. 0-3,7 [default: all]."
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="Where to take singular values; auto uses CUDA when present.",
        ),
        click.option(
            "--exact",
            is_flag=True,
            help="Dense ΔW: float64 SVD instead of the faster Gram eigenvalues "
            "(fast is accurate to about 1e-6 relative for σ ≥ 1e-5·σ_1).",
        ),
        click.option(
            "--jobs",
            "-j",
            type=click.IntRange(min=1),
            default=None,
            help="CPU: modules decomposed side by side, each on cores/N threads; each holds "
            "about 3 float64 copies of its ΔW (400 MB at 4096²). [default: 2, or 1 on one "
            "core; a GPU batches modules instead]",
        ),
    ]
    return _with_options(command, options)


def _load_options(adapter, per_head, directional_only, lora_alpha) -> dict:
    return {
        "adapter": adapter,
        "per_head": per_head,
        "directional_only": directional_only,
        "lora_alpha": lora_alpha,
    }


@cli.command(short_help="Analyse the ΔW of each layer of a checkpoint.", epilog=HUB_HELP)
@click.argument("ckpt", type=_source)
@click.option(
    "--base",
    type=_source,
    help="Base model folder or Hub id: needed for full fine-tunes and DoRA; optional "
    "otherwise (adds relative_norm).",
)
@analysis_options
@click.option("--out", type=_path, help="Write the report folder here.")
@click.option("--force", is_flag=True, help="Replace an existing report at --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or status lines.")
@click.option("--json", "as_json", is_flag=True, help="Print rows and metadata as JSON.")
@click.option(
    "--skip-nonfinite",
    is_flag=True,
    help="Leave out modules whose weights hold NaN or Inf (named in the warnings) "
    "instead of refusing the checkpoint.",
)
@loader_options
def analyze(
    ckpt,
    base,
    modules,
    layers,
    device,
    exact,
    jobs,
    out,
    force,
    quiet,
    as_json,
    skip_nonfinite,
    **options,
):
    """Analyse the ΔW of each layer of CKPT: a PEFT adapter folder, a MultiLoRA
    checkpoint, or a fine-tuned model folder (with --base).

    CKPT and --base may also be Hub ids: org/name[@revision] from the local
    Hugging Face cache, hf://org/name[@revision] to download (below)."""
    if out is not None:
        check_target(out, force)  # fail before the work, not after it
    report = _with_progress(
        quiet,
        spectra.analyze,
        ckpt,
        base=base,
        modules=modules,
        layers=layers,
        device=device,
        method="exact" if exact else "fast",
        jobs=jobs,
        skip_nonfinite=skip_nonfinite,
        **_load_options(**options),
    )
    if as_json:
        click.echo(json.dumps({"meta": report.meta, "rows": report.rows}, indent=2, default=str))
    else:
        source = report.meta["source"]
        if not quiet:
            click.echo(
                f"{source['path']}: {source['variant']} ({source['format']}), "
                f"{len(report)} modules, device {report.meta['device']}, "
                f"method {report.meta['method']}"
            )
        click.echo(_metrics_table(report))
    _warn(report.warnings)
    if out is not None:
        report.save(out, force=force)
        if not quiet:
            click.echo(
                f"report written to {out}/ (metrics.csv, report.json, spectra.safetensors)",
                err=True,
            )


@cli.command(short_help="Show what a checkpoint holds, computing nothing.", epilog=HUB_HELP)
@click.argument("ckpt", type=_source)
@click.option("--base", type=_source, help="Base model folder or Hub id, to check it matches.")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@loader_options
def inspect(ckpt, base, as_json, **options):
    """Show what CKPT holds (format, variant, modules, shapes, dtypes, ranks, scales and
    where each scale came from, heads, the tensors not analysed and why, warnings)
    without computing anything."""
    checkpoint = spectra.load(ckpt, base=base, **_load_options(**options))
    info = checkpoint.describe()
    if base is not None:
        checkpoint.plan(modules=sorted({m.role for m in info.modules}))
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, default=str))
        return
    layers = sorted({m.layer for m in info.modules})
    roles = list(dict.fromkeys(m.role for m in info.modules))
    fields = {
        "path": info.path,
        "format": f"{info.format} ({info.variant})",
        "base": info.base,
        **info.details,
        "modules": f"{len(info.modules)} ({', '.join(roles)}) in {len(layers)} layers",
    }
    width = max(len(key) for key in fields) + 2
    for key, value in fields.items():
        click.echo(f"{key + ':':<{width}}{format_value(value)}")
    click.echo()
    header = [
        "layer",
        "module",
        "shape",
        "dtype",
        "kind",
        "rank",
        "heads",
        "scale",
        "scale from",
        "name",
    ]
    rows = [
        [
            m.layer,
            m.role,
            f"{m.shape[0]}x{'?' if m.shape[1] is None else m.shape[1]}",
            m.dtype,
            m.kind,
            m.rank,
            m.heads,
            m.scale,
            m.scale_source or "-",
            m.name,
        ]
        for m in info.modules
    ]
    click.echo(render(header, rows))
    _print_not_analysed(info)
    _warn(info.warnings)


def _print_not_analysed(info, shown: int = 3) -> None:
    """The tensors no ΔW uses, grouped by reason, a few names each (--json lists all)."""
    groups = info.not_analysed_by_reason()
    if not groups:
        return
    click.echo(f"\nnot analysed ({len(info.not_analysed)} tensors):")
    for reason, names in groups.items():
        more = f" … (+{len(names) - shown} more, --json lists all)" if len(names) > shown else ""
        click.echo(f"  {reason} [{len(names)}]: {', '.join(names[:shown])}{more}")


@cli.command(short_help="Convert a MultiLoRA .pt checkpoint to spectra's layout.", epilog=HUB_HELP)
@click.argument("src", type=_source)
@click.argument("dst", type=_path)
@click.option("--lora-alpha", type=float, help="α to record (the reference layout saves none).")
@click.option("--force", is_flag=True, help="Replace a MultiLoRA folder already at DST.")
def convert(src, dst, lora_alpha, force):
    """Convert a MultiLoRA checkpoint SRC (reference .pt layout) to spectra's folder DST.

    DST holds adapter_config.json (peft_type SPECTRA_MULTILORA, r, num_heads,
    lora_alpha) and adapter_model.safetensors with the stacked lora_A (n, r, d_in),
    lora_B (n, d_out, r) and lora_scaling (n, d_out) of each module.
    """
    checkpoint = spectra.load(src, format="multilora", lora_alpha=lora_alpha)
    out = write_multilora(checkpoint, dst, force=force)
    click.echo(f"{len(checkpoint.stacked)} MultiLoRA modules written to {out}/")
    _warn(checkpoint.warnings())


def _print_summary(comparison) -> None:
    extra = [c for c in ("amplification", "intruder_dimensions") if c in comparison.columns]
    summary = comparison.summary()
    noisy = any(row["noise_rows"] for row in summary)
    rows = [
        [row["method"], row["module"], *(row[m] for m in (*SUMMARY_METRICS, *extra))]
        + ([f"{row['noise_rows']} of {row['rows']}" if row["noise_rows"] else ""] if noisy else [])
        for row in summary
    ]
    titles = [*SUMMARY_TITLES, *(("amplification", "intruders") if extra else ())]
    click.echo(render(["method", "module", *titles, *(["at noise floor"] if noisy else [])], rows))
    if noisy:
        click.echo(
            "at noise floor: modules not clearly above their rounding floor; their means of "
            "entropy and effective rank measure rounding, not the update"
        )
    if comparison.subspace is not None and comparison.subspace.pairs:
        pairs: dict[tuple[str, str, str], list[float]] = {}
        for row in comparison.subspace.pairs:
            key = (row["method_a"], row["method_b"], row["module"])
            pairs.setdefault(key, []).append(row["similarity"])
        click.echo(
            f"\nsubspace similarity of the top-{comparison.subspace.rank} left singular "
            "vectors, mean over layers:"
        )
        click.echo(
            render(
                ["method a", "method b", "module", "similarity"],
                [[a, b, m, sum(v) / len(v)] for (a, b, m), v in pairs.items()],
            )
        )


SUMMARY_TITLES = ("norm. entropy", "eff. rank", "stable rank", "energy rank@0.9", "top-1 share")
_figure_format = click.option(
    "--format",
    "figure_format",
    type=click.Choice(["png", "pdf", "svg"]),
    default="png",
    show_default=True,
    help="Figure file format.",
)
_top_option = click.option(
    "--top",
    type=TOP,
    default=None,
    help="Figure 2: the top K singular values of each matrix over σ₁, or all "
    "[default: the largest adapter rank compared (DoRA, LoHa, LoKr: their r); all when none "
    "is an adapter].",
)


@cli.command(short_help="Compare methods: summary table, reports and figures.", epilog=HUB_HELP)
@click.argument("sources", nargs=-1, required=True, type=_source)
@click.option(
    "--label", "labels", multiple=True, help="One label per source, in order (e.g. FT, LoRA)."
)
@click.option(
    "--base", type=_source, help="Base model folder or Hub id, for the sources that use one."
)
@analysis_options
@click.option(
    "--lora-alpha", type=float, help="α for MultiLoRA sources (their checkpoints save none)."
)
@click.option("--per-head", is_flag=True, help="Multi-head sources: one row per head.")
@click.option(
    "--subspace",
    is_flag=True,
    help="Also compare singular vectors: subspace similarity of each pair of methods per "
    "layer (heat-map), amplification and intruder dimensions (these need --base). Takes "
    "a full SVD per dense module.",
)
@click.option(
    "--subspace-rank",
    type=click.IntRange(min=1),
    default=SUBSPACE_RANK,
    show_default=True,
    help="Top-k singular vectors compared (and r of the amplification).",
)
@click.option(
    "--intruder-top",
    type=click.IntRange(min=1),
    default=INTRUDER_TOP,
    show_default=True,
    help="Intruders are sought among this many top singular vectors of W0+ΔW.",
)
@click.option(
    "--intruder-eps",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=INTRUDER_EPS,
    show_default=True,
    help="A vector is an intruder when its max |cos| with W0's singular vectors is below this.",
)
@click.option(
    "--out", type=_path, required=True, help="Folder for summary.csv, reports and figures."
)
@click.option("--force", is_flag=True, help="Replace an earlier comparison at --out.")
@_top_option
@_figure_format
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def compare(
    sources,
    top,
    labels,
    base,
    modules,
    layers,
    device,
    exact,
    jobs,
    lora_alpha,
    per_head,
    subspace,
    subspace_rank,
    intruder_top,
    intruder_eps,
    out,
    force,
    figure_format,
    quiet,
):
    """Compare methods: analyse each SOURCE (checkpoint or saved report folder), print a
    summary per method and module (mean over layers), and write summary.csv, the
    reports and the figures to --out: figure2 (each matrix's top K singular values over
    σ₁, K the largest adapter rank: the paper's equal-rank view; --top), figure2_all_values,
    spectrum, and effective rank and normalized entropy by layer, one panel per role.

    With --subspace, also the subspace similarity between methods (subspace_similarity.csv
    and its heat-map), and amplification and intruder dimensions per method
    (subspace_modules.csv)."""
    check_comparison_target(out, force)
    comparison = _with_progress(
        quiet,
        spectra.compare,
        sources,
        labels or None,
        base=base,
        modules=modules,
        layers=layers,
        device=device,
        method="exact" if exact else "fast",
        lora_alpha=lora_alpha,
        per_head=per_head,
        subspace=subspace,
        subspace_rank=subspace_rank,
        intruder_top=intruder_top,
        intruder_eps=intruder_eps,
        jobs=jobs,
    )
    _print_summary(comparison)
    if comparison.subspace is not None:
        _warn(comparison.subspace.warnings)
    for label, report in zip(comparison.labels, comparison.reports, strict=True):
        _warn(f"{label}: {warning}" for warning in report.warnings)
    comparison.save(out, force=force, figure_format=figure_format, top=top)
    click.echo(f"summary, reports and figures written to {out}/", err=True)


@cli.command(
    short_help="Analyse every checkpoint of a training run, cached by content.", epilog=HUB_HELP
)
@click.argument("run", type=_path)
@click.option(
    "--out", type=_path, required=True, help="Folder for sweep.csv, sweep.json and the figure."
)
@click.option(
    "--glob",
    "pattern",
    help="Which checkpoints, as a glob relative to RUN (e.g. 'seed*/step-*') "
    "[default: the Trainer's checkpoint-<step>/ folders].",
)
@click.option(
    "--base",
    type=_source,
    help="Base model folder or Hub id: needed for full fine-tunes and DoRA; optional otherwise.",
)
@analysis_options
@loader_options
@click.option(
    "--metrics",
    "metric_names",
    default=",".join(SWEEP_METRICS),
    show_default=True,
    help="Metrics to plot against step, comma-separated.",
)
@click.option(
    "--cache",
    "cache_dir",
    type=_path,
    help="Report cache folder [default: $SPECTRA_CACHE or ~/.cache/spectra].",
)
@click.option("--no-cache", is_flag=True, help="Analyse every checkpoint; store nothing.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Local processes to analyse checkpoints in parallel.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run each checkpoint as a Ray task (one GPU each where there are GPUs): --ray alone "
    "starts or joins Ray as ray.init() does, --ray ADDRESS joins that cluster. Needs the ray "
    "extra; checkpoint paths must be readable by the workers.",
)
@click.option("--force", is_flag=True, help="Replace an earlier sweep at --out.")
@_figure_format
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or status lines.")
def sweep(
    run,
    out,
    pattern,
    base,
    modules,
    layers,
    device,
    exact,
    jobs,
    adapter,
    per_head,
    directional_only,
    lora_alpha,
    metric_names,
    cache_dir,
    no_cache,
    workers,
    ray_address,
    force,
    figure_format,
    quiet,
):
    """Analyse every checkpoint of the training run in RUN (checkpoint-<step>/ folders, or
    --glob), reuse cached results of unchanged checkpoints, and write one table
    (sweep.csv: a row per step and module) and a figure of metrics against step."""
    check_sweep_target(out, force)
    metrics = [name.strip() for name in metric_names.split(",") if name.strip()]
    unknown = [name for name in metrics if name not in spectra.METRICS]
    if unknown:
        raise click.BadParameter(f"unknown metric {unknown[0]!r}", param_hint="--metrics")
    bar = _ProgressBar(quiet, "sweeping", unit="checkpoints")
    try:
        result = run_sweep(
            run,
            base,
            modules,
            layers,
            device,
            "exact" if exact else "fast",
            pattern=pattern,
            cache=False if no_cache else (cache_dir or True),
            workers=workers,
            ray=ray_address,
            jobs=jobs,
            progress=bar,
            **_load_options(adapter, per_head, directional_only, lora_alpha),
        )
    finally:
        bar.close()
    if not quiet:
        _print_sweep(result)
    _warn(result.warnings)
    result.save(out, force=force, figure_format=figure_format, metrics=metrics)
    hits = sum(result.cached)
    click.echo(
        f"{len(result.reports)} checkpoints ({hits} from the cache): sweep.csv, sweep.json and "
        f"sweep.{figure_format} written to {out}/",
        err=True,
    )


def _print_sweep(result) -> None:
    columns = ("normalized_entropy", "effective_rank", "stable_rank")
    rows = []
    for checkpoint, report, hit in zip(
        result.checkpoints, result.reports, result.cached, strict=True
    ):
        means = [sum(float(r[c]) for r in report.rows) / len(report.rows) for c in columns]
        rows.append([checkpoint.step, checkpoint.path.name, "yes" if hit else "", *means])
    click.echo("mean over modules:")
    click.echo(
        render(["step", "checkpoint", "cached", "norm. entropy", "eff. rank", "stable rank"], rows)
    )


@cli.command(short_help="Redraw the figures from saved reports.")
@click.argument("reports", nargs=-1, required=True, type=_path)
@click.option("--label", "labels", multiple=True, help="One label per report, in order.")
@click.option("--out", type=_path, required=True, help="Folder for the figures.")
@click.option(
    "--modules",
    type=MODULES,
    default=None,
    help="Roles to draw, one panel each [default: every role all reports share].",
)
@_top_option
@click.option(
    "--normalize",
    type=click.Choice(list(NORMALIZATIONS)),
    default="sigma1",
    show_default=True,
    help="Histogram x axis: σ/σ₁, σ/‖ΔW‖_F or raw σ.",
)
@click.option("--log-x", is_flag=True, help="Histogram with log-spaced bins.")
@click.option(
    "--layer", help="Histogram of one layer (a number) or of each layer (grid) [default: pooled]."
)
@click.option("--force", is_flag=True, help="Overwrite figures already in --out.")
@_figure_format
def plot(reports, labels, out, modules, top, normalize, log_x, layer, force, figure_format):
    """Redraw the figures from saved REPORT folders, without recomputing anything:
    figure2 (the equal-rank histograms, --top) and spectrum."""
    loaded = [spectra.Report.load(path) for path in reports]
    _warn(filter(None, map(version_warning, loaded)))
    names = list(labels) or [path.name for path in reports]
    targets = [out / f"{name}.{figure_format}" for name in ("figure2", "spectrum")]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise ReportExistsError(f"{', '.join(existing)}: already there; pass --force to overwrite")
    figure, _ = plot_module.histogram(loaded, names, modules, normalize, log_x, layer, top=top)
    spectrum_figure, _ = plot_module.spectrum(loaded, names, modules)
    plot_module.save_figure(figure, targets[0])
    plot_module.save_figure(spectrum_figure, targets[1])
    click.echo(f"figures written to {out}/: {', '.join(path.name for path in targets)}")


@cli.command(short_help="Run everything on a small built-in example.")
@click.option(
    "--out",
    type=_path,
    default=Path("spectra-demo"),
    show_default=True,
    help="Folder for the example checkpoints, reports and figures.",
)
@click.option("--force", is_flag=True, help="Replace an existing demo folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def demo(out, force, quiet):
    """Write a small FT, LoRA and MultiLoRA example in their real formats, analyse
    and compare them, and draw the Figure 2 histograms."""
    check_replaceable(out, force, "checkpoints", "demo folder")
    paths = write_demo_checkpoints(out / "checkpoints")
    click.echo(
        f"example checkpoints written to {out / 'checkpoints'}/ (base, ft, lora, multilora.pt)"
    )
    comparison = _with_progress(
        quiet,
        spectra.compare,
        [paths["ft"], paths["lora"], paths["multilora"]],
        ["FT", "LoRA", "MultiLoRA"],
        base=paths["base"],
        lora_alpha=DEMO_LORA_ALPHA,
    )
    click.echo("\nmean over layers:")
    _print_summary(comparison)
    click.echo(
        "\nFT and MultiLoRA spread their updates over many directions (high normalized "
        "entropy, effective rank close to the rank); LoRA's update is led by a few "
        "(top-1 share near 3/4)."
    )
    comparison.save(out / "comparison", force=True)
    click.echo(
        f"reports, summary.csv and figures (figure2.png: the Figure 2 histograms) written to "
        f"{out / 'comparison'}/"
    )


if __name__ == "__main__":  # pragma: no cover
    cli()
