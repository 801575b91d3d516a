"""minildm: latent diffusion (Rombach et al., CVPR 2022), taught from scratch.

Modules, one idea each: :mod:`~minildm.config` (profiles), :mod:`~minildm.toyfaces`
(the offline data set), :mod:`~minildm.images` (any image file to a tensor),
:mod:`~minildm.data` (every data source, cached), :mod:`~minildm.viz` (figures),
:mod:`~minildm.cli` (the command line).
"""

__version__ = "0.1.0"
