"""``spectra sweep``: every checkpoint of a training run, cached by content, as one table
(sweep.csv) and a figure of metrics against step."""

from __future__ import annotations

import click

import spectra
from spectra.defaults import SWEEP_METRICS

from .. import options
from ..output import ProgressBar, print_sweep, warn


@click.command(
    short_help="Analyse every checkpoint of a training run, cached by content.",
    epilog=options.HUB_HELP,
)
@click.argument("run", type=options.PATH)
@options.out("Folder for sweep.csv, sweep.json and the figure.", required=True)
@click.option(
    "--glob",
    "pattern",
    help="Which checkpoints, as a glob relative to RUN (e.g. 'seed*/step-*') "
    "[default: the Trainer's checkpoint-<step>/ folders].",
)
@options.base(
    "Base model folder or Hub id: needed for full fine-tunes and DoRA; optional otherwise."
)
@options.analysis_options
@options.loader_options
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
    type=options.PATH,
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
@options.force("Replace an earlier sweep at --out.")
@options.figure_format()
@options.quiet()
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
    initial,
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
    (sweep.csv: a row per step and module) and a figure of metrics against step.

    \b
    Examples:
      spectra sweep output/ --out sweep/              # every checkpoint-<step>/ of a run
      spectra sweep runs/ --glob 'seed*/step-*' --out sweep/ --workers 2
    """
    from spectra.analysis.sweeps import check_sweep_target, run_sweep

    check_sweep_target(out, force)
    metrics = [name.strip() for name in metric_names.split(",") if name.strip()]
    unknown = [name for name in metrics if name not in spectra.METRICS]
    if unknown:
        raise click.BadParameter(
            f"unknown metric {unknown[0]!r}; expected some of {', '.join(spectra.METRICS)}",
            param_hint="--metrics",
        )
    bar = ProgressBar(quiet, "sweeping", unit="checkpoints")
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
            **options.load_options(
                adapter=adapter,
                per_head=per_head,
                directional_only=directional_only,
                lora_alpha=lora_alpha,
                initial=initial,
            ),
        )
    finally:
        bar.close()
    try:
        if not quiet:
            print_sweep(result)
        warn(result.warnings)
        result.save(out, force=force, figure_format=figure_format, metrics=metrics)
    except KeyboardInterrupt:  # every checkpoint is analysed (and cached) by now: say so
        raise _interrupted_after_analysis(result, cached=not no_cache) from None
    hits = sum(result.cached)
    click.echo(
        f"{len(result.reports)} checkpoints ({hits} from the cache): sweep.csv, sweep.json and "
        f"sweep.{figure_format} written to {out}/",
        err=True,
    )


def _interrupted_after_analysis(result, cached: bool) -> KeyboardInterrupt:
    """The interrupt of a sweep whose checkpoints are all analysed, counted as run_sweep does."""
    from spectra.analysis.sweeps import SweepInterrupted
    from spectra.report import is_report

    saved = sum(is_report(checkpoint.path) for checkpoint in result.checkpoints)
    total = len(result.checkpoints) - saved
    analysed = total - sum(result.cached)
    return SweepInterrupted(total if cached else 0, total, analysed, cached, saved)
