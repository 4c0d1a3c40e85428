"""What a figure draws from reports: labels, shared roles, layers, and the trusted values.

No figure draws noise as data: a row's values at or below its floor (the
larger of its ``accuracy_floor`` and ``noise_floor`` columns) are left out.
A label, role or layer that the reports do not have is a ``SpectraError``,
never an empty panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..arguments import LABEL, LAYER, MODULES
from ..defaults import NORMALIZATIONS
from ..errors import SpectraError
from ..loaders.naming.architectures import ROLES
from ..report import Report

__all__ = [
    "NORMALIZATIONS",
    "common_modules",
    "floor_of",
    "labels_for",
    "layers_for",
    "normalized",
    "roles_for",
    "shared_roles",
    "trusted",
]



def labels_for(reports: Sequence[Report], labels: Sequence[str] | None) -> list[str]:
    if not reports:
        raise SpectraError("no reports to plot: pass at least one")
    if labels is None:
        return [
            Path(str(r.meta.get("source", {}).get("path", f"run {i}"))).name
            for i, r in enumerate(reports)
        ]
    if len(labels) != len(reports):
        raise SpectraError(
            f"{_count(len(labels), 'label')} for {_count(len(reports), 'report')}: give one "
            f"{LABEL} per report"
        )
    if len(set(labels)) != len(labels):
        raise SpectraError(f"labels must differ; got {', '.join(labels)} ({LABEL})")
    return list(labels)


def roles_for(reports: Sequence[Report], modules: Sequence[str] | None) -> list[str]:
    """The roles to draw: ``modules`` (each in every report), or (None, ``"all"``) all shared."""
    shared = shared_roles(reports)
    if modules is None or modules == "all":
        if not shared:
            raise SpectraError("these reports share no module role: nothing to draw side by side")
        return shared
    missing = [m for m in modules if m not in shared]
    if missing:
        raise SpectraError(
            f"no {', '.join(missing)} rows in every report; they share "
            f"{', '.join(shared) or 'no role'} ({MODULES})"
        )
    return list(dict.fromkeys(modules))


def shared_roles(reports: Sequence[Report]) -> list[str]:
    """The roles every report has rows for, in ``ROLES`` order (unknown roles last)."""
    present = [{row["role"] for row in report.rows} for report in reports]
    shared = set.intersection(*present) if present else set()
    return sorted(
        shared, key=lambda role: (ROLES.index(role) if role in ROLES else len(ROLES), role)
    )


def common_modules(
    reports: Sequence[Report], preferred: Sequence[str] | None = None
) -> list[str] | None:
    """The roles every report has (``preferred`` ones only, if given); ``None`` if none."""
    shared = shared_roles(reports)
    if preferred is not None:
        shared = [m for m in preferred if m in shared]
    return shared or None


def layers_for(reports: Sequence[Report], layer: int | str | None) -> list[int | None]:
    """The layers to draw for ``layer`` (None, an int or ``"grid"``), refusing absent ones."""
    layers = sorted({row["layer"] for report in reports for row in report.rows})
    if layer is None:
        return [None]
    if layer == "grid":
        return list(layers)
    if isinstance(layer, str) and not layer.isdigit():
        raise SpectraError(f"layer {layer!r} is neither a layer number nor grid ({LAYER})")
    if int(layer) not in layers:
        raise SpectraError(
            f"layer {layer} is not in these reports; they have layers "
            f"{', '.join(map(str, layers))} ({LAYER})"
        )
    return [int(layer)]


def normalized(sigma: np.ndarray, normalize: str) -> np.ndarray:
    if normalize not in NORMALIZATIONS:
        raise SpectraError(
            f"unknown normalisation {normalize!r}: expected {', '.join(NORMALIZATIONS)}"
        )
    if sigma.size == 0 or normalize == "none" or sigma[0] == 0:
        return sigma
    return sigma / (sigma[0] if normalize == "sigma1" else np.linalg.norm(sigma))


def floor_of(row: dict) -> float:
    """The σ below which a row's values are noise: the larger of its two floors.

    Reports saved before the floors were recorded have neither column: 0
    then, and only exact zeros are left out.
    """
    return max(float(row.get("accuracy_floor") or 0.0), float(row.get("noise_floor") or 0.0))


def trusted(report: Report, row: dict) -> np.ndarray:
    """A row's σ above its floor (descending): what a figure may draw as data."""
    sigma = report.spectrum_of(row)
    return sigma[sigma > max(floor_of(row), 0.0)]


def _count(number: int, noun: str) -> str:
    """``1 report``, ``2 reports``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
