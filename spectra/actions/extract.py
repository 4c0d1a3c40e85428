"""A LoRA extracted from a full fine-tune: ΔW = W_tuned − W_base, truncated per module.

``extract(tuned, base, out, rank=r)`` or ``energy=q`` streams the fine-tune
module by module (the same ``LayerDelta``s ``analyze`` reads, one in memory
at a time) and writes a PEFT LoRA adapter of the base: for each module B, A
with B@A the best rank-r approximation of its ΔW (``truncation.dense_top``: a
full SVD when r is a large part of n, else a randomized range finder with
power iterations), scale 1 (``lora_alpha = r``). ``energy=q`` takes each
module's rank from its spectrum (spectra's σ, as ``analyze`` computes them):
the smallest keeping a share q of ‖ΔW‖_F².

Per module, ``extract.csv`` in the folder (and the result's rows) gives the
rank, the kept energy, the relative Frobenius error ‖ΔW − B@A‖_F / ‖ΔW‖_F
(computed, not assumed) and ``spectral_suboptimality``, an estimate of
‖ΔW − B@A‖₂ / σ_{r+1}: 1 means the truncation is the optimal one (above 1.01
gets a warning: the range finder missed part of the top-r subspace). The
estimate (``truncation.spectral_suboptimality``: Rayleigh–Ritz on a block
Krylov space of the residual) is never below 1 and within 0.002 of the
exact ratio on slowly decaying spectra, so a warning is not rounding.
Fused projections (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``) are refused:
a LoRA adapts the whole weight, which extract does not assemble yet.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..arguments import BASE, MODULES
from ..delta import Dense, LayerDelta
from ..errors import SpectraError
from ..loaders import Selection
from ..metrics import energy_rank
from ..report import Progress, csv_text
from ..svd import singular_values
from .lora_folder import check_replaceable_adapter, lora_config, write_lora_folder
from .suggest import module_path
from .truncation import check_amount, dense_top, lora_factors, spectral_suboptimality

__all__ = ["EXTRACT_COLUMNS", "SUBOPTIMAL", "Extracted", "extract"]

EXTRACT_COLUMNS = (
    "module",
    "layer",
    "role",
    "rank",
    "algorithm",
    "kept_energy",
    "relative_frobenius_error",
    "spectral_suboptimality",
)
SUBOPTIMAL = 1.01  # ‖ΔW − B@A‖₂ / σ_{r+1} above this gets a warning (the estimate: ±0.002)


@dataclass
class Extracted:
    """The adapter folder written, one row per module (``EXTRACT_COLUMNS``), warnings.

    Args:
        out: the adapter folder written.
        rows: one dict per module: ``EXTRACT_COLUMNS`` (rank, algorithm,
            kept energy, relative Frobenius error, spectral suboptimality).
        warnings: the selection's and the suboptimal truncations'; default none.
        executor: where it ran when on Ray (``{"name": "ray", "address", "nodes",
            "cpus", "gpus", "tasks"}``, as a report's ``meta["executor"]``),
            also written to the folder's ``extract.json``; None for a local run.

    Example::

        extracted = spectra.extract("full-ft/", "base/", "extracted/", rank=16)
        print(extracted.csv())
    """

    out: Path
    rows: list[dict[str, object]]
    warnings: list[str] = field(default_factory=list)
    executor: dict[str, object] | None = None

    def csv(self) -> str:
        """The rows as CSV text, as ``extract.csv`` in the folder holds them."""
        return csv_text(EXTRACT_COLUMNS, self.rows)


def extract(
    tuned: str | os.PathLike,
    base: str | os.PathLike,
    out: str | os.PathLike,
    rank: int | None = None,
    energy: float | None = None,
    *,
    modules: str | list[str] | None = "all",
    layers: str | list[int] | None = None,
    force: bool = False,
    progress: Progress | None = None,
    ray: bool | str | None = None,
) -> Extracted:
    """Write a PEFT LoRA adapter of ``base`` approximating the fine-tune ``tuned`` (docstring).

    For each module, B@A is the best rank-r approximation of ΔW = W_tuned −
    W_base (or the smallest rank keeping a share ``energy`` of ‖ΔW‖_F²),
    scale 1 (``lora_alpha = r``); one module is in memory at a time.

    Args:
        tuned: the full fine-tune (path or Hub id).
        base: the model it was tuned from.
        out: the folder to write: missing, empty, or one spectra wrote with
            ``force``.
        rank: the rank of every module; give this or ``energy``.
        energy: the share of ‖ΔW‖_F² each module keeps, in (0, 1]; give this
            or ``rank``.
        modules: roles, as ``analyze`` takes them; default ``"all"``.
        layers: layers, as ``analyze`` takes them; ``None`` (the default):
            every layer.
        force: replace an adapter folder spectra wrote; default False.
        progress: ``progress(done, total, module)`` after each module;
            ``None`` (the default): no calls.
        ray: each module as a Ray task (``analysis.distributed``): True or a
            cluster address; ``None`` (the default): here. The folder is the
            same as a local run's.

    Returns:
        An ``Extracted``: the folder and one row per module
        (``EXTRACT_COLUMNS``), also written to ``extract.csv``, and warnings.

    Raises:
        SpectraError: neither or both of ``rank`` and ``energy``, or out of
            range; ``tuned`` is not a full fine-tune; a fused projection is
            selected (and every error of ``spectra.load``).
        ReportExistsError: ``out`` is not free or lies inside what is read.

    Example::

        extracted = spectra.extract("full-ft/", "base/", "lora-r16/", rank=16, modules="q,v")
        worst = max(row["relative_frobenius_error"] for row in extracted.rows)
    """
    from ..analysis.sources import load

    check_amount(rank, energy)
    check_replaceable_adapter(out, force, (tuned, base))  # before the work
    checkpoint = load(tuned, base=base)
    if checkpoint.format != "full":
        raise SpectraError(
            f"{checkpoint.path}: extract reads full fine-tunes (with {BASE}); this is a "
            f"{checkpoint.format} checkpoint (spectra resize shrinks a LoRA adapter)"
        )
    selection = checkpoint.plan(modules, layers)
    names = [checkpoint.module_info(key).name for key in selection.keys]
    fused = sorted({name for name in names if names.count(name) > 1})
    if fused:
        raise SpectraError(
            f"{checkpoint.path}: {fused[0]} holds several roles in one fused weight; a LoRA adapts "
            "the whole weight, which extract does not assemble yet: leave those roles out "
            f"({MODULES})"
        )
    factors, ranks, rows, warnings = {}, {}, [], list(selection.warnings)
    if ray is not None and ray is not False:  # each module a Ray task (analysis.distributed)
        from ..analysis.distributed import Opened, run_modules

        opened = Opened(tuned, base, checkpoint.format, {})
        arguments = (rank, energy)
        per_key, executor = run_modules(
            opened, checkpoint, selection.keys, extract_key, arguments, ray, progress
        )
        extracted = [module for results in per_key for module in results]
    else:
        executor = None
        extracted = _extract_all(checkpoint, selection, rank, energy, progress)
    for module, (B, A), row, warning in extracted:
        factors[module], ranks[module] = (B, A), row["rank"]
        rows.append(row)
        warnings.extend([warning] if warning else [])
    config = lora_config(ranks, dict.fromkeys(ranks, 1.0), base_model=str(checkpoint.base))
    result = Extracted(Path(out), rows, warnings, executor)
    extra_files = {"extract.csv": result.csv()}
    if executor is not None:  # where it ran, as report.json's "executor" says for analyze
        extra_files["extract.json"] = json.dumps({"executor": executor}, indent=2) + "\n"
    write_lora_folder(
        out,
        factors,
        config,
        force=force,
        sources=(tuned, base),
        extra_files=extra_files,
        what="LoRA adapter (spectra extract)",
    )
    return result


def _extract_all(checkpoint, selection, rank, energy, progress):
    """Each module's extraction here, in turn, one ΔW in memory at a time."""
    for done, delta in enumerate(checkpoint.deltas_for(selection), start=1):
        extracted = extract_module(delta, rank, energy)
        del delta  # free this module's ΔW before the next is read
        if progress is not None:
            progress(done, len(selection.keys), extracted[0])
        yield extracted


def extract_key(checkpoint, key, rank: int | None, energy: float | None) -> list[tuple]:
    """A Ray task's work (``analysis.distributed``): ``extract_module`` of one (layer, role)."""
    selection = Selection(keys=(key,), warnings=())
    return [extract_module(delta, rank, energy) for delta in checkpoint.deltas_for(selection)]


def extract_module(
    delta: LayerDelta, rank: int | None, energy: float | None
) -> tuple[str, tuple[torch.Tensor, torch.Tensor], dict[str, object], str | None]:
    """One module's LoRA factors, its ``extract.csv`` row and its warning (None if none)."""
    assert isinstance(delta.update, Dense)
    matrix = delta.update.matrix.to(torch.float64)  # (d_out, d_in)
    norm = float(torch.linalg.matrix_norm(matrix))
    if energy is not None:
        sigma = singular_values(delta)  # (n,) descending, as analyze takes them
        wanted = energy_rank(sigma, energy)
    else:
        wanted = rank
    keep = max(1, min(wanted, min(matrix.shape)))
    top = dense_top(matrix, keep)
    B, A = lora_factors(top, 1.0)  # (d_out, k), (k, d_in)
    residual = float(torch.linalg.matrix_norm(matrix - B @ A))
    worse = spectral_suboptimality(matrix, top)
    module = module_path(delta.name)
    row = {
        "module": module,
        "layer": delta.layer,
        "role": delta.role,
        "rank": keep,
        "algorithm": top.algorithm,
        "kept_energy": 1 - (residual / norm) ** 2 if norm else 1.0,
        "relative_frobenius_error": residual / norm if norm else 0.0,
        "spectral_suboptimality": worse,
    }
    warning = None
    if not math.isnan(worse) and worse > SUBOPTIMAL:
        warning = (
            f"{module}: ‖ΔW − B@A‖₂ is {worse:.3f}× σ_(r+1); the range finder missed part "
            "of the top-r subspace"
        )
    return module, (B, A), row, warning
