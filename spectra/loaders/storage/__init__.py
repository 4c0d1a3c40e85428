"""Where tensors are read: safetensors files and shards, pickles, training layouts, model folders.

Nothing here knows a format: a store hands out named tensors, lazily, and
never writes into them.
"""
