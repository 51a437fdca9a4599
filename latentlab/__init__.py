"""latentlab: is this latent space easy for a diffusion model to learn, and why?"""

__version__ = "0.1.0"

from latentlab.errors import LatentlabError  # noqa: E402,F401
