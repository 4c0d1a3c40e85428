"""The documentation stands on its own: links lead somewhere, nothing cites a file outside.

README.md and docs/*.md link to each other, to the code and to the
figures by relative paths: each must name a file or folder of the
repository, and an ``#anchor`` into a page must be one of its headings.
The code and the docs cite only what the repository holds: the design and
format notes spectra grew from lived beside it (``shared/``) and their
facts are now on the docs pages. The command-line page lists every flag of
every command, the metric docstrings' examples (every module of
``spectra.metrics``) run as doctests, and the tables that ``docs/tables.py``
makes from the code (formats, architectures) are current.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_CODE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _links(page: Path) -> list[str]:
    text = _CODE.sub("", page.read_text(encoding="utf-8"))  # links inside code blocks are code
    return _LINK.findall(text)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _CODE.sub("", page.read_text(encoding="utf-8"))
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_pages_this_file_checks_exist():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    for name in ("README.md", "docs/README.md", "docs/formats.md", "docs/command-line.md"):
        assert name in names


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_leads_to_a_file_of_the_repository(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:: not a file here
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif ROOT not in (target, *target.parents):
            broken.append(f"{link} (outside the repository)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"


_OUTSIDE = re.compile(r"shared/|DESIGN\.md|FORMATS\.md")


def _cited_outside() -> list[str]:
    files = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md")]
    for folder in ("spectra", "cli"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".txt")]
    files += [p for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name]
    hits = []
    for path in sorted(set(files)):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "METRICS.md" in line:  # docs/METRICS.md is in the repository (and test_metrics
                continue  # compares it with the shared copy where one is at hand)
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_nothing_cites_a_file_outside_the_repository():
    hits = _cited_outside()
    assert not hits, (
        "these lines cite notes that are not in the repository; cite the docs page that "
        "says the same (docs/formats.md, docs/accuracy.md, docs/design.md, …):\n"
        + "\n".join(hits)
    )


def _section(text: str, command: str) -> str:
    """The part of command-line.md under the heading that names ``spectra COMMAND``."""
    lines = text.splitlines()
    heading = f"`spectra {command}"
    start = next(i for i, line in enumerate(lines) if line.startswith("###") and heading in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end])


def test_the_command_line_page_lists_every_flag_of_every_command():
    import click
    from spectra_cli.main import cli

    text = (ROOT / "docs" / "command-line.md").read_text(encoding="utf-8")
    missing = []
    for name, command in sorted(cli.commands.items()):
        section = _section(text, name)
        for option in command.params:
            if not isinstance(option, click.Option):
                continue
            for flag in option.opts + option.secondary_opts:
                if flag.startswith("--") and f"`{flag}" not in section:
                    missing.append(f"spectra {name} {flag}")
    assert not missing, f"docs/command-line.md does not list: {missing}"


def _tables():
    """``docs/tables.py``, the script that makes the docs' generated tables, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "docs" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_tables_of_the_docs_are_current():
    tables = _tables()
    assert ("docs/formats.md", "formats") in tables.BLOCKS
    assert ("docs/formats.md", "architectures") in tables.BLOCKS
    for (page, name), make in tables.BLOCKS.items():
        assert tables.current(page, name) == make(), (
            f"{page}: the {name} table is not what the code says now; run "
            f"`python docs/tables.py` and commit the page"
        )


def test_the_format_table_has_a_row_per_format_and_the_map_a_row_per_rule():
    import spectra
    from spectra.loaders.naming import architectures
    from spectra.loaders.peft.variant import VARIANTS

    tables = _tables()
    formats = tables.formats_block().splitlines()
    for fmt in spectra.formats():
        assert sum(line.startswith(f"| `{fmt.name}` | {fmt.priority} |") for line in formats) == 1
    for peft_type in VARIANTS:
        assert sum(line.startswith(f"| `{peft_type}` |") for line in formats) == 1
    rows = [line for line in tables.architectures_block().splitlines() if line.startswith("| `")]
    assert len(rows) == len(architectures._RULES) + len(architectures._LEFT_OUT)


def test_the_tables_script_checks_and_rewrites_a_stale_block(tmp_path, monkeypatch):
    tables = _tables()
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("before\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n", encoding="utf-8")
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    monkeypatch.setattr(tables, "BLOCKS", {("docs/page.md", "t"): lambda: "| new |"})
    assert tables.main(["--check"]) == 1
    assert tables.main([]) == 0
    assert page.read_text(encoding="utf-8") == (
        "before\n<!-- t:start -->\n| new |\n<!-- t:end -->\nafter\n"
    )
    assert tables.main(["--check"]) == 0


def _metric_modules() -> list:
    """``spectra.metrics`` and every module of the package (balance, size, tolerance, …)."""
    import importlib
    import pkgutil

    import spectra.metrics

    names = [
        info.name for info in pkgutil.walk_packages(spectra.metrics.__path__, "spectra.metrics.")
    ]
    return [spectra.metrics, *(importlib.import_module(name) for name in sorted(names))]


def test_the_metric_examples_run_as_doctests():
    import spectra.metrics

    documented = [
        name
        for name in spectra.metrics.__all__
        if callable(getattr(spectra.metrics, name))
        and not isinstance(getattr(spectra.metrics, name), type)
    ]
    modules = _metric_modules()
    assert {"spectra.metrics.balance", "spectra.metrics.size"} <= {m.__name__ for m in modules}
    failed = attempted = 0
    for module in modules:  # testmod finds only what each module defines itself
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        failed, attempted = failed + result.failed, attempted + result.attempted
    assert failed == 0
    assert attempted >= len(documented)
    finder = doctest.DocTestFinder()
    without = [
        name
        for name in documented
        if not any(test.examples for test in finder.find(getattr(spectra.metrics, name), name))
    ]
    assert not without, f"metric functions without a runnable example: {without}"
