"""latentlab: is this latent space easy for a diffusion model to learn, and why?"""

import os as _os

# OpenMP threads that spin while waiting make small torch ops 5-20x slower as soon as another
# process shares the cores (measured on 2 cores: 0.13 s/step passive vs 0.5-1.9 s/step active).
# Sleeping waits cost little when the machine is idle. Set before torch is imported; an explicit
# OMP_WAIT_POLICY in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from latentlab.errors import LatentlabError  # noqa: E402,F401
