"""``spectra compare``: several checkpoints or saved reports side by side — a summary table,
and summary.csv, the reports and the figures in one folder."""

from __future__ import annotations

import click

import spectra
from spectra.defaults import INTRUDER_EPS, INTRUDER_TOP, SUBSPACE_RANK

from .. import options
from ..output import not_selected_line, print_summary, render, warn, with_progress
from .analyze import estimate_option, estimate_settings, estimate_steps_option, ray_option


@click.command(
    short_help="Compare methods: summary table, reports and figures.", epilog=options.HUB_HELP
)
@click.argument("sources", nargs=-1, required=True, type=options.SOURCE)
@options.labels("One label per source, in order (e.g. FT, LoRA).")
@options.base("Base model folder or Hub id, for the sources that use one.")
@options.analysis_options
@options.lora_alpha("α for MultiLoRA sources (their checkpoints save none).")
@options.per_head(
    "Multi-head sources: one row per head, and how alike the heads are (heads.csv, heads.png)."
)
@options.initial(
    "PEFT LoRA sources whose init moved W0 (PiSSA, OLoRA, …): the adapter saved before training."
)
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
    "--interference",
    is_flag=True,
    help="Sources are fine-tunes of one base: also measure their task interference per "
    "layer and pair, SAR both ways and STI (interference.csv and its heat-map). Takes a "
    "full SVD per dense module.",
)
@click.option(
    "--interference-rank",
    type=click.IntRange(min=1),
    default=None,
    help="Top-k singular vectors of each ΔW in SAR and STI  [default: its numerical rank]",
)
@options.out("Folder for summary.csv, reports and figures.", required=True)
@options.html()
@options.force("Replace an earlier comparison at --out, or file at --html.")
@options.top()
@options.figure_format()
@options.quiet("No progress bar.")
@ray_option
@estimate_option
@estimate_steps_option
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
    initial,
    subspace,
    subspace_rank,
    intruder_top,
    intruder_eps,
    interference,
    interference_rank,
    out,
    html_file,
    force,
    figure_format,
    quiet,
    ray_address,
    estimate,
    estimate_steps,
):
    """Compare methods: analyse each SOURCE (checkpoint or saved report folder), print a
    summary per method and module (mean over layers), and write summary.csv, the
    reports and the figures to --out: figure2 (each matrix's top K singular values over
    σ₁, K the largest adapter rank: the paper's equal-rank view; --top), figure2_all_values,
    spectrum, and effective rank and normalized entropy by layer, one panel per role.

    With --subspace, also the subspace similarity between methods (subspace_similarity.csv
    and its heat-map), and amplification and intruder dimensions per method
    (subspace_modules.csv). With --interference (sources tuned from one base), the
    subspace alignment ratio both ways and the singular task interference of each pair of
    sources per layer (interference.csv and its heat-map).

    With --per-head, multi-head sources (HydraLoRA, R-LoRA, MultiLoRA) also get their
    head diversity: heads.csv and head_shares.csv in their reports, the mean head cosine
    in the summary, and the figures heads.png and heads_matrix_<label>.png.

    \b
    Examples:
      spectra compare tuned/ adapter/ --label FT --label LoRA --base base/ --out cmp/
      spectra compare cmp/reports/FT cmp/reports/LoRA --out cmp2/ --top all
      spectra compare tuned/ adapter/ --base base/ --subspace --out cmp3/
      spectra compare lora-a/ lora-b/ --interference --out cmp5/
      spectra compare cmp/reports/FT cmp/reports/LoRA --out cmp4/ --html cmp.html
    """
    from spectra.analysis.comparison import check_comparison_target

    check_comparison_target(out, force)
    if html_file is not None:
        from spectra.html import check_html_target

        check_html_target(html_file, force)  # before the work, not after it
    comparison = with_progress(
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
        initial=initial,
        subspace=subspace,
        subspace_rank=subspace_rank,
        intruder_top=intruder_top,
        intruder_eps=intruder_eps,
        interference=interference,
        interference_rank=interference_rank,
        jobs=jobs,
        ray=ray_address,
        estimate=estimate_settings(estimate, estimate_steps),
    )
    print_summary(comparison)
    if any(report.heads for report in comparison.reports):  # multi-head sources, --per-head
        click.echo(_head_table(comparison))
    for label, report in zip(comparison.labels, comparison.reports, strict=True):
        left_out = not_selected_line(report, label)  # what else each checkpoint holds
        if left_out:
            click.echo(left_out)
    if comparison.subspace is not None:
        warn(comparison.subspace.warnings)
    if comparison.interference is not None:
        click.echo(_interference_table(comparison.interference))
        warn(comparison.interference.warnings)
    for label, report in zip(comparison.labels, comparison.reports, strict=True):
        warn(f"{label}: {warning}" for warning in report.warnings)
    comparison.save(out, force=force, figure_format=figure_format, top=top)
    click.echo(f"summary, reports and figures written to {out}/", err=True)
    if html_file is not None:
        comparison.to_html(html_file, force=force, top=top)
        click.echo(f"HTML report written to {html_file}", err=True)
    for label, folder in comparison.report_folders().items():
        if folder != label:  # say where a label that is no file name went
            click.echo(f"the report of {label!r} is in {out}/reports/{folder}/", err=True)


def _head_table(comparison) -> str:
    """Head diversity per label and role: means over layers of the means over head pairs."""
    from spectra.analysis.heads import head_means

    rows = [
        [label, r["role"], r["cosine"], r["delta_cosine"], r["subspace_similarity"]]
        for label, report in zip(comparison.labels, comparison.reports, strict=True)
        for r in head_means(report)
    ]
    titles = ["label", "role", "cosine of B heads", "cosine of ΔW_j", "subspace similarity"]
    title = "\nhead diversity, mean over layers of the mean over head pairs (heads.csv):\n"
    return title + render(titles, rows)


def _interference_table(result) -> str:
    """Task interference per pair and role: means over layers (interference.csv)."""
    columns = ("label_a", "label_b", "role", "sar_a_to_b", "sar_b_to_a", "sti")
    rows = [[row[c] for c in columns] for row in result.means()]
    titles = ["label a", "label b", "role", "SAR a → b", "SAR b → a", "STI"]
    title = "\ntask interference, mean over layers (SAR a → b: the share of b in a's subspace):\n"
    return title + render(titles, rows)
