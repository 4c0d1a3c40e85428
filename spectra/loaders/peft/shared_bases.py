"""PEFT methods whose factors come from shared banks or frozen random bases.

VB-LoRA, RandLoRA, TinyLoRA, UniLoRA, PVeRA, DeLoRA.
"""
