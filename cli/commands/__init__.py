"""The ``spectra`` commands, one module each; ``COMMANDS`` is what ``main`` registers."""

from __future__ import annotations

from .analyze import analyze
from .compare import compare
from .convert import convert
from .demo import demo
from .extract import extract
from .inspect import inspect
from .plot import plot
from .resize import resize
from .suggest import suggest
from .sweep import sweep

COMMANDS = (analyze, inspect, convert, compare, sweep, plot, suggest, resize, extract, demo)
