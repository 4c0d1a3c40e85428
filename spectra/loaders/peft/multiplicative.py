"""Multiplicative and rotational PEFT methods, ΔW = W0·R − W0 and kin.

IA3, OFT, BOFT, HRA, RoAd, PSOFT, GLoRA, HiRA: each needs the base weight W0.
"""
