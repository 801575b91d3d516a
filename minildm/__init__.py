"""minildm: latent diffusion (Rombach et al., CVPR 2022), taught from scratch.

Modules, one idea each:

- data: :mod:`~minildm.config` (profiles and presets), :mod:`~minildm.toyfaces` (the offline
  data set), :mod:`~minildm.images` (any image file to a tensor), :mod:`~minildm.sources`
  (folders, attribute files, Hugging Face datasets), :mod:`~minildm.data` (one entry point, cached);
- stage 1, perceptual compression: :mod:`~minildm.nn` (shared blocks), :mod:`~minildm.autoencoder`,
  :mod:`~minildm.losses`, :mod:`~minildm.autoencoder_training`;
- shared: :mod:`~minildm.train` (the one training loop), :mod:`~minildm.checkpoint`,
  :mod:`~minildm.metrics`, :mod:`~minildm.viz`, :mod:`~minildm.cli` (the command line).
"""

__version__ = "0.1.0"
