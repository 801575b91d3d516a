"""Classifier-free guidance (Ho & Salimans 2022), how a conditional LDM is sampled (notebook 07).

One network learns both eps(z_t, t, y) and eps(z_t, t, null): during training the condition
is replaced by the null condition now and then (:mod:`minildm.conditioning`). Sampling then
extrapolates from the unconditional prediction towards the conditional one, trading variety
for agreement with the condition. :meth:`minildm.ldm.LatentDiffusion.denoiser` runs both
halves in one batch and combines them here.
"""

from __future__ import annotations

from torch import Tensor


def classifier_free_guidance(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Ho & Salimans 2022, eq. 6, ``(1 + w) eps(z_t, y) - w eps(z_t)``, written with the scale
    s = 1 + w as ``eps_uncond + s * (eps_cond - eps_uncond)`` (B, C, H, W): s = 1 is the
    conditional model, s = 0 the unconditional one, s > 1 guidance.

    The same combination holds when the network predicts x0 or v instead of eps: each is a
    fixed linear function of eps and z_t at a given t (x0 = (z_t - sqrt(1 - abar_t) eps) /
    sqrt(abar_t), v = (eps - sqrt(1 - abar_t) z_t) / sqrt(abar_t)), and the weights 1 - s and s
    sum to 1, so the z_t terms pass through unchanged and guiding the outputs guides eps.
    """
    # Exercise 07.2: classifier-free guidance from the two outputs
    ### BEGIN SOLUTION
    return eps_uncond + scale * (eps_cond - eps_uncond)
    ### END SOLUTION
