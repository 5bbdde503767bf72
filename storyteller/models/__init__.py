"""The models the book builds, one module per chapter: foundations, VQ-VAE, VQGAN, diffusion, the DiT, LoRA and
characters (chapters 1-6)."""
