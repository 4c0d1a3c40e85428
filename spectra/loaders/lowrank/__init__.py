"""The single-file low-rank formats: MLX-LM, torchtune and llama.cpp GGUF adapters.

``common.py`` holds the checkpoint they share (factored LoRA, DoRA, q/k rows
put back from the interleaved RoPE order); each format module registers itself.
"""
