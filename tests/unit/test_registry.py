"""One registry of formats, and arguments that render themselves for their caller.

Every format — full, peft and multilora included — is a ``registry.Format``
with an explicit priority and its options declared on it; the command line's
loader flags are made from those declarations; a message names an argument
as ``--flag`` on the command line and ``name=`` in Python, with nothing
rewritten after the message is made.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra import arguments
from spectra.arguments import ARGUMENTS, BASE, EXACT, FORCE, LOADER_OPTIONS, MODULES, NO_CACHE
from spectra.errors import FormatError, SelectionError, command_line
from spectra.loaders import registry

SPECTRA = Path(spectra.__file__).resolve().parent
CORE = ("full", "peft", "multilora")


def test_every_format_registers_the_same_way_with_its_own_priority():
    formats = spectra.formats()
    names = [fmt.name for fmt in formats]
    assert set(CORE) <= set(names)
    assert {"kohya", "diffusers", "mlx", "torchtune", "gguf"} <= set(names)
    priorities = [fmt.priority for fmt in formats]
    assert priorities == sorted(priorities, reverse=True)  # asked from the highest down
    assert len(set(priorities)) == len(priorities)
    assert names[-1] == "full"  # the last resort: any tensor file
    # the formats that share adapter_config.json with PEFT are asked before it
    assert names.index("mlx") < names.index("peft") and names.index("multilora") < names.index(
        "peft"
    )
    for fmt in formats:
        assert fmt.recognised_by, fmt.name
        assert all(option in LOADER_OPTIONS for option in fmt.options), fmt.name
    # every loader option is taken by some format, so no CLI flag is dead
    taken = {option for fmt in formats for option in fmt.options}
    assert taken == set(LOADER_OPTIONS)


def test_a_second_registration_or_a_shared_priority_is_refused():
    peft = registry.format_named("peft")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(peft)
    clash = registry.Format("other", lambda path: False, peft.open, priority=peft.priority)
    with pytest.raises(ValueError, match="share priority"):
        registry.register(clash)
    assert [fmt.name for fmt in spectra.formats()].count("peft") == 1


def test_registration_order_is_priority_not_import_order(monkeypatch, tmp_path):
    """A format registered later with a higher priority is asked first."""
    monkeypatch.setattr(registry, "FORMATS", list(registry.FORMATS))
    folder = tmp_path / "anything"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    first = registry.Format("first", lambda path: True, lambda *a, **k: None, priority=1000)
    registry.register(first)
    assert registry.claiming(folder) is first
    assert registry.FORMATS[0] is first


def test_load_refuses_an_option_the_format_does_not_take_naming_it(tmp_path):
    from spectra.examples.demo import write_demo_checkpoints

    demo = write_demo_checkpoints(tmp_path / "demo")
    with pytest.raises(FormatError, match=r"lora_alpha= does not apply to a peft checkpoint"):
        spectra.load(demo["lora"], lora_alpha=8.0)
    result = CliRunner().invoke(cli, ["inspect", str(demo["lora"]), "--lora-alpha", "8"])
    assert result.exit_code == 1
    assert "--lora-alpha does not apply to a peft checkpoint" in result.output
    with pytest.raises(FormatError, match=r"looks like a peft checkpoint, not full"):
        spectra.load(demo["lora"], format="full")


def test_the_command_line_loader_flags_are_the_declared_options():
    help_text = CliRunner().invoke(cli, ["analyze", "--help"]).output
    for option in LOADER_OPTIONS:
        assert option.flag in help_text
        first_words = " ".join(option.help.split()[:4])
        assert first_words in " ".join(help_text.split())


def test_an_argument_renders_for_its_caller():
    assert (str(BASE), BASE("DIR"), MODULES("k,v"), str(FORCE)) == (
        "base=",
        "base=DIR",
        "modules='k,v'",
        "force=True",
    )
    assert (str(EXACT), str(NO_CACHE)) == ('method="exact"', "cache=False")
    with command_line():
        assert (str(BASE), BASE("DIR"), MODULES("k,v"), str(FORCE)) == (
            "--base",
            "--base DIR",
            "--modules k,v",
            "--force",
        )
    with pytest.raises(ValueError, match="declared twice"):
        arguments.declare("base", "--base")


def test_a_message_is_made_for_where_it_is_raised():
    """The same bad selection: ``modules=`` in Python, ``--modules`` on the command line."""
    from spectra.selection import parse_modules

    with pytest.raises(SelectionError, match=r"\(modules=\)$"):
        parse_modules("k,x")
    with command_line(), pytest.raises(SelectionError, match=r"\(--modules\)$"):
        parse_modules("k,x")


def _flags_in_messages() -> dict[str, list[str]]:
    """Every ``--flag`` written literally in a string of the library (docstrings aside)."""
    found: dict[str, list[str]] = {}
    for path in SPECTRA.rglob("*.py"):
        if path.name == "arguments.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
            ):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+(?![\w])", node.value):
                    found.setdefault(flag, []).append(str(path.relative_to(SPECTRA)))
    return found


def test_no_message_writes_a_flag_by_hand():
    """A flag in a message is an ``Argument`` (rendered for its caller), never literal text."""
    written = _flags_in_messages()
    assert written == {}, f"flags written by hand (use spectra.arguments): {written}"


def test_every_flag_of_the_command_line_that_the_library_may_name_is_declared():
    """The flags messages may name are declared once, each with its Python spelling."""
    assert all(flag.startswith("--") for flag in ARGUMENTS)
    assert len({argument.flag for argument in ARGUMENTS.values()}) == len(ARGUMENTS)
    for argument in ARGUMENTS.values():
        assert re.fullmatch(r"[a-z_]+", argument.name), argument
