"""Rank suggestions: per module, the rank that keeps a share of ‖ΔW‖_F², as PEFT patterns.

``suggest(source, energy=0.9)`` reads a report folder or analyses a
checkpoint (every role, ``modules="all"``), and for each module gives the
smallest k with Σ_{i≤k} σ_i² ≥ energy · Σσ² (``metrics.energy_rank``, at most
the numerical rank). ``Suggestion.config()`` is a ``LoraConfig``-ready dict:
``r`` (the most common suggestion), ``rank_pattern`` for the others, keyed by
the module's full path, and ``lora_alpha`` / ``alpha_pattern`` chosen so that
each module keeps the scale it was trained with (α/r, or α/√r for rsLoRA);
for a full fine-tune, which has no scale, α = r (scale 1) and the config says
so in ``suggestion.warnings``::

    from peft import LoraConfig
    LoraConfig(**spectra.suggest("adapter/", energy=0.9).config())

A module that several roles share (GPT-2's fused ``c_attn``) takes the
largest of its roles' ranks: one LoRA serves all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import ENERGY, PER_HEAD
from ..errors import SpectraError
from ..io.atomic import check_output
from ..metrics import energy_rank
from ..report import Report, is_report, row_key
from .lora_folder import lora_config

__all__ = ["Suggestion", "check_suggestion_target", "module_path", "suggest"]

# The fields ``Suggestion.config()`` holds: a JSON file of these alone is one ``save`` wrote.
CONFIG_FIELDS = ("r", "lora_alpha", "use_rslora", "target_modules", "rank_pattern", "alpha_pattern")


def module_path(name: str) -> str:
    """The module a report row's tensor belongs to, as PEFT's patterns name it."""
    return name.removeprefix("base_model.model.").removesuffix(".weight")


@dataclass
class Suggestion:
    """Per-module ranks that keep ``energy`` of ‖ΔW‖_F², and the config that sets them.

    What ``suggest`` returns; ``config()`` is a ``LoraConfig``-ready dict and
    ``save(path)`` writes it as JSON.

    Args:
        energy: the share of ‖ΔW‖_F² each module keeps, in (0, 1].
        rows: one dict per module: ``module`` (its path), ``layer``,
            ``roles``, ``rank`` (now), ``suggested_rank``, ``kept_energy``
            and ``scale`` (the trained one, 1 for a full fine-tune).
        rslora: whether the scale is α/√r (rsLoRA); default False (α/r).
        warnings: what the config depends on; default none.
        sources: the paths read, inside which ``save`` never writes; default none.

    Example:
        >>> rows = [
        ...     {"module": "layers.0.v_proj", "suggested_rank": 4, "scale": 2.0},
        ...     {"module": "layers.1.v_proj", "suggested_rank": 8, "scale": 2.0},
        ...     {"module": "layers.2.v_proj", "suggested_rank": 4, "scale": 2.0},
        ... ]
        >>> config = Suggestion(0.9, rows).config()
        >>> config["r"], config["lora_alpha"], config["rank_pattern"], config["alpha_pattern"]
        (4, 8.0, {'layers.1.v_proj': 8}, {'layers.1.v_proj': 16.0})
    """

    energy: float
    rows: list[dict[str, object]]  # module, layer, roles, rank now, suggested rank, kept share
    rslora: bool = False
    warnings: list[str] = field(default_factory=list)
    sources: tuple[str | os.PathLike, ...] = ()  # what was read: ``save`` never writes inside it

    def config(self) -> dict[str, object]:
        """``LoraConfig(**config)``: r, lora_alpha, use_rslora, target_modules, the patterns.

        ``r`` is the most common suggested rank, ``rank_pattern`` holds the
        others by module path, and ``lora_alpha`` / ``alpha_pattern`` keep each
        module's trained scale (α = s·r, or s·√r with rsLoRA).

        Returns:
            A dict of ``r``, ``lora_alpha``, ``use_rslora``, ``target_modules``,
            ``rank_pattern`` and ``alpha_pattern``.

        Example::

            from peft import LoraConfig
            LoraConfig(**spectra.suggest("adapter/", energy=0.9).config())
        """
        ranks = {row["module"]: row["suggested_rank"] for row in self.rows}
        scales = {row["module"]: row["scale"] for row in self.rows}
        full = lora_config(ranks, scales, rslora=self.rslora)
        return {key: full[key] for key in CONFIG_FIELDS}

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write ``config()`` as JSON to ``path``.

        An existing file is replaced only with ``force``, and only when it is a
        suggestion spectra wrote (a JSON object of ``config()``'s fields alone):
        never a PEFT ``adapter_config.json`` or any other file, and never a
        file inside the adapter, checkpoint or report folder suggested from.

        Args:
            path: the JSON file to write (its folder is made if missing).
            force: replace a suggestion spectra wrote there; default False.

        Returns:
            ``path``, as a ``Path``.

        Raises:
            ReportExistsError: ``path`` exists and is not replaceable (see
                above), or lies inside what was read.

        Example::

            spectra.suggest("adapter/", energy=0.95).save("ranks.json")
        """
        path = Path(path)
        check_suggestion_target(path, force, self.sources)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return path


def check_suggestion_target(
    path: str | os.PathLike, force: bool, sources: tuple[str | os.PathLike, ...] = ()
) -> None:
    """Refuse ``path`` unless a suggestion may be written there (``io.atomic.check_output``)."""
    check_output(
        path, force, "rank suggestion (JSON)", _is_suggestion, folder=False, sources=sources
    )


def _is_suggestion(path: Path) -> bool:
    """Whether ``path`` holds what ``Suggestion.save`` writes, and nothing else."""
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(fields, dict) and set(fields) == set(CONFIG_FIELDS)


def suggest(
    source: str | os.PathLike | Report,
    energy: float = 0.9,
    base: str | os.PathLike | None = None,
    **analysis: object,
) -> Suggestion:
    """Suggest per-module ranks for ``source`` (a report, its folder, or a checkpoint).

    ``energy`` ∈ (0, 1] is the share of ‖ΔW‖_F² to keep. A checkpoint is
    analysed first (``spectra.analyze(source, base, modules="all",
    **analysis)``); a report is used as saved.

    Args:
        source: a ``Report``, a report folder, or a checkpoint (path or Hub id).
        energy: the share of ‖ΔW‖_F² to keep, in (0, 1]; default 0.9.
        base: the base model, for a checkpoint that needs one; ``None`` (the
            default): none.
        **analysis: ``analyze``'s other arguments (``modules`` defaults to
            ``"all"``; ``layers``, ``device``, loader options, …).

    Returns:
        A ``Suggestion``: one row per module with its rank now and the
        suggested one, ``config()`` and ``warnings``.

    Raises:
        SpectraError: ``energy`` outside (0, 1], or a report analysed per head
            (and every error of ``analyze``).

    Example::

        suggestion = spectra.suggest("adapter/", energy=0.9)
        suggestion.config()["rank_pattern"]
        suggestion.save("ranks.json")
    """
    if not 0 < energy <= 1:
        raise SpectraError(f"energy must be in (0, 1], got {energy} ({ENERGY})")
    if isinstance(source, Report):
        report = source
    elif is_report(source):
        report = Report.load(source)
    else:
        from ..analysis import analyze

        report = analyze(source, base, **({"modules": "all"} | analysis))
    if any(row.get("head") is not None for row in report.rows):
        raise SpectraError(
            f"rank suggestions are per module: analyse without {PER_HEAD} (one row per module)"
        )
    scales = report.meta.get("scales", {})
    by_module: dict[str, dict[str, object]] = {}
    spectra_of: dict[str, list] = {}  # the σ of each role a module serves
    for row in report.rows:
        key = row_key(row)
        sigma = report.spectra[key]
        keep = min(energy_rank(sigma, energy), int(row["numerical_rank"])) if len(sigma) else 0
        scale = scales.get(key, {}).get("scale")
        path = module_path(str(row["name"]))
        entry = by_module.setdefault(
            path,
            {
                "module": path,
                "layer": row["layer"],
                "roles": [],
                "rank": row.get("adapter_rank"),
                "suggested_rank": 1,
                "scale": 1.0 if scale is None else float(scale),
            },
        )
        entry["roles"].append(row["role"])
        entry["suggested_rank"] = max(int(entry["suggested_rank"]), keep)
        spectra_of.setdefault(path, []).append(sigma)
    for path, entry in by_module.items():  # the share each role keeps at the module's rank
        shares = []
        for sigma in spectra_of[path]:
            total = float((sigma**2).sum())
            kept = float((sigma[: int(entry["suggested_rank"])] ** 2).sum())
            shares.append(kept / total if total else 1.0)
        entry["kept_energy"] = min(shares)
    variant = str(report.meta.get("source", {}).get("variant", ""))
    notes = []
    if not scales:
        notes.append(
            "no trained scale (a full fine-tune): lora_alpha = r, so each module's scale is 1"
        )
    read = tuple(p for p in (None if isinstance(source, Report) else source, base) if p is not None)
    return Suggestion(energy, list(by_module.values()), variant.startswith("rsLoRA"), notes, read)
