"""Images <-> latents: ViT blocks, the AE / KL-VAE / VA-VAE / MAETok models, their targets, losses and training."""
