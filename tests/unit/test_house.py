"""The house rules a reader can count: small modules, a short top level, one record, one door.

Read from the source (nothing is imported): no module of the library or the
command line is over ``MAX_LINES`` lines, the top of ``spectra/`` holds at
most ``MAX_TOP_MODULES`` modules, the README stays a front page, and no
format is found anywhere but through the registry.
"""

from __future__ import annotations

import re
from pathlib import Path

import spectra

SPECTRA = Path(spectra.__file__).resolve().parent
REPOSITORY = SPECTRA.parent
MAX_LINES = 450  # each module one job
MAX_TOP_MODULES = 10  # the modules beside the packages at the top of spectra/
MAX_README_BYTES = 16 * 1024  # a front page; the reference is in docs/


def _modules() -> list[Path]:
    return sorted([*SPECTRA.rglob("*.py"), *(REPOSITORY / "cli").rglob("*.py")])


def test_no_module_is_over_the_line_limit():
    long = {
        str(path.relative_to(REPOSITORY)): lines
        for path in _modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines (give each part its own module): {long}"


def test_the_top_of_the_package_is_short():
    top = sorted(path.name for path in SPECTRA.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_readme_is_a_front_page():
    size = len((REPOSITORY / "README.md").read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move reference text to docs/"


def test_formats_are_registered_nowhere_but_the_registry():
    """Every ``Format(...)`` is passed to ``register``; nothing else lists formats by name."""
    for path in (SPECTRA / "loaders").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        made = len(re.findall(r"\bFormat\(\n", text))
        registered = len(re.findall(r"\bregister\(\n\s*Format\(\n", text))
        assert made == registered, f"{path}: a Format made but not registered"
    names = [fmt.name for fmt in spectra.formats()]
    init = (SPECTRA / "loaders" / "__init__.py").read_text(encoding="utf-8")
    assert not any(f'"{name}"' in init for name in names), "loaders/__init__.py names a format"
