"""What a tensor is called: architecture maps (role, layer, fused rows) and diffusion names."""
