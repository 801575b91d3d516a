"""minildm: latent diffusion (Rombach et al., CVPR 2022), taught from scratch.

Read the core in this order; each module is one idea, and the notebook in brackets teaches it.

Stage 1, perceptual compression (Sec. 3.1):

- :mod:`~minildm.nn`: the blocks every network shares: ResBlock, down/upsampling, attention, gradient checkpointing (04)
- :mod:`~minildm.attention`: multi-head attention, cross-attention, the spatial transformer (07)
- :mod:`~minildm.regularizers`: the KL (reparameterised Gaussian) and VQ (codebook) latents (01, 02)
- :mod:`~minildm.autoencoder`: encoder E, decoder D, the latent scale factor (01, 02)
- :mod:`~minildm.losses`: L1 + perceptual + patch GAN with the adaptive weight (01)
- :mod:`~minildm.perceptual`: the perceptual distance and its networks: VGG16 (weights, download),
  offline the FID Inception-v3's early layers; the choice for a profile (01)
- :mod:`~minildm.autoencoder_training`: train an autoencoder into a run folder, load it (01, 02)

Stage 2, diffusion in the latent space (Sec. 3.2):

- :mod:`~minildm.diffusion`: the noise schedule, q(x_t | x_0) and its posterior, the loss (03, 05)
- :mod:`~minildm.sampling`: the reverse chain: DDPM and DDIM, trajectories, inversion (06)
- :mod:`~minildm.unet`: the time-conditional UNet eps_theta(z_t, t) (04)

Stage 3, conditioning (Sec. 3.3):

- :mod:`~minildm.conditioning`: the condition encoders tau_theta: classes, attributes, text (07)
- :mod:`~minildm.guidance`: classifier-free guidance (07)
- :mod:`~minildm.image_conditions`: masks, inpainting and super-resolution inputs, concat conditioning (08)

The model, and what a student needs to run it:

- :mod:`~minildm.ldm`: LatentDiffusion: encode, denoise, sample, inpaint, upscale (05-08)
- :mod:`~minildm.recipes`: what the profiles and data sets make: the configs of each stage (01, 05, 07)
- :mod:`~minildm.ldm_training`: cached latents, train an LDM into a run folder, load it (05)
- :mod:`~minildm.trainer`: the one training loop both stages use: EMA, Ctrl-C, NaN checks (01, 05)
- :mod:`~minildm.checkpoint`: safetensors files written atomically, run folders (05)
- :mod:`~minildm.distributed`: several devices under torchrun: shared-out batches, averaged gradients
- :mod:`~minildm.config`: profiles (tiny, cpu, gpu, the one-GPU recipes), presets, paths (00)
- :mod:`~minildm.viz`: image grids (every notebook)

What a first reading can skip lives in five subpackages:

- :mod:`minildm.app`: the command line (``python -m minildm COMMAND``: :mod:`~minildm.app.cli`,
  :mod:`~minildm.app.options`), the demo (:mod:`~minildm.app.demo`, the whole pipeline on one
  screen), every notebook's first cell (``app/first_cell.py``, :mod:`~minildm.app.notebooks`,
  :mod:`~minildm.app.provenance`), and the ``course``, ``export`` and ``import-ae`` commands;
- :mod:`minildm.course`: the course kit: exercises, the student copy, the grader (docs/teaching.md);
- :mod:`minildm.data` (00): :mod:`~minildm.data.toyfaces` (the offline data set),
  :mod:`~minildm.data.images` (any image file to a tensor), :mod:`~minildm.data.sources`
  (folders, attribute files, Hugging Face datasets), :mod:`~minildm.data.dataset`
  (``load_images``: one entry point, cached), :mod:`~minildm.data.faces` (real faces from the
  first source that works: a local folder, the hub, else toy faces);
- :mod:`minildm.evaluation`: :mod:`~minildm.evaluation.metrics` (PSNR, SSIM, FID, KID; 05, 09),
  :mod:`~minildm.evaluation.judge` (a classifier that reads toy-face attributes off samples; 07),
  :mod:`~minildm.evaluation.agreement` (raw and balanced agreement with a request; 07),
  :mod:`~minildm.evaluation.rate_distortion` (bits against error for a Gaussian model of the
  images, the paper's Fig. 2; spectral detail; 01),
  :mod:`~minildm.evaluation.scores` (the score of each kind of model; 01, 05, 07, 08),
  :mod:`~minildm.evaluation.bench` (pixel against latent cost, the paper's claim; 09);
- :mod:`minildm.interop`: models to and from Hugging Face diffusers (export an LDM, import an
  autoencoder).
"""

__version__ = "0.1.0"
