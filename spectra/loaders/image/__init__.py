"""The image-model formats: kohya / LyCORIS and diffusers LoRA files.

``common.py`` holds the checkpoint they share (LoRA / LoCon, LoHa, LoKr,
full weights, rebuilt in float64); each format module registers itself.
"""
