"""The ``spectra`` commands, one module each; ``COMMANDS`` is what ``main`` registers."""

from __future__ import annotations

from .analyze import analyze
from .compare import compare
from .convert import convert
from .demo import demo
from .inspect import inspect
from .plot import plot
from .sweep import sweep

COMMANDS = (analyze, inspect, convert, compare, sweep, plot, demo)
