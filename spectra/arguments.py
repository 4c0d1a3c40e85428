"""Every argument a message can name, declared once: its Python name and its flag.

A message names an argument by formatting an ``Argument``: ``f"pass {BASE}"``
or, with a value, ``f"pass {BASE('DIR')}"``. The argument renders itself for
the caller the message is made for: ``--base DIR`` while the command line
runs (``errors.command_line()``), ``base=DIR`` in Python. Messages are never
rewritten afterwards, so an argument a message names is always one declared
here. The options that say how to read a checkpoint (``LOADER_OPTIONS``) carry
their type and help as well: each format lists the ones it takes in its
registration, and the command line builds its loader flags from them.

This module imports nothing heavy, so the command line can use it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import on_command_line

__all__ = [
    "ADAPTER",
    "ARGUMENTS",
    "BASE",
    "CACHE",
    "DEVICE",
    "DIRECTIONAL_ONLY",
    "DRY_RUN",
    "ENERGY",
    "ESD",
    "ESTIMATE",
    "ESTIMATE_STEPS",
    "EXACT",
    "FORCE",
    "FORMAT",
    "GLOB",
    "HTML",
    "INITIAL",
    "INTERFERENCE",
    "INTERFERENCE_RANK",
    "INTRUDERS",
    "INTRUDER_EPS",
    "INTRUDER_TOP",
    "JOBS",
    "LABEL",
    "LAYER",
    "LAYERS",
    "LOADER_OPTIONS",
    "LOG_X",
    "LORA_ALPHA",
    "METRICS",
    "MODULES",
    "NORMALIZE",
    "NO_CACHE",
    "OUT",
    "PER_HEAD",
    "RANK",
    "RAY",
    "RECALIBRATE",
    "SKIP_NONFINITE",
    "SUBSPACE",
    "SUBSPACE_RANK",
    "TOP",
    "WORKERS",
    "Argument",
    "declare",
]


@dataclass(frozen=True)
class Argument:
    """One argument as Python and the command line spell it.

    ``python`` is how a switch reads in Python (``force=True``,
    ``method="exact"``); a valued argument leaves it None and reads
    ``name=VALUE``.
    """

    name: str  # the Python keyword argument: "base"
    flag: str  # the command-line flag: "--base"
    python: str | None = None  # a switch in Python: "force=True"; None for a valued argument
    # For options the command line builds from their declaration (a format's options):
    type: type | None = None  # the value's type (str, float, a folder path); None for a switch
    help: str = ""  # the --help text
    metavar: str | None = None  # the value's placeholder in --help (DIR, ALPHA)

    @property
    def is_switch(self) -> bool:
        """Whether the argument is a flag without a value (``--force``)."""
        return self.python is not None

    def __str__(self) -> str:
        if on_command_line():
            return self.flag
        return self.python if self.python is not None else f"{self.name}="

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __call__(self, value: object) -> str:
        """The argument with a value: ``--base DIR`` / ``base=DIR``, ``modules='k,v'``.

        An upper-case value is a placeholder (``DIR``, ``ALPHA``) and a number
        stays a number; any other value is quoted as a Python string.
        """
        text = str(value)
        if on_command_line():
            return f"{self.flag} {text}"
        if text.isupper() or _is_number(text):
            return f"{self.name}={text}"
        return f"{self.name}={text!r}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


ARGUMENTS: dict[str, Argument] = {}  # flag → Argument: every argument a message may name


def declare(name: str, flag: str, python: str | None = None, **details: object) -> Argument:
    """Declare an argument once (a second declaration of a flag is an error).

    ``details`` are ``type``, ``help`` and ``metavar``, for an option the
    command line builds from its declaration.
    """
    if flag in ARGUMENTS:
        raise ValueError(f"argument {flag} declared twice")
    ARGUMENTS[flag] = argument = Argument(name, flag, python, **details)
    return argument


# What to read and where to write.
BASE = declare("base", "--base")
OUT = declare("out", "--out")
HTML = declare("html", "--html")
FORCE = declare("force", "--force", "force=True")
FORMAT = declare("format", "--format")
# What to analyse and how.
MODULES = declare("modules", "--modules")
LAYERS = declare("layers", "--layers")
LAYER = declare("layer", "--layer")
DEVICE = declare("device", "--device")
EXACT = declare("method", "--exact", 'method="exact"')
JOBS = declare("jobs", "--jobs")
SKIP_NONFINITE = declare("skip_nonfinite", "--skip-nonfinite", "skip_nonfinite=True")
# A plan before the run (analysis.plan): predicted time and memory; the rates it uses.
DRY_RUN = declare("dry_run", "--dry-run", "spectra.plan(...)")
RECALIBRATE = declare("recalibrate", "--recalibrate", "recalibrate=True")
METRICS = declare("metrics", "--metrics")
# What needs the base weights W0 (analysis.weights): the weights' own spectrum, intruders.
ESD = declare("esd", "--esd", "esd=True")
INTRUDERS = declare("intruders", "--intruders", "intruders=True")
# Dense ΔW estimated with stated errors instead of decomposed (analysis.estimated).
ESTIMATE = declare("estimate", "--estimate", "estimate=True")
ESTIMATE_STEPS = declare("estimate_steps", "--estimate-steps", "estimate=EstimateSettings(steps=N)")
# Comparisons, sweeps and figures.
LABEL = declare("labels", "--label")
SUBSPACE = declare("subspace", "--subspace", "subspace=True")
SUBSPACE_RANK = declare("subspace_rank", "--subspace-rank")
INTRUDER_TOP = declare("intruder_top", "--intruder-top")
INTRUDER_EPS = declare("intruder_eps", "--intruder-eps")
INTERFERENCE = declare("interference", "--interference", "interference=True")
INTERFERENCE_RANK = declare("interference_rank", "--interference-rank")
GLOB = declare("pattern", "--glob")
CACHE = declare("cache", "--cache")
NO_CACHE = declare("cache", "--no-cache", "cache=False")
WORKERS = declare("workers", "--workers")
RAY = declare("ray", "--ray", "ray=True")
TOP = declare("top", "--top")
NORMALIZE = declare("normalize", "--normalize")
LOG_X = declare("log_x", "--log-x", "log_x=True")
# Acting on a spectrum.
ENERGY = declare("energy", "--energy")
RANK = declare("rank", "--rank")
# How to read a checkpoint: each format names the ones it takes (loaders.registry.Format).
ADAPTER = declare(
    "adapter",
    "--adapter",
    type=str,
    metavar="NAME",
    help="A PEFT adapter by name: saved in a sub-folder, or one of several in one file.",
)
PER_HEAD = declare(
    "per_head",
    "--per-head",
    "per_head=True",
    help="Multi-head LoRA and MultiLoRA: one row per head instead of the whole ΔW.",
)
DIRECTIONAL_ONLY = declare(
    "directional_only",
    "--directional-only",
    "directional_only=True",
    help="DoRA without a base: analyse the directional part s·B@A alone.",
)
LORA_ALPHA = declare(
    "lora_alpha",
    "--lora-alpha",
    type=float,
    metavar="ALPHA",
    help="α where the checkpoint does not save it (MultiLoRA, torchtune without its config): "
    "norms scale by α/r.",
)
INITIAL = declare(
    "initial",
    "--initial",
    type=Path,
    metavar="DIR",
    help="LoRA whose init moved W0 (PiSSA, OLoRA, CorDA, LoftQ): the adapter folder saved "
    "before training; ΔW = s·(B@A − B0@A0), the update of the original weights (rank ≤ 2r).",
)

# Every loader option, in the order the command line's --help lists them.
LOADER_OPTIONS: tuple[Argument, ...] = (ADAPTER, PER_HEAD, DIRECTIONAL_ONLY, LORA_ALPHA, INITIAL)
