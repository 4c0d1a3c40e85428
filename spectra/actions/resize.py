"""Resizing a LoRA adapter: a truncated-SVD copy from the exact factored core, no merge.

``resize(adapter, out, rank=r)`` or ``energy=q`` writes a PEFT LoRA folder
whose every module holds the best rank-r' approximation of its ΔW = s·B@A
(Eckart–Young; ``truncation.factored_top``: QR of B and Aᵀ, SVD of the r × r
core), r' = min(r, numerical rank) or the smallest rank keeping a share q of
‖ΔW‖_F². Each module keeps its scale s (α' = s·r', or s·√r' with rsLoRA), so
the resized adapter behaves as the original at any merge weight; ranks that
differ go in ``rank_pattern``. The errors are exact, from the core's full
spectrum: spectral σ_{r'+1}, Frobenius √(Σ_{i>r'} σ_i²), both also over ‖ΔW‖.

Read: PEFT LoRA and rsLoRA adapters (any ``rank_pattern`` / ``alpha_pattern``),
every adapted module, mapped to a role or not. Copied unchanged (listed in
``resize.csv`` and the result's warnings): ``lora_B`` biases and
``modules_to_save`` weights. Refused with the reason: DoRA (its magnitude is
fitted to B@A's row norms), AdaLoRA, multi-head, VeRA, LoHa, LoKr and
adapters read with ``initial=`` (no single B@A per module to truncate).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SpectraError
from ..loaders.methods import lora
from ..metrics import energy_rank
from ..report import csv_text
from .lora_folder import check_replaceable_adapter, lora_config, write_lora_folder
from .truncation import check_amount, factored_top, lora_factors

__all__ = ["RESIZE_COLUMNS", "Resized", "resize"]

RESIZE_COLUMNS = (
    "module",
    "rank",
    "new_rank",
    "kept_energy",
    "spectral_error",
    "relative_spectral_error",
    "frobenius_error",
    "relative_frobenius_error",
)
_CONFIG_FIELDS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules")


@dataclass
class Resized:
    """The folder written, one row per module (``RESIZE_COLUMNS``), and what was copied as is.

    Args:
        out: the adapter folder written.
        rows: one dict per module: ``RESIZE_COLUMNS`` (ranks, kept energy,
            spectral and Frobenius errors).
        warnings: what was copied unchanged; default none.

    Example::

        resized = spectra.resize("adapter/", "adapter-r8/", rank=8)
        print(resized.csv())
    """

    out: Path
    rows: list[dict[str, object]]
    warnings: list[str] = field(default_factory=list)

    def csv(self) -> str:
        """The rows as CSV text, as ``resize.csv`` in the folder holds them."""
        return csv_text(RESIZE_COLUMNS, self.rows)


def resize(
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    rank: int | None = None,
    energy: float | None = None,
    *,
    force: bool = False,
    adapter_name: str | None = None,
) -> Resized:
    """Write the truncated-SVD copy of a LoRA adapter to ``out`` (module docstring).

    Each module keeps the best rank-r' approximation of its ΔW = s·B@A
    (r' = min(rank, numerical rank), or the smallest rank keeping a share
    ``energy`` of ‖ΔW‖_F²) and its scale s; ``lora_B`` biases and
    ``modules_to_save`` weights are copied unchanged.

    Args:
        adapter: a PEFT LoRA or rsLoRA adapter (path or Hub id).
        out: the folder to write: missing, empty, or one spectra wrote with
            ``force``.
        rank: the rank to keep; give this or ``energy``.
        energy: the share of ‖ΔW‖_F² to keep, in (0, 1]; give this or ``rank``.
        force: replace an adapter folder spectra wrote; default False.
        adapter_name: a PEFT adapter by name (saved in a sub-folder, or one of
            several in one file), as ``load``'s ``adapter``; ``None`` (the
            default): the folder's own.

    Returns:
        A ``Resized``: the folder and one row per module (``RESIZE_COLUMNS``),
        also written to ``resize.csv``.

    Raises:
        SpectraError: neither or both of ``rank`` and ``energy``, or out of
            range; an adapter that is not a plain LoRA (DoRA, AdaLoRA,
            multi-head, VeRA, LoHa, LoKr, ``initial=``).
        ReportExistsError: ``out`` is not free or lies inside the adapter.

    Example::

        resized = spectra.resize("adapter/", "adapter-95/", energy=0.95)
        for row in resized.rows:
            print(row["module"], row["rank"], row["new_rank"], row["kept_energy"])
    """
    from ..analysis.sources import load

    check_amount(rank, energy)
    check_replaceable_adapter(out, force, (adapter,))  # before the work
    checkpoint = load(adapter, adapter=adapter_name)
    _check_resizable(checkpoint)
    config = checkpoint.config
    factors, ranks, scales, rows = {}, {}, {}, []
    for adapted in checkpoint.adapted.values():
        checkpoint.rebuild.resolve_scale(checkpoint, adapted)  # also for unmapped modules
        A, B = checkpoint.need(adapted, "lora_A", "lora_B")  # (r, d_in), (d_out, r)
        update = lora.factored(B, A, adapted.scale)
        every = factored_top(update, adapted.rank)  # all directions above the numerical floor
        sigma = every.S  # descending
        wanted = energy_rank(sigma, energy) if energy is not None else rank
        keep = max(1, min(wanted, adapted.rank))
        top = every.first(keep)
        new_B, new_A = lora_factors(top, adapted.scale)
        if top.rank < keep:  # fewer directions than asked: pad with zero directions
            new_B = torch.cat([new_B, new_B.new_zeros(new_B.shape[0], keep - top.rank)], dim=1)
            new_A = torch.cat([new_A, new_A.new_zeros(keep - top.rank, new_A.shape[1])], dim=0)
        module = adapted.module.removeprefix("base_model.model.")
        factors[module] = (new_B, new_A)
        ranks[module] = keep
        scales[module] = adapted.scale
        rows.append(_errors(module, adapted.rank, keep, sigma))
    copied = _copied_tensors(checkpoint)
    kept_fields = {k: v for k, v in config.items() if k not in _CONFIG_FIELDS}
    new_config = lora_config(
        ranks, scales, rslora=bool(config.get("use_rslora")), extra=kept_fields
    )
    dtype = (
        torch.float64
        if checkpoint.store.info(next(iter(checkpoint.adapted.values())).parts["lora_A"]).dtype
        == torch.float64
        else torch.float32
    )
    result = Resized(Path(out), rows)
    if copied:
        result.warnings.append(
            f"{len(copied)} tensors copied unchanged (lora_B biases, modules_to_save): "
            + ", ".join(sorted(copied)[:4])
            + (" …" if len(copied) > 4 else "")
        )
    write_lora_folder(
        out,
        factors,
        new_config,
        dtype=dtype,
        force=force,
        sources=(adapter,),
        extra_tensors=copied,
        extra_files={"resize.csv": result.csv()},
        what="LoRA adapter (spectra resize)",
    )
    return result


def _check_resizable(checkpoint) -> None:
    """Only a plain LoRA / rsLoRA has one B@A per module to truncate."""
    from ..loaders.peft import PeftCheckpoint

    if not isinstance(checkpoint, PeftCheckpoint):
        raise SpectraError(
            f"{checkpoint.path}: resize reads PEFT LoRA adapters; this is a {checkpoint.format} "
            "checkpoint (for a full fine-tune, spectra extract makes a LoRA of it)"
        )
    config = checkpoint.config
    why = None
    if checkpoint.peft_type != "LORA":
        why = f"peft_type {checkpoint.peft_type} has no single B@A per module"
    elif config.get("use_dora"):
        why = (
            "DoRA's magnitude vector is fitted to B@A's row norms; a truncated B@A needs a new one"
        )
    elif checkpoint.rebuild.name(checkpoint).startswith(("multi-head", "HydraLoRA", "R-LoRA")) or (
        config.get("lora_nums")
    ):
        why = "a multi-head adapter has several B per A"
    elif checkpoint.initial is not None:
        why = "with initial=, ΔW = s·(B@A − B₀@A₀) is not one adapter's B@A"
    if why is not None:
        raise SpectraError(
            f"{checkpoint.config_path}: resize writes plain LoRA adapters and cannot resize this "
            f"one: {why}"
        )


def _copied_tensors(checkpoint) -> dict[str, torch.Tensor]:
    """Tensors of the file no ΔW uses that a resized adapter still needs, as stored."""
    kept = {}
    for name, reason in checkpoint.not_analysed():
        if "bias of lora_B" in reason or "modules_to_save" in reason:
            kept[name] = checkpoint.store.load(name).clone()
    return kept


def _errors(module: str, rank: int, keep: int, sigma: torch.Tensor) -> dict[str, object]:
    """Exact errors of keeping ``keep`` of the σ of one module (Eckart–Young)."""
    energies = sigma**2
    total = float(energies.sum())
    dropped = float(energies[keep:].sum())
    spectral = float(sigma[keep]) if len(sigma) > keep else 0.0
    sigma_1 = float(sigma[0]) if len(sigma) else 0.0
    norm = math.sqrt(total)
    return {
        "module": module,
        "rank": rank,
        "new_rank": keep,
        "kept_energy": 1 - dropped / total if total else 1.0,
        "spectral_error": spectral,
        "relative_spectral_error": spectral / sigma_1 if sigma_1 else 0.0,
        "frobenius_error": math.sqrt(dropped),
        "relative_frobenius_error": math.sqrt(dropped) / norm if norm else 0.0,
    }
