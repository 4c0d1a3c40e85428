"""The command line's parameters, each declared once.

Parameter types (``--layers 0-3,7``, ``--modules k,v``, ``--top 8``), the path types of
checkpoint and output arguments, the options several commands share (``--base``, ``--out``,
``--force``, ``--quiet``, ``--format``, ``--top``, …) and the option groups ``loader_options``
(how to read a checkpoint) and ``analysis_options`` (what to analyse and how).
"""

from __future__ import annotations

from pathlib import Path

import click

from spectra.arguments import INITIAL, LOADER_OPTIONS, LORA_ALPHA, PER_HEAD, Argument
from spectra.errors import SpectraError
from spectra.selection import parse_layers, parse_modules


class LayerList(click.ParamType):
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]`` (read by ``spectra.selection``, as in Python)."""

    name = "layers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return list(parse_layers(str(value)))
        except SpectraError as exc:
            self.fail(str(exc))


class ModuleList(click.ParamType):
    """``"k,v"`` → ``["k", "v"]``; ``"all"`` → ``"all"``: every role the checkpoint has."""

    name = "modules"

    def convert(self, value, param, ctx):
        if isinstance(value, list) or value == "all":
            return value
        try:
            roles = parse_modules(str(value))
        except SpectraError as exc:
            self.fail(str(exc))
        return roles if roles == "all" else list(roles)


class TopCount(click.ParamType):
    """``"8"`` → ``8``; ``"all"`` → ``"all"``: the singular values per matrix in Figure 2."""

    name = "K|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "all":
            return value
        text = str(value).strip()
        if text == "all":
            return "all"
        if not text.isdigit() or int(text) < 1:
            self.fail(f"{value!r} is neither a count of at least 1 nor all")
        return int(text)


LAYERS = LayerList()
MODULES = ModuleList()
TOP = TopCount()


# --- path arguments -------------------------------------------------------------------------

PATH = click.Path(path_type=Path)
# checkpoints stay strings: pathlib would make hf://org/name into hf:/org/name
SOURCE = click.Path(path_type=str)
HUB_HELP = (
    "Hub ids: a checkpoint or --base that is not a local path may name a Hugging Face Hub "
    "model. org/name[@revision] is looked up in the local Hugging Face cache only "
    "(HF_HUB_CACHE, HF_HOME) and never downloaded, so a mistyped folder is an error, not a "
    "request. hf://org/name[@revision] downloads it (weights and configs only; needs "
    "pip install 'spectra[hub]'), or reads only the cache when HF_HUB_OFFLINE=1."
)


# --- options used by several commands, each declared once -----------------------------------
# A command whose help for an option says something of its own passes ``help``; flags, types
# and defaults stay here.


def base(help: str):
    """``--base``: the base model folder or Hub id."""
    return click.option("--base", type=SOURCE, help=help)


def out(help: str, **attrs):
    """``--out``: where a command writes (``required`` or a ``default`` per command)."""
    return click.option("--out", type=PATH, help=help, **attrs)


def force(help: str):
    """``--force``: replace what an earlier run left at the target."""
    return click.option("--force", is_flag=True, help=help)


def html(
    help: str = "Also write a self-contained HTML page (heat-map, spectra, Figure 2, table, "
    "warnings) to this file; an existing one needs --force.",
):
    """``--html FILE``: one page a browser opens with no server or network."""
    return click.option("--html", "html_file", type=PATH, metavar="FILE", help=help)


def quiet(help: str = "No progress bar or status lines."):
    """``--quiet`` / ``-q``."""
    return click.option("--quiet", "-q", is_flag=True, help=help)


def as_json(help: str):
    """``--json``: print JSON instead of tables (the parameter is ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def labels(help: str):
    """``--label``, once per source (the parameter is ``labels``)."""
    return click.option("--label", "labels", multiple=True, help=help)


def modules(
    help: str = "Roles to analyse, e.g. k,v or q,k,v,o,up,down,gate or all [default: k,v].",
):
    """``--modules k,v`` (or ``all``)."""
    return click.option("--modules", type=MODULES, default=None, help=help)


def layers(help: str = "Layers, e.g. 0-3,7 [default: all]."):
    """``--layers 0-3,7``."""
    return click.option("--layers", type=LAYERS, default=None, help=help)


def loader_option(argument: Argument, help: str | None = None):
    """A loader option as its declaration in ``spectra.arguments`` says (flag, type, help).

    A command whose help for it says something of its own passes ``help``.
    """
    if argument.is_switch:
        return click.option(argument.flag, is_flag=True, help=help or argument.help)
    kind = click.Path(exists=True, file_okay=False) if argument.type is Path else argument.type
    return click.option(
        argument.flag, type=kind, metavar=argument.metavar, help=help or argument.help
    )


def per_head(help: str | None = None):
    """``--per-head``."""
    return loader_option(PER_HEAD, help)


def lora_alpha(help: str | None = None):
    """``--lora-alpha``."""
    return loader_option(LORA_ALPHA, help)


def initial(help: str | None = None):
    """``--initial DIR``."""
    return loader_option(INITIAL, help)


def figure_format():
    """``--format png|pdf|svg`` (the parameter is ``figure_format``)."""
    return click.option(
        "--format",
        "figure_format",
        type=click.Choice(["png", "pdf", "svg"]),
        default="png",
        show_default=True,
        help="Figure file format.",
    )


def top():
    """``--top K|all``: the singular values per matrix in Figure 2."""
    return click.option(
        "--top",
        type=TOP,
        default=None,
        help="Figure 2: the top K singular values of each matrix over σ₁, or all "
        "[default: the largest adapter rank compared (DoRA, LoHa, LoKr: their r); all when "
        "none is an adapter].",
    )


# --- option groups ----------------------------------------------------------------------------


def _with_options(command, options):
    """Apply click options so that they show in ``--help`` in the order listed."""
    for option in reversed(options):
        command = option(command)
    return command


def loader_options(command):
    """How to read a checkpoint, shared by analyze, inspect and sweep: every loader option.

    Made from ``spectra.arguments.LOADER_OPTIONS``, the options the formats
    declare (``spectra.formats()`` says which format takes which).
    """
    return _with_options(command, [loader_option(argument) for argument in LOADER_OPTIONS])


def load_options(**values) -> dict:
    """The values of ``loader_options`` as keyword arguments of ``spectra.load``."""
    return {argument.name: values.get(argument.name) for argument in LOADER_OPTIONS}


def analysis_options(command):
    """What to analyse and how, shared by analyze, compare and sweep."""
    options = [
        modules(),
        layers(),
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
