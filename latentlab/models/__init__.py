"""Models: transformer blocks, tokenizers (AE, KL-VAE, VA-VAE, MAETok), targets, SiT, external adapters."""
