"""``spectra inspect``: what a checkpoint holds (modules, shapes, ranks, scales), computing
nothing."""

from __future__ import annotations

import json

import click

import spectra
from spectra.display import format_number

from .. import options
from ..output import render, warn


@click.command(
    short_help="Show what a checkpoint holds, computing nothing.", epilog=options.HUB_HELP
)
@click.argument("ckpt", type=options.SOURCE)
@options.base("Base model folder or Hub id, to check it matches.")
@options.as_json("Print the description as JSON.")
@click.option(
    "--recalibrate",
    is_flag=True,
    help="Measure this machine's rates for the plan again (a few seconds) instead of "
    "reading them from the cache.",
)
@options.loader_options
def inspect(ckpt, base, as_json, recalibrate, **loader):
    """Show what CKPT holds (format, variant, modules, shapes, dtypes, ranks, scales and
    where each scale came from, heads, what its files say about the training that
    made it, the tensors not analysed and why, warnings) without computing anything,
    and the plan of analysing every module: predicted time and peak memory on this
    CPU and on a GPU when there is one (rates measured once per machine, cached).

    \b
    Examples:
      spectra inspect adapter/
      spectra inspect tuned/ --base base/ --json
    """
    checkpoint = spectra.load(ckpt, base=base, **options.load_options(**loader))
    info = checkpoint.describe()
    if base is not None:
        checkpoint.plan(modules=sorted({m.role for m in info.modules}))
    plan = spectra.plan(
        ckpt, modules="all", checkpoint=checkpoint, check=False, recalibrate=recalibrate
    )
    if as_json:
        document = {**info.to_dict(), "plan": plan.to_dict()}
        click.echo(json.dumps(document, indent=2, default=str))
        return
    layers = sorted({m.layer for m in info.modules})
    roles = list(dict.fromkeys(m.role for m in info.modules))
    fields = {
        "path": info.path,
        "format": f"{info.variant}, {info.format} format",
        "base": info.base,
        **info.details,
        "modules": f"{len(info.modules)} ({', '.join(roles)}) in {len(layers)} layers",
    }
    width = max(len(key) for key in fields) + 2
    for key, value in fields.items():
        click.echo(f"{key + ':':<{width}}{format_number(value)}")
    click.echo()
    header = [
        "layer",
        "role",
        "shape",
        "dtype",
        "kind",
        "r",
        "heads",
        "scale",
        "scale from",
        "name",
    ]
    rows = [
        [
            m.layer,
            m.role,
            "x".join("?" if side is None else str(side) for side in m.shape),
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
    _print_training(info.training)
    _print_not_analysed(info)
    click.echo("\n" + "\n".join(plan.lines("plan of --modules all")))
    warn(info.warnings)


def _print_training(training: dict, tags_shown: int = 10) -> None:
    """What the files say about the training: its fields, then the dataset's top tags."""
    if not training:
        return
    click.echo(f"\ntraining (as {training['written_by']} saved it, {training['source']}):")
    fields = training.get("fields", {})
    width = max((len(name) for name in fields), default=0) + 2
    for name, value in fields.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else format_number(value)
        click.echo(f"  {name + ':':<{width}}{shown}")
    for folder, about in training.get("datasets", {}).items():
        click.echo(f"  dataset {folder}: {json.dumps(about)}")
    tags = list(training.get("tags", {}).items())
    if tags:
        top = ", ".join(f"{tag} ({count})" for tag, count in tags[:tags_shown])
        more = (
            f" … (+{len(tags) - tags_shown} more, --json lists them)"
            if len(tags) > tags_shown
            else ""
        )
        click.echo(f"  dataset tags, most frequent first: {top}{more}")


def _print_not_analysed(info, shown: int = 3) -> None:
    """The tensors no ΔW uses, grouped by reason, a few names each (--json lists all)."""
    groups = info.not_analysed_by_reason()
    if not groups:
        return
    click.echo(f"\nnot analysed ({len(info.not_analysed)} tensors):")
    for reason, names in groups.items():
        more = f" … (+{len(names) - shown} more, --json lists all)" if len(names) > shown else ""
        click.echo(f"  {reason} [{len(names)}]: {', '.join(names[:shown])}{more}")
