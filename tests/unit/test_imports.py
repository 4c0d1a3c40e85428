"""The flow stays one-way: each part of the library imports only the parts below it.

Read from the source with ``ast`` (nothing is imported): every import at a
module's top level must go to a layer at or below its own (``LAYERS``, in
the order the data flows); an import inside a function (done when it runs)
may go up only where ``LAZY_UP`` says why. Inside ``loaders/`` the same holds
for its parts (``LOADER_LAYERS``): storage, naming and the formulas know no
format, and a format family imports no other family.
"""

from __future__ import annotations

import ast
from pathlib import Path

import spectra

SPECTRA = Path(spectra.__file__).resolve().parent

# Lowest first; a unit may import its own layer and those below it.
LAYERS = [
    {"errors", "defaults"},
    {"arguments"},
    {"selection", "display", "io"},
    {"delta", "metrics"},
    {"loaders", "svd"},
    {"subspace", "report"},
    {"plot", "html"},
    {"analysis"},
    {"actions", "integrations", "examples"},
    {"spectra"},  # the package itself: its public names, imported on first use
]
# Imports inside functions that go up a layer, each a convenience the lower layer offers.
LAZY_UP = {
    ("report", "html"): "Report.to_html writes the page",
}
LOADER_LAYERS = [
    {"methods", "naming"},  # the formulas; the architecture and diffusion names
    {"storage"},  # reading tensors: files, shards, pickles, training layouts, model folders
    {"base", "info"},  # Checkpoint and the selection rules; what describe() reports
    {"registry", "adapter"},  # the one door; what adapters share
    {"full", "multilora", "peft", "lowrank", "image"},  # the families
    {"loaders"},  # load() and detect_format()
]
# A family that builds on another family, and why.
FAMILY_EDGES = {
    ("lowrank", "full"): "MLX-LM's full fine-tunes are read as full fine-tunes",
    ("multilora", "peft"): "spectra's MultiLoRA folder has a PEFT adapter_config.json",
}
# What the loaders may import from the rest of the library: they see paths and make deltas.
LOADERS_MAY_IMPORT = {"errors", "arguments", "selection", "delta"}


def _unit(module: str, depth: int) -> str | None:
    parts = module.split(".")
    if parts[0] != "spectra":
        return None
    return ".".join(parts[1 : 1 + depth]) if len(parts) > 1 else "spectra"


def _statements(nodes, in_function: bool):
    """Every import statement under ``nodes``, with whether it runs only inside a function.

    Imports under ``if TYPE_CHECKING:`` are for type checkers and left out.
    """
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(node.orelse, in_function)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function
        else:
            inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from _statements(ast.iter_child_nodes(node), inside)


def _imports():
    """(importing module, imported module, at top level?) for every import in spectra/."""
    for path in SPECTRA.rglob("*.py"):
        parts = list(path.relative_to(SPECTRA.parent).with_suffix("").parts)
        package = parts[:-1]  # a module's package; for __init__.py, the package itself
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, in_function in _statements(tree.body, False):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                    targets = (
                        [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                    )
                else:
                    targets = [node.module or ""]
            else:
                targets = [alias.name for alias in node.names]
            for target in targets:
                yield module, target, not in_function


def _layer(unit: str, layers: list[set[str]]) -> int:
    return next(i for i, layer in enumerate(layers) if unit in layer)


def test_every_unit_of_the_library_has_a_layer():
    units = {_unit(module, 1) for module, _, _ in _imports()}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_the_library_imports_only_downwards():
    wrong = []
    for module, target, top in _imports():
        a, b = _unit(module, 1), _unit(target, 1)
        if b is None or a == b or b == "__version__":
            continue
        if _layer(b, LAYERS) > _layer(a, LAYERS) and (top or (a, b) not in LAZY_UP):
            wrong.append(f"{module} imports {target}{'' if top else ' (inside a function)'}")
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(set(wrong)))


def test_the_loaders_see_paths_and_make_deltas():
    wrong = [
        f"{module} imports {target}"
        for module, target, _ in _imports()
        if _unit(module, 1) == "loaders"
        and _unit(target, 1) not in (None, "loaders", *LOADERS_MAY_IMPORT)
    ]
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_inside_the_loaders_storage_naming_and_formulas_know_no_format():
    wrong = []
    for module, target, _ in _imports():
        if _unit(module, 1) != "loaders" or _unit(target, 1) != "loaders":
            continue
        a = [*_unit(module, 2).split("."), "loaders"][1]  # "loaders" for the package itself
        b = [*_unit(target, 2).split("."), "loaders"][1]
        if a == b:
            continue
        if _layer(b, LOADER_LAYERS) > _layer(a, LOADER_LAYERS):
            wrong.append(f"{module} imports {target}")
        elif _layer(a, LOADER_LAYERS) == _layer(b, LOADER_LAYERS) == 4 and (a, b) not in (
            FAMILY_EDGES
        ):
            wrong.append(f"{module} imports {target} (one family from another)")
    assert not wrong, "\n".join(sorted(set(wrong)))
