"""Each method's ΔW, written once: pure functions of tensors → ``Dense`` / ``Factored``.

Every reader of a method (PEFT folders, kohya / LyCORIS and diffusers files,
MLX-LM, torchtune, GGUF, a live peft model, ``resize``) parses its own names,
layouts and config, then hands the tensors to the function here, which
widens them to float64 and returns ΔW in the ``nn.Linear`` orientation
``(d_out, d_in)``:

| module | method |
|---|---|
| ``lora.py`` | LoRA / rsLoRA (``s · B @ A``, α/r or α/√r, the pattern rule), minus its start |
| ``dora.py`` | DoRA (``diag(m / ‖V‖_row) · V − W0``) |
| ``lycoris.py`` | LoHa, LoKr, and the Tucker / CP cores of their conv forms |
| ``adalora.py`` | AdaLoRA (``B @ (A ⊙ E) · s``) |
| ``vera.py`` | VeRA (``diag(λ_b) B diag(λ_d) A``, shared A and B sliced); PVeRA (its means) |
| ``vblora.py`` | VB-LoRA (``B @ A``, pieces mixed from a shared bank by top-k softmax) |
| ``randlora.py`` | RandLoRA (``s · B̂ @ Â`` over frozen random bases; the bases' draw) |
| ``tinylora.py`` | TinyLoRA (``B @ (Σ vᵢ Pᵢ) @ A``; the projections' draw) |
| ``unilora.py`` | UniLoRA (``B @ A``, entries scaled entries of a shared θ_d) |
| ``delora.py`` | DeLoRA (``(λ/r) · B diag(1/(‖Aᵢ‖‖Bⁱ‖)) A diag(w_norm)``) |
| ``fourierft.py`` | FourierFT (``Re(ifft2(S)) · scaling``; the entries' seeded draw) |
| ``waveft.py`` | WaveFT (one level of the inverse 2-D wavelet transform of S, · scaling) |
| ``waveft_filters.py`` | WaveFT's wavelet filters, peft 0.21's values |
| ``c3a.py`` | C3A (block-circulant ``c3a_kernel`` / d_in) |
| ``shira.py`` | SHiRA (``shira_weight`` at ``shira_indices``) |
| ``miss.py`` | MiSS / Bone (``blockᵀ`` tiled over W0's columns; ``bat``: ``W0_pq M_p + M_p``) |
| ``gralora.py`` | GraLoRA (a k×k grid of rank-r/k LoRAs plus a hybrid LoRA, · α/(r+h)) |
| ``ia3.py`` | (IA)³ (``(l − 1) ⊙ W0``, l scaling rows or columns) |
| ``oft.py`` | OFT (``W0 (Rᵀ − I)``, R block-diagonal Cayley rotations); the Cayley helpers |
| ``boft.py`` | BOFT (``diag(s) W0 Rᵀ − W0``, R butterfly-permuted block rotations) |
| ``hra.py`` | HRA (``W0 (H₁⋯H_r − I)``, Householder reflections, factored) |
| ``road.py`` | RoAd (``(R − I) W0``, R rotating pairs of output rows) |
| ``psoft.py`` | PSOFT (``s · B (R − I) A``, A and B from W0's float32 SVD) |
| ``glora.py`` | GLoRA (``W0 ⊙ A + B``) |
| ``hira.py`` | HiRA (``W0 ⊙ (B @ A)``) |
| ``deft.py`` | DEFT (``Q_P (s·R − rightᵀ W0)``; PaRa: the removal term alone) |
| ``frod.py`` | FRoD (``U (S + diag λ) Vᵀ − W0``, U from W0 and the shared V) |
| ``osf.py`` | OSF (``U S V − U₀ S₀ V₀``, the initial low part from W0's float32 SVD) |
| ``peanut.py`` | PEANuT (``s · B hᵀ``, h a small network of W0ᵀ Aᵀ) |
| ``supertuning.py`` | Super-Tuning (sparse ``values`` at ``indices``, ``+ (α/r) B @ A``) |
| ``ln_tuning.py`` | LN tuning on a projection (``W_tuned − W0``) |
| ``multilora.py`` | MultiLoRA (``s · Σ_i diag(c_i) B_i @ A_i``, or each head) |
| ``multihead.py`` | multi-head LoRA (each ``s · B_j @ A``, or their uniform mixture) |

``rows`` (every function takes it) keeps the rows of ΔW that one role of a
fused module owns (``naming.architectures.ModuleRef.rows``); by default all of them. The
functions read nothing from disk and never write into the tensors given.
"""

from __future__ import annotations

import torch

__all__ = ["ALL_ROWS", "Rows"]

Rows = slice | torch.Tensor  # the rows of ΔW one role owns
ALL_ROWS = slice(None)
