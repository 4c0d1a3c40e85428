"""Examples that ship with spectra: the built-in demo and reference method layers.

- ``demo``: writes a small FT, LoRA and MultiLoRA checkpoint in their real
  on-disk formats (``spectra demo``);
- ``reference``: ``MultiLoRALinear`` and ``MultiHeadLoRALinear``, minimal
  implementations of MultiLoRA and HydraLoRA-style layers whose saved state
  dicts are the layouts docs/formats.md describes (for figures and tests).

Nothing in the analysis imports this package.
"""
