"""Evaluation: measuring what the course builds (notebooks 05, 07, 08 and 09 use it).

- :mod:`~minildm.evaluation.metrics`: PSNR, SSIM, the Frechet distance, KID, the FID
  Inception network;
- :mod:`~minildm.evaluation.judge`: a small classifier trained on toy faces that reads
  attributes off samples, and its features for an offline toy-face FID;
- :mod:`~minildm.evaluation.segmenter`: a small network trained on toy faces that reads part maps
  off samples, with mIoU and box IoU;
- :mod:`~minildm.evaluation.part_scores`: how well samples follow their part maps (semantic
  synthesis) or layouts (layout-to-image), beside shuffled requests;
- :mod:`~minildm.evaluation.agreement`: does a sample show what was asked for? Raw and
  balanced agreement with a classifier's reading, and the shuffled-request baseline;
- :mod:`~minildm.evaluation.scores`: the scores of each kind of model: reconstruction
  (autoencoder), FID/KID (unconditional), judge agreement (class, attributes, text), PSNR
  against baselines (inpainting, super-resolution);
- :mod:`~minildm.evaluation.bench`: training and sampling cost of pixel-space against latent
  diffusion, the paper's central claim.
"""
