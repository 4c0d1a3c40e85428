"""Parameter types shared by the commands: ``--layers 0-3,7``, ``--modules k,v``, ``--top 8``."""

from __future__ import annotations

import click

from spectra.loaders import ROLES


class LayerList(click.ParamType):
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``."""

    name = "layers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        layers: set[int] = set()
        try:
            for part in str(value).split(","):
                part = part.strip()
                if "-" in part:
                    start, stop = (int(p) for p in part.split("-", 1))
                    if start > stop or start < 0:
                        raise ValueError
                    layers.update(range(start, stop + 1))
                else:
                    if int(part) < 0:
                        raise ValueError
                    layers.add(int(part))
        except ValueError:
            self.fail(f"{value!r} is not a layer list like 0-3,7 (non-negative, ranges low-high)")
        return sorted(layers)


class ModuleList(click.ParamType):
    """``"k,v"`` → ``["k", "v"]``; ``"all"`` → ``"all"``: every role the checkpoint has."""

    name = "modules"

    def convert(self, value, param, ctx):
        if isinstance(value, list) or value == "all":
            return value
        roles = [part.strip() for part in str(value).split(",") if part.strip()]
        if roles == ["all"]:
            return "all"
        unknown = [role for role in roles if role not in ROLES]
        if unknown or not roles:
            self.fail(
                f"unknown module role(s) {', '.join(unknown) or repr(value)}: "
                f"expected a comma list of {', '.join(ROLES)}, or all"
            )
        return list(dict.fromkeys(roles))


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
