"""PEFT methods with structured dense or sparse updates.

FourierFT, WaveFT, C3A, SHiRA, MiSS / Bone, GraLoRA.
"""
