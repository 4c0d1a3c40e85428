"""``spectra analyze``: the metrics of each layer's ΔW in one checkpoint, as a table or JSON."""

from __future__ import annotations

import json

import click

import spectra
from spectra.defaults import INTRUDER_EPS, INTRUDER_TOP

from .. import options
from ..output import metrics_table, not_selected_line, render, warn, with_progress

# --ray for analyze, compare and extract (sweep's runs a checkpoint per task)
ray_option = click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run each module as a Ray task, largest first; the results equal a local run's. "
    "--ray alone starts or joins Ray as ray.init() does (put it after the checkpoint, which "
    "would otherwise be read as its address), --ray ADDRESS (HOST:PORT, or auto) joins that "
    "cluster. Needs the ray extra; the checkpoint must be on a path every node sees. Not with "
    "--esd, --intruders, --per-head, --subspace or --interference.",
)

# --estimate for analyze and compare (spectra.analysis.estimated)
estimate_option = click.option(
    "--estimate",
    is_flag=True,
    help="Dense ΔW: estimate the balance metrics with stated errors (stochastic Lanczos "
    "quadrature, block Krylov for the top σ) instead of all σ; far faster on large modules. "
    "Each estimated metric gets <metric>_err, rows say estimated, the other metrics are "
    "missing and the stored spectrum is the top 16 σ. Factored ΔW (LoRA) stay exact: they "
    "are already cheap. With --ray each module is a task on as many threads as this process has.",
)
estimate_steps_option = click.option(
    "--estimate-steps",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --estimate: the quadrature's Gauss nodes per probe (default 30). Fewer are "
    "faster, with wider errors: 20 took 23x less time than the default path on a 16384² "
    "module here, 30 took 17x less.",
)


def estimate_settings(estimate: bool, steps: int | None):
    """``--estimate`` and ``--estimate-steps`` as ``analyze``'s and ``compare``'s ``estimate``."""
    if steps is None:
        return estimate
    from spectra.analysis.estimated import EstimateSettings
    from spectra.arguments import ESTIMATE, ESTIMATE_STEPS
    from spectra.errors import SpectraError

    if not estimate:
        raise SpectraError(f"{ESTIMATE_STEPS} sets the quadrature of {ESTIMATE}: add {ESTIMATE}")
    return EstimateSettings(steps=steps)


@click.command(short_help="Analyse the ΔW of each layer of a checkpoint.", epilog=options.HUB_HELP)
@click.argument("ckpt", type=options.SOURCE)
@options.base(
    "Base model folder or Hub id: needed for full fine-tunes and DoRA; optional "
    "otherwise (adds relative_norm)."
)
@options.analysis_options
@options.out("Write the report folder here.")
@options.html()
@options.force("Replace an existing report at --out, or file at --html.")
@options.quiet()
@options.as_json("Print rows and metadata as JSON.")
@click.option(
    "--skip-nonfinite",
    is_flag=True,
    help="Leave out modules whose weights hold NaN or Inf (named in the warnings) "
    "instead of refusing the checkpoint.",
)
@click.option(
    "--esd",
    is_flag=True,
    help="Also fit the power-law exponent α of the eigenvalue spectrum of W0 and of W0+ΔW "
    "per module, as WeightWatcher 0.7.7 fits its alpha (alpha_base, alpha_tuned, with each "
    "fit's xmin and KS distance; esd_alpha.png with --out). Needs the base (--base, or a "
    "PEFT config's base found locally). Costs two more dense decompositions per module.",
)
@click.option(
    "--intruders",
    is_flag=True,
    help="Also count intruder dimensions per module: top singular vectors of W0+ΔW whose "
    "max |cos| with every singular vector of W0 is below --intruder-eps. Needs the base. "
    "Costs two float64 SVDs per module (shared with --esd).",
)
@click.option(
    "--intruder-top",
    type=click.IntRange(min=1),
    default=INTRUDER_TOP,
    show_default=True,
    help="With --intruders: intruders are sought among this many top singular vectors of W0+ΔW.",
)
@click.option(
    "--intruder-eps",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=INTRUDER_EPS,
    show_default=True,
    help="With --intruders: a vector is an intruder when its max |cos| with W0's singular "
    "vectors is below this.",
)
@ray_option
@estimate_option
@estimate_steps_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (predicted time and peak memory per device, from the shapes) "
    "and stop: nothing is computed or written.",
)
@click.option(
    "--recalibrate",
    is_flag=True,
    help="With --dry-run: measure this machine's rates again instead of reading the cache.",
)
@options.loader_options
def analyze(
    ckpt,
    base,
    modules,
    layers,
    device,
    exact,
    jobs,
    out,
    html_file,
    force,
    quiet,
    as_json,
    skip_nonfinite,
    esd,
    intruders,
    intruder_top,
    intruder_eps,
    ray_address,
    estimate,
    estimate_steps,
    dry_run,
    recalibrate,
    **loader,
):
    """Analyse the ΔW of each layer of CKPT: a PEFT adapter folder, a MultiLoRA
    checkpoint, or a fine-tuned model folder (with --base).

    CKPT and --base may also be Hub ids: org/name[@revision] from the local
    Hugging Face cache, hf://org/name[@revision] to download (below).

    \b
    Examples:
      spectra analyze adapter/                        # k and v of a LoRA adapter
      spectra analyze tuned/ --base base/ --out report/
      spectra analyze adapter/ --modules all --layers 0-3,7 --json
      spectra analyze adapter/ --html adapter.html    # a page to click through
      spectra analyze tuned/ --base base/ --esd --intruders   # α of W0, W0+ΔW; intruders
      spectra analyze tuned/ --base base/ --ray auto  # modules as tasks on a Ray cluster
      spectra analyze tuned/ --base base/ --estimate  # dense ΔW estimated, with errors
      spectra analyze tuned/ --base base/ --modules all --dry-run   # the plan: time, memory
    """
    from spectra.report import check_target  # the library loads when a command runs

    settings = estimate_settings(estimate, estimate_steps)
    if dry_run:  # the plan alone: nothing computed, nothing written
        if ray_address is not None:  # refuse what the run would refuse
            from spectra.analysis.distributed import check_ray_options

            check_ray_options(esd, intruders, None, options.load_options(**loader))
        plan = spectra.plan(
            ckpt,
            base=base,
            modules=modules,
            layers=layers,
            device=device,
            method="estimate" if estimate else "exact" if exact else "fast",
            jobs=jobs,
            recalibrate=recalibrate,
            estimate=settings if estimate_steps is not None else None,
            **options.load_options(**loader),
        )
        shown = json.dumps(plan.to_dict(), indent=2, default=str) if as_json else plan.lines()
        if ray_address is not None and not as_json:
            shown.append(
                "  with --ray each module is a task on the cluster: this is one machine's plan "
                "(spectra.plan(...).cluster(nodes) predicts that many nodes like this one)"
            )
        click.echo(shown if as_json else "\n".join(shown))
        return

    if out is not None:
        check_target(out, force)  # fail before the work, not after it
    if html_file is not None:
        from spectra.html import check_html_target

        check_html_target(html_file, force)
    report = with_progress(
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
        esd=esd,
        intruders=intruders,
        intruder_top=intruder_top,
        intruder_eps=intruder_eps,
        ray=ray_address,
        estimate=settings,
        **options.load_options(**loader),
    )
    if as_json:
        heads = {"heads": report.heads, "head_shares": report.head_shares} if report.heads else {}
        document = {"meta": report.meta, "rows": report.rows, **heads}
        click.echo(json.dumps(document, indent=2, default=str))
    else:
        source = report.meta["source"]
        if not quiet:
            click.echo(
                f"{source['path']}: {source['variant']}, {source['format']} format, "
                f"{len(report)} modules, device {report.meta['device']}, "
                f"σ {_method(report)}"
            )
        click.echo(metrics_table(report))
        if report.heads:  # --per-head on a multi-head source: how alike its heads are
            click.echo(_head_table(report))
        if "weights" in report.meta:  # --esd, --intruders: what needs W0
            click.echo(_weights_table(report))
        left_out = not_selected_line(report)  # what else the checkpoint holds, and the flag
        if left_out:
            click.echo(left_out)
    warn(report.warnings)
    if out is not None:
        report.save(out, force=force)
        figures = _head_figures(report, out) + _esd_figure(report, out)
        if not quiet:
            click.echo(
                f"report written to {out}/ (metrics.csv, report.json, spectra.safetensors"
                f"{''.join(', ' + name for name in figures)})",
                err=True,
            )
    if html_file is not None:
        report.to_html(html_file, force=force)
        if not quiet:
            click.echo(f"HTML report written to {html_file}", err=True)


def _head_table(report) -> str:
    """Head diversity per role: the mean over layers of each measure's mean over head pairs."""
    from spectra.analysis.heads import head_means

    rows = [
        [r["role"], r["cosine"], r["delta_cosine"], r["subspace_similarity"]]
        for r in head_means(report)
    ]
    return "\nhead diversity, mean over layers of the mean over head pairs (heads.csv):\n" + render(
        ["role", "cosine of B heads", "cosine of ΔW_j", "subspace similarity"], rows
    )


def _head_figures(report, out) -> list[str]:
    """The head files and figures in the report folder (none without heads)."""
    if not report.heads:
        return []
    from spectra.plot import write_head_figures

    label = report.meta["source"]["path"].rstrip("/").rsplit("/", 1)[-1]
    written = write_head_figures([report], [label], out)
    return ["heads.csv", "head_shares.csv", *(path.name for path in written)]


def _weights_table(report) -> str:
    """The columns that need W0, one row per layer and role (--esd, --intruders)."""
    columns = report.meta["weights"]["columns"]
    titles = {
        "alpha_base": "α W0",
        "xmin_base": "xmin W0",
        "ks_base": "KS W0",
        "alpha_tuned": "α W0+ΔW",
        "xmin_tuned": "xmin W0+ΔW",
        "ks_tuned": "KS W0+ΔW",
        "intruder_dimensions": "intruders",
    }
    rows = [[row["layer"], row["role"], *(row.get(c) for c in columns)] for row in report.rows]
    return "\nthe weights W0 and W0+ΔW:\n" + render(
        ["layer", "role", *(titles[c] for c in columns)], rows
    )


def _esd_figure(report, out) -> list[str]:
    """α of W0 and W0+ΔW by layer in the report folder (--esd with --out), when any was fitted."""
    rows = report.rows
    if not any(
        row.get("alpha_tuned") is not None or row.get("alpha_base") is not None for row in rows
    ):
        return []
    from spectra.plot import esd_alpha, save_figure

    label = report.meta["source"]["path"].rstrip("/").rsplit("/", 1)[-1]
    return [save_figure(esd_alpha(report, [label])[0], f"{out}/esd_alpha.png").name]


def _method(report) -> str:
    """How σ was taken: factored ΔW always by the exact QR core, dense ΔW by --exact or not."""
    kinds = {row["kind"] for row in report.rows}
    dense = "exact SVD" if report.meta["method"] == "exact" else "fast Gram eigenvalues"
    if "estimate" in report.meta:  # --estimate: dense ΔW estimated, never decomposed
        dense = "an estimate with stated errors (top σ only)"
    if kinds == {"factored"}:
        return "exact (factored QR core)"
    if kinds == {"dense"}:
        return f"by {dense}"
    return f"exact for factored ΔW, by {dense} for dense ΔW"
