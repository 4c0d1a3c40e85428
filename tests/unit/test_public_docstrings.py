"""The public API is documented in one style, and the examples that need no files run.

Every function and class ``spectra.__all__`` exports has a one-line summary,
``Args:`` naming each parameter, ``Returns:`` (functions) and an ``Example``
(a doctest, or a code block after ``Example::`` where files are needed); so
do the methods of the result types that users call. The doctests of the
modules below run here, as the metrics' run in ``test_docs.py``.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re

import pytest

import spectra

SECTIONS = ("Args:", "Returns:", "Raises:", "Example")

# The result types' methods that users call: (class, method) as spectra exports them.
METHODS = {
    "Report": ("save", "load", "to_pandas", "to_html", "spectrum", "spectrum_of"),
    "Comparison": ("summary", "summary_csv", "to_pandas", "to_html", "save", "report_folders"),
    "Sweep": ("rows", "to_pandas", "save"),
    "Checkpoint": ("plan", "deltas"),
}

# Modules whose doctests must run and pass (each defines at least one example).
DOCTEST_MODULES = (
    "spectra.svd",
    "spectra.delta",
    "spectra.loaders",
    "spectra.errors",
    "spectra.loaders.info",
    "spectra.loaders.storage.metadata",
    "spectra.report.results",
    "spectra.analysis.comparison",
    "spectra.actions.suggest",
)


def _public():
    names = []
    for name in spectra.__all__:
        value = getattr(spectra, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            names.append(name)
    return names


def _section(doc: str, title: str) -> str:
    """The text of one section: from its title to the next section title."""
    start = doc.index(title) + len(title)
    ends = [doc.find(other, start) for other in SECTIONS if other != title]
    ends = [end for end in ends if end != -1]
    return doc[start : min(ends) if ends else len(doc)]


def _parameters(obj) -> list[str]:
    """The parameters a caller gives (``**options`` as ``options``), without ``self``/``cls``."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return ["message"]  # the one-line message every spectra error and warning takes
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name not in ("self", "cls")]


def _check_style(qualified: str, obj, returns: bool) -> None:
    doc = inspect.getdoc(obj)
    assert doc, f"{qualified}: no docstring"
    lines = doc.splitlines()
    assert lines[0].strip(), f"{qualified}: the docstring starts with a blank line"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{qualified}: the summary is not one line followed by a blank line"
    )
    parameters = _parameters(obj)
    if parameters:
        assert "Args:" in doc, f"{qualified}: takes {parameters} but has no Args: section"
        documented = _section(doc, "Args:")
        missing = [
            name for name in parameters if not re.search(rf"\b{re.escape(name)}\b", documented)
        ]
        assert not missing, f"{qualified}: Args: does not name {missing}"
    if returns:
        assert "Returns:" in doc, f"{qualified}: no Returns: section"
    assert "Example" in doc, f"{qualified}: no Example section"


@pytest.mark.parametrize("name", _public())
def test_each_public_name_is_documented_in_one_style(name):
    value = getattr(spectra, name)
    _check_style(f"spectra.{name}", value, returns=inspect.isfunction(value))


@pytest.mark.parametrize(
    "owner, method", [(owner, method) for owner, methods in METHODS.items() for method in methods]
)
def test_the_result_methods_users_call_are_documented(owner, method):
    _check_style(f"spectra.{owner}.{method}", getattr(getattr(spectra, owner), method), True)


def test_suggestion_config_and_save_are_documented():
    from spectra.actions import Suggestion

    _check_style("spectra.actions.Suggestion", Suggestion, returns=False)
    for method in ("config", "save"):
        _check_style(f"Suggestion.{method}", getattr(Suggestion, method), returns=True)


def test_examples_on_disk_are_code_blocks_not_doctests():
    """An example that reads or writes files is shown, not run: ``Example::``, no ``>>>``."""
    for name in _public():
        doc = inspect.getdoc(getattr(spectra, name)) or ""
        if "Example::" in doc:
            block = doc.split("Example::", 1)[1]
            assert ">>>" not in block, f"spectra.{name}: a code block written as a doctest"


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_the_examples_that_need_no_files_run_as_doctests(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= 1, f"{module_name}: no doctest ran"
