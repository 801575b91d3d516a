"""Model exchange with Hugging Face diffusers: what a first reading of the course can skip.

minildm's networks are built from the same blocks as diffusers' (DDPM, ADM, the CompVis LDM
code), so their layers pair one for one and weights move between them without retraining:

- :mod:`~minildm.interop.layers`: which minildm parameter holds which diffusers parameter,
  copying both ways, and :class:`~minildm.interop.layers.InteropError`;
- :mod:`~minildm.interop.diffusers_unet`: the UNet as ``UNet2DModel`` (configuration, weights);
- :mod:`~minildm.interop.diffusers_autoencoder`: the autoencoders as ``AutoencoderKL`` /
  ``VQModel`` and back, and where the two libraries' autoencoders differ;
- :mod:`~minildm.interop.export`: an LDM run as a diffusers ``LDMPipeline`` folder (UNet, DDIM
  scheduler, autoencoder with the latent scale factor);
- :mod:`~minildm.interop.import_ae`: a diffusers ``AutoencoderKL`` as a stage-1 run folder;
- :mod:`~minildm.app.interop_commands`: ``python -m minildm export`` and ``import-ae``.

diffusers is imported on first use (:func:`~minildm.interop.layers.require_diffusers`): it is
slow to import, and nothing else in minildm uses it.
"""
