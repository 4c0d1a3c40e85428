"""The newest PEFT methods, and the peft_types with no single static ΔW.

DEFT, FRoD, AdaMSS, Supertuning, OSF…; the refused ones say why.
"""
