"""Turning a spectrum into something to use: rank suggestions, resized adapters, extracted LoRAs.

- ``suggest``: per module, the rank that keeps a share of ‖ΔW‖_F², as a
  ``LoraConfig``-ready ``rank_pattern`` / ``alpha_pattern`` (``suggest.py``);
- ``resize``: a LoRA adapter truncated to a rank or an energy share, from the
  exact factored core, as a PEFT folder (``resize.py``);
- ``extract``: a LoRA adapter of the base from a full fine-tune, module by
  module (``extract.py``).

``truncation.py`` holds the maths (Eckart–Young truncations and their errors),
``lora_folder.py`` writes PEFT adapter folders.
"""

from __future__ import annotations

from .extract import Extracted, extract
from .resize import Resized, resize
from .suggest import Suggestion, suggest

__all__ = ["Extracted", "Resized", "Suggestion", "extract", "resize", "suggest"]
