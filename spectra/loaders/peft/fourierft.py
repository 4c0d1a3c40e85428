"""FourierFT and WaveFT: a trained spectrum at seeded random entries, transformed back (dense).

| method | ΔW |
|---|---|
| FourierFT | ``Re(ifft2(S)) · scaling`` |
| WaveFT | ``IDWT(S) · scaling``, one level of the ``wavelet_family`` filters, centred crop |

Both save only the spectrum ``(n,)`` per module: the entries of S are
``torch.randperm(d_out·d_in)`` drawn from ``random_loc_seed``, its first n
split into (row, column), as peft draws them when it builds the layer
(``methods.fourierft.spectrum_indices``). So the rebuild needs the seed
(the config's) and the module's shape, which only the base model gives
(``ShapeFromBase``). The formulas are ``methods.fourierft`` and
``methods.waveft``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import FormatError
from ..methods import fourierft, lora, waveft
from ..methods.waveft_filters import LOW_PASS, UNSUPPORTED
from .base_shapes import ShapeFromBase
from .structured import config_number
from .variant import Adapted, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["FourierFT", "WaveFT"]


class FourierFT(ShapeFromBase):
    """FourierFT: ΔW = Re(ifft2(S))·scaling, S the spectrum at seeded random frequencies."""

    peft_type = "FOURIERFT"
    recognised_by = "fourierft_spectrum (n,), and random_loc_seed, scaling"
    key_parts = ("fourierft_spectrum",)
    parts = key_parts
    spectrum = "fourierft_spectrum"
    config_fields = ("n_frequency", "n_frequency_pattern", "scaling", "random_loc_seed")
    formula = "Re(ifft2(S))·scaling, S: the spectrum at randperm(d_out·d_in, seed)[:n] (dense)"
    follows = "tuners/fourierft/layer.py: FourierFTLayer.update_layer, get_delta_weight"
    why_base = (
        "FourierFT draws its frequencies from randperm(d_out·d_in) and places them in a "
        "(d_out, d_in) spectrum, and saves neither dimension: both come from the base model's "
        "weights."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "FourierFT"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def expected_count(self, ckpt: PeftCheckpoint, module: str) -> tuple[int, str] | None:
        """n_frequency for ``module`` from the config and its pattern, with its source."""
        found = lora.pattern_value(ckpt.config.get("n_frequency_pattern"), module)
        if found:
            return int(found[1]), f"n_frequency_pattern[{found[0]!r}]"
        return config_number(ckpt, "n_frequency", int), "n_frequency"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shape = tuple(ckpt.shape_of(adapted, self.spectrum))
        expected = self.expected_count(ckpt, adapted.module)
        if len(shape) != 1 or (expected is not None and shape[0] != expected[0]):
            wanted = f"({expected[0]},) for {expected[1]} = {expected[0]}" if expected else "(n,)"
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have {self.spectrum} {wanted}; "
                f"found {shape}"
            )
        config_number(ckpt, "random_loc_seed", int)  # the entries are drawn from it
        scaling = config_number(ckpt, "scaling")
        adapted.scale = scaling
        adapted.scale_source = f"config: scaling = {scaling:g}"

    def seed(self, ckpt: PeftCheckpoint) -> int:
        return config_number(ckpt, "random_loc_seed", int)

    def checked_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        """The base's (d_out, d_in), checked to hold the spectrum's n entries."""
        d_out, d_in = self.module_shape(ckpt, adapted)
        count = ckpt.shape_of(adapted, self.spectrum)[0]
        if count > d_out * d_in:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} has {count} {self.spectrum} entries, more "
                f"than its ({d_out}, {d_in}) shape in the base {ckpt.base} holds; is the base the "
                "model this adapter was trained on?"
            )
        return (d_out, d_in)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        shape = self.checked_shape(ckpt, adapted)
        (spectrum,) = ckpt.need(adapted, self.spectrum)  # (n,)
        return [(None, fourierft.delta(spectrum, shape, self.seed(ckpt), adapted.scale, rows))]


class WaveFT(FourierFT):
    """WaveFT: ΔW = IDWT(S)·scaling, S the spectrum at seeded random wavelet coefficients."""

    peft_type = "WAVEFT"
    recognised_by = "waveft_spectrum (n,), and random_loc_seed, scaling, wavelet_family, use_idwt"
    key_parts = ("waveft_spectrum",)
    parts = key_parts
    spectrum = "waveft_spectrum"
    config_fields = (
        "n_frequency",
        "n_frequency_pattern",
        "proportional_parameters",
        "scaling",
        "wavelet_family",
        "use_idwt",
        "random_loc_seed",
    )
    formula = (
        "IDWT([[cA, cH], [cV, cD]] = S padded by L−2)·scaling, centred (d_out, d_in) crop; "
        "S: the spectrum at randperm(d_out·d_in, seed)[:n] (dense)"
    )
    follows = "tuners/waveft/layer.py: WaveFTLayer.get_delta_weight; tuners/waveft/waverec2d.py"
    why_base = (
        "WaveFT draws its coefficients from randperm(d_out·d_in) and pads them to the module's "
        "(d_out, d_in), and saves neither dimension: both come from the base model's weights."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "WaveFT"

    def expected_count(self, ckpt: PeftCheckpoint, module: str) -> tuple[int, str] | None:
        if ckpt.config.get("proportional_parameters"):
            return None  # shared out by the shapes of all targeted modules: the saved n is it
        return super().expected_count(ckpt, module)

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        family = self.family(ckpt)
        super().resolve_scale(ckpt, adapted)
        if ckpt.config.get("use_idwt", True):
            adapted.scale_source += f", wavelet {family}"

    def family(self, ckpt: PeftCheckpoint) -> str:
        """The config's wavelet_family, one peft 0.21 can merge (else FormatError)."""
        family = ckpt.config.get("wavelet_family", "db1")
        if family in LOW_PASS or not ckpt.config.get("use_idwt", True):
            return family
        why = UNSUPPORTED.get(
            family, "peft 0.21 has no filter for it (its Wavelet knows db1–10, sym2–10, coif1–5)"
        )
        raise FormatError(
            f"{ckpt.config_path}: WaveFT's wavelet_family {family!r} cannot be rebuilt: {why}"
        )

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        shape = self.checked_shape(ckpt, adapted)
        (spectrum,) = ckpt.need(adapted, self.spectrum)  # (n,)
        use_idwt = bool(ckpt.config.get("use_idwt", True))
        family = self.family(ckpt)
        update = waveft.delta(
            spectrum, shape, self.seed(ckpt), adapted.scale, family, use_idwt, rows
        )
        return [(None, update)]


register_variant(FourierFT())
register_variant(WaveFT())
