"""What needs the base weights W0, per module, computed while a checkpoint streams.

``analyze(..., esd=True)`` adds the power-law exponent α of the eigenvalue
spectrum of ``WᵀW`` for ``W = W0`` and ``W = W0 + ΔW``, fitted as
WeightWatcher 0.7.7 fits its default ``alpha`` (``spectra.metrics.esd``):
``alpha_base``, ``xmin_base``, ``ks_base``, ``alpha_tuned``, ``xmin_tuned``,
``ks_tuned``. ``analyze(..., intruders=True)`` adds ``intruder_dimensions``:
how many of the top ``intruder_top`` left singular vectors of ``W0 + ΔW``
have ``max |cos| < intruder_eps`` with every left singular vector of W0
(``spectra.subspace.count_intruders``; Shuttleworth et al. 2024).

Each module is measured while its ΔW is in memory (``WeightMeasures`` is the
``after`` step of ``analyze``'s stream): W0 is read for that module only
(``Checkpoint.base_weight``), ``W0 + ΔW`` is formed on the run's device in
float64, and both are decomposed there — two dense decompositions per module
on top of the σ of ΔW. With intruders, one float64 SVD of each gives the
vectors and the singular values the α fit takes (λ = σ²); with ``esd`` alone,
σ comes from ``svd.singular_values`` with the run's ``method`` (the Gram
eigenvalues by default). Nothing is computed twice.

A module whose W0 is not available (a mixture-of-experts role, a head of a
per-head analysis, a base module of another shape) keeps these columns
empty and is named in one warning per reason; a spectrum too short for the
fit keeps its α empty, named with why. A checkpoint with no base at all is
refused before any work (``MissingBaseError``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..arguments import BASE, ESD, INTRUDER_EPS, INTRUDER_TOP, INTRUDERS, PER_HEAD
from ..defaults import INTRUDER_EPS as DEFAULT_EPS
from ..defaults import INTRUDER_TOP as DEFAULT_TOP
from ..delta import Dense, Factored, LayerDelta, spectrum_key
from ..errors import MissingBaseError, SpectraError
from ..loaders import Checkpoint
from ..metrics.esd import EIGENVALUE_FLOOR, MIN_EIGENVALUES, esd_eigenvalues, power_law_fit
from ..report import Report
from ..report.rows import WEIGHT_COLUMNS
from ..subspace import count_intruders
from ..svd import singular_values
from .sources import cached_base

__all__ = ["ESD_COLUMNS", "WeightMeasures", "check_weight_options", "with_base"]

ESD_COLUMNS = WEIGHT_COLUMNS[:6]  # alpha, xmin and KS distance of W0, then of W0 + ΔW
_SHOWN_PER_REASON = 8  # modules named in a warning before "and N more"


def check_weight_options(
    esd: bool, intruders: bool, top: int, eps: float, options: dict[str, object]
) -> None:
    """Refuse, before any work, what the W0 measures cannot take."""
    if not intruders and (top != DEFAULT_TOP or eps != DEFAULT_EPS):
        raise SpectraError(
            f"{INTRUDER_TOP} and {INTRUDER_EPS} set how intruders are counted: add {INTRUDERS}"
        )
    if intruders and (top < 1 or not 0 < eps <= 1):
        raise SpectraError(
            f"intruder top ({top}) must be at least 1 and the intruder threshold ({eps}) in "
            f"(0, 1] ({INTRUDER_TOP}, {INTRUDER_EPS})"
        )
    if (esd or intruders) and options.get("per_head"):
        raise SpectraError(
            f"{_asked(esd, intruders)} measure{'s' * (esd != intruders)} W0 + ΔW, the whole "
            f"module: a head's ΔW alone is not a fine-tuned weight; drop {PER_HEAD}"
        )


def with_base(
    checkpoint: Checkpoint,
    esd: bool,
    intruders: bool,
    reopen: Callable[[Path], Checkpoint] | None = None,
) -> tuple[Checkpoint, str | None]:
    """``checkpoint``, opened with a base if it has none: its config's, when local or cached.

    A PEFT adapter opened without ``base`` reads none unless its ΔW needs one;
    the W0 measures do, so the config's ``base_model_name_or_path`` is looked
    up as for DoRA (a local folder or the Hub cache, never a download) and the
    checkpoint is opened again with it (``reopen``), and a note says so.
    Without any base, ``MissingBaseError`` names the base argument.
    """
    if checkpoint.base is not None:
        return checkpoint, None
    named = checkpoint.details().get("base_model_name_or_path")
    found = cached_base(named) if reopen is not None else None
    if found is not None and reopen is not None:
        note = f"W0 read from the config's base_model_name_or_path {named!r} ({found})"
        return reopen(found), note
    config = (
        f"; its config names {named!r}, which is neither a local model folder nor in the "
        "Hugging Face cache"
        if named
        else ""
    )
    raise MissingBaseError(
        f"{checkpoint.path}: {_asked(esd, intruders)} need{'s' * (esd != intruders)} the base "
        f"model's weights W0 and no base is known{config}: pass {BASE('DIR')}"
    )


class WeightMeasures:
    """The W0 columns of each module, taken while its ΔW is in memory.

    Called as ``measure(checkpoint, delta)`` for every delta of the stream;
    ``fill(report)`` then writes the columns into the report's rows (every
    asked column on every row, None where it could not be measured), adds
    the warnings and records the settings in ``meta["weights"]``.

    Args:
        esd: measure α of W0 and W0 + ΔW (``ESD_COLUMNS``).
        intruders: count intruder dimensions (``intruder_dimensions``).
        device: where to decompose (the run's device).
        method: ``"fast"`` or ``"exact"``, for σ of W when no vectors are taken.
        top: intruders are sought among this many top vectors of W0 + ΔW.
        eps: the ``|cos|`` under which a vector is an intruder.
        threads: on the CPU, the torch threads to decompose on (the stream's
            ``threads // jobs``: these run beside its workers, and more
            threads than cores stall every one of them); ``None``: unchanged.
            ``close()`` gives the thread count back.

    Example::

        measures = WeightMeasures(esd=True, intruders=False, device=torch.device("cpu"))
        for delta in checkpoint.deltas_for(selection):
            measures(checkpoint, delta)
    """

    def __init__(
        self,
        esd: bool,
        intruders: bool,
        device: torch.device,
        method: str = "fast",
        top: int = DEFAULT_TOP,
        eps: float = DEFAULT_EPS,
        threads: int | None = None,
    ):
        self.esd, self.intruders = esd, intruders
        self.threads, self._threads_before = threads, torch.get_num_threads()
        self.device, self.method = device, method
        self.top, self.eps = top, eps
        self.columns = [
            *(ESD_COLUMNS if esd else ()),
            *(("intruder_dimensions",) if intruders else ()),
        ]
        self.values: dict[str, dict[str, object]] = {}  # spectrum key → column → value
        self.missing: dict[str, list[str]] = {}  # reason → keys left without W0 measures
        self.notes: list[str] = []  # where W0 came from, if not given; each α left missing

    def __call__(self, checkpoint: Checkpoint, delta: LayerDelta, *_: object) -> None:
        key = spectrum_key(delta.layer, delta.role, delta.head, delta.expert)
        self.values[key] = values = dict.fromkeys(self.columns)
        W0, why = _base_of(checkpoint, delta)
        if W0 is None:
            self.missing.setdefault(why, []).append(key)
            return
        if self.threads is not None:  # set each time: the stream's workers set theirs
            torch.set_num_threads(self.threads)
        W0 = W0.to(self.device, torch.float64)  # (d_out, d_in)
        tuned = W0 + _dense(delta.update, self.device)  # (d_out, d_in)
        if self.intruders:  # one SVD of each gives the vectors and σ
            U0, S0, _ = torch.linalg.svd(W0, full_matrices=False)  # (d_out, n), (n,)
            U1, S1, _ = torch.linalg.svd(tuned, full_matrices=False)  # (d_out, n), (n,)
            values["intruder_dimensions"] = count_intruders(U1, U0, self.top, self.eps)
            del U0, U1
        elif self.esd:
            S0 = singular_values(Dense(W0), self.device, self.method)  # (n,)
            S1 = singular_values(Dense(tuned), self.device, self.method)  # (n,)
        del W0, tuned
        if self.esd:
            for side, sigma in (("base", S0), ("tuned", S1)):
                self._fit(key, side, sigma, values)

    def _fit(self, key: str, side: str, sigma: torch.Tensor, values: dict[str, object]) -> None:
        try:
            fit = power_law_fit(esd_eigenvalues(sigma.cpu()))
        except ValueError as exc:  # too few eigenvalues, or all equal: α stays missing
            self.notes.append(f"{key}: alpha_{side} left missing: {exc}")
            return
        values[f"alpha_{side}"] = fit.alpha
        values[f"xmin_{side}"] = fit.xmin
        values[f"ks_{side}"] = fit.ks

    def close(self) -> None:
        """Give back the thread count found when the measures were made."""
        if self.threads is not None:
            torch.set_num_threads(self._threads_before)

    def fill(self, report: Report) -> None:
        """Write the measured columns into ``report``'s rows, its warnings and its meta."""
        for row in report.rows:
            row.update(self.values.get(row.key, dict.fromkeys(self.columns)))
        warnings = report.meta.setdefault("warnings", [])
        for why, keys in self.missing.items():
            named = ", ".join(keys[:_SHOWN_PER_REASON])
            more = (
                f" and {len(keys) - _SHOWN_PER_REASON} more"
                if len(keys) > _SHOWN_PER_REASON
                else ""
            )
            warnings.append(f"{', '.join(self.columns)} left missing for {named}{more}: {why}")
        warnings.extend(self.notes)
        report.meta["weights"] = self.settings()

    def settings(self) -> dict[str, object]:
        """What was measured and how, for ``meta["weights"]``."""
        settings: dict[str, object] = {"columns": list(self.columns)}
        if self.esd:
            settings["esd"] = (
                "eigenvalues λ = σ² of W0 and W0 + ΔW (unnormalised), power law fitted as "
                f"WeightWatcher 0.7.7's default alpha: λ > {EIGENVALUE_FLOOR:g}, xmin by the "
                f"least KS distance, at least {MIN_EIGENVALUES} eigenvalues"
            )
        if self.intruders:
            settings["intruders"] = {"top": self.top, "eps": self.eps}
        return settings


def _asked(esd: bool, intruders: bool) -> str:
    """``--esd``, ``--intruders`` or both, as the caller spells them."""
    return " and ".join(str(a) for a, on in ((ESD, esd), (INTRUDERS, intruders)) if on)


def _base_of(checkpoint: Checkpoint, delta: LayerDelta) -> tuple[torch.Tensor | None, str]:
    """W0 of the delta's module, or None and why it is not available."""
    if delta.head is not None:
        return None, "a head's ΔW alone is not the module's update (W0 + ΔW is the whole module)"
    if delta.expert is not None:
        return None, "the base's weights are not read per expert of a mixture-of-experts role"
    W0 = checkpoint.base_weight((delta.layer, delta.role))
    if W0 is None:
        return None, f"{checkpoint.path} gives no base weight W0 for these modules"
    if tuple(W0.shape) != tuple(delta.shape):
        return None, f"W0 has shape {tuple(W0.shape)}, ΔW {tuple(delta.shape)}"
    return W0, ""


def _dense(update: Dense | Factored, device: torch.device) -> torch.Tensor:
    """ΔW as a float64 matrix on ``device`` (a factored one merged there)."""
    if isinstance(update, Factored):
        B = update.B.to(device, torch.float64)  # (d_out, r)
        A = update.A.to(device, torch.float64)  # (r, d_in)
        return update.scale * (B @ A)  # (d_out, d_in)
    return update.to_dense().to(device, torch.float64)  # (d_out, d_in)
