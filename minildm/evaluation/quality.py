"""Where sample quality is lost: one table from the floor, through stage 1, to the samples.

Every row scores n images against the same n held-out reference images:

- ``real vs real (floor)``: other held-out images, what a perfect model scores at this n;
- ``autoencoder (ceiling)``: those other held-out images encoded and decoded by stage 1. An
  LDM draws through the same decoder, so no LDM on these latents can do better;
- ``samples``: the LDM's samples.

A row past the floor but near the ceiling blames stage 1; a gap between ceiling and samples
blames stage 2. Each row has:

- KID and FID on the features (:mod:`minildm.evaluation.metrics`);
- improved precision and recall (Kynkäänniemi et al. 2019, Sec. 3): the share of the row's
  images that lie inside the data's manifold, and of the data inside the row's. Blurred or
  broken images lower precision, missing kinds of faces lower recall;
- the mean HSV saturation of the pixels (washed-out colours lower it);
- with a toy-face judge, the rate of each attribute it reads, and of "is a face".
"""

from __future__ import annotations

import torch
from torch import Tensor

from minildm.data.images import float_to_uint8, uint8_to_float
from minildm.evaluation.judge import OUTPUTS, ToyFaceJudge
from minildm.evaluation.metrics import feature_distances
from minildm.ldm import LatentDiffusion
from minildm.sampling import SamplerOptions

NEIGHBOURS = 3  # k of the k-nearest-neighbour balls (Kynkäänniemi et al. use k = 3)
ROWS = ("real vs real (floor)", "autoencoder (ceiling)", "samples")


def knn_radii(features: Tensor, k: int = NEIGHBOURS) -> Tensor:
    """The distance (N,) from each point of ``features`` (N, D) to its k-th nearest other point:
    the radius of the ball around it that the manifold estimate of Kynkäänniemi et al. uses."""
    if len(features) <= k:
        raise ValueError(f"k-nearest neighbours need more than k = {k} points, got {len(features)}")
    distances = torch.cdist(features.double(), features.double())  # (N, N), zero on the diagonal
    return distances.kthvalue(k + 1, dim=1).values  # the (k+1)-th smallest: the point itself is the first


def manifold_coverage(manifold: Tensor, points: Tensor, k: int = NEIGHBOURS) -> float:
    """The share of ``points`` (M, D) inside at least one k-NN ball of ``manifold`` (N, D)
    (Kynkäänniemi et al. 2019, eq. 1 and 2)."""
    radii = knn_radii(manifold, k)  # (N,)
    distances = torch.cdist(points.double(), manifold.double())  # (M, N)
    return (distances <= radii).any(dim=1).double().mean().item()


def precision_recall(real: Tensor, fake: Tensor, k: int = NEIGHBOURS) -> dict[str, float]:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake
    manifold) of two feature sets (N, D) and (M, D)."""
    return {"precision": round(manifold_coverage(real, fake, k), 4),
            "recall": round(manifold_coverage(fake, real, k), 4)}


def saturation(images: Tensor) -> Tensor:
    """HSV saturation (N, H, W) of uint8 or [-1, 1] float images (N, 3, H, W): (max - min) / max
    over the channels of each pixel, 0 where the pixel is black."""
    rgb = uint8_to_float(images) if images.dtype == torch.uint8 else images.float()
    rgb = (rgb + 1) / 2  # [0, 1]
    high, low = rgb.amax(dim=1), rgb.amin(dim=1)
    return torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high))


def attribute_rates(judge: ToyFaceJudge, images: Tensor) -> dict[str, float]:
    """How often the judge reads each toy-face attribute, and "face", in ``images``."""
    attributes, is_face = judge.predict(images)
    rates = torch.cat([attributes, is_face[:, None]], dim=1).double().mean(dim=0)
    return {name: round(rate.item(), 4) for name, rate in zip(OUTPUTS, rates)}


def quality_row(images: Tensor, reference_features: Tensor, features, judge: ToyFaceJudge | None) -> dict:
    """The columns of one row for uint8 ``images`` against the reference images' features:
    KID, FID, precision, recall, saturation and, with a judge, the attribute rates."""
    own = features(images)
    row = {**feature_distances(reference_features, own), **precision_recall(reference_features, own),
           "saturation": round(saturation(images).mean().item(), 4)}
    if judge is not None:
        row["attributes"] = attribute_rates(judge, images)
    return row


@torch.no_grad()
def quality_report(model: LatentDiffusion, reference: Tensor, others: Tensor, *, features,
                   judge: ToyFaceJudge | None = None, options: SamplerOptions | None = None,
                   generator: torch.Generator | None = None, batch_size: int = 250) -> dict:
    """The table of this module for ``model``: uint8 held-out ``reference`` images (N, 3, R, R),
    ``others`` (N more held-out images, for the floor and the ceiling) and as many samples.

    ``features``: the extractor (uint8 images -> (N, D)), e.g. the toy-face judge's;
    ``judge``: adds the attribute rates. Returns the rows by name, the reference's own
    saturation and attribute rates, and the counts.
    """
    if len(others) != len(reference):
        raise ValueError(f"the floor needs as many other images as reference images: {len(others)} against "
                         f"{len(reference)}")
    options = options or SamplerOptions()
    reconstructions = torch.cat([float_to_uint8(model.decode(model.encode(uint8_to_float(batch))).cpu())
                                 for batch in others.split(batch_size)])
    samples = torch.cat([float_to_uint8(model.sample(len(chunk), reference.shape[-1], options,
                                                     generator=generator).cpu())
                         for chunk in torch.arange(len(reference)).split(batch_size)])
    reference_features = features(reference)
    rows = {name: quality_row(images, reference_features, features, judge)
            for name, images in zip(ROWS, (others, reconstructions, samples))}
    data = {"saturation": round(saturation(reference).mean().item(), 4)}
    if judge is not None:
        data["attributes"] = attribute_rates(judge, reference)
    return {"rows": rows, "data": data, "n": len(reference),
            "features": getattr(features, "description", type(features).__name__),
            "sampler": options.description}


def quality_table(report: dict) -> str:
    """A :func:`quality_report` as text: one line per row, the data's saturation and attribute
    rates as the last line, so that each column can be read against it."""
    attributes = list(report["data"].get("attributes", {}))
    short = [name.replace("_", " ").replace("Wearing ", "").replace("No Beard", "beardless")[:10]
             for name in attributes]
    header = f"{'':22} {'KID':>8} {'FID':>8} {'prec.':>6} {'recall':>6} {'satur.':>6} " + \
        " ".join(f"{name:>10}" for name in short)
    lines = [f"{report['n']} images per row against {report['n']} held-out ones; features: {report['features']}",
             header]
    for name, row in report["rows"].items():
        rates = " ".join(f"{row['attributes'][key]:>10.3f}" for key in attributes)
        lines.append(f"{name:22} {row['kid']:>8.4f} {row['fid']:>8.2f} {row['precision']:>6.3f} "
                     f"{row['recall']:>6.3f} {row['saturation']:>6.3f} {rates}")
    rates = " ".join(f"{report['data']['attributes'][key]:>10.3f}" for key in attributes)
    lines.append(f"{'held-out data':22} {'':>8} {'':>8} {'':>6} {'':>6} {report['data']['saturation']:>6.3f} {rates}")
    return "\n".join(lines)


def quality_reading(report: dict) -> str:
    """A few plain sentences on a :func:`quality_report`: how far the samples are from the floor,
    how much of that distance stage 1 already costs, and what precision, recall and colour say."""
    floor, ceiling, samples = (report["rows"][name] for name in ROWS)
    lines = [f"KID {samples['kid']:.4f} for the samples, against {floor['kid']:.4f} for real images (the floor) "
             f"and {ceiling['kid']:.4f} for the autoencoder's reconstructions (the best any LDM on its latents "
             f"can do): stage 1 costs {ceiling['kid'] - floor['kid']:.4f}, stage 2 "
             f"{samples['kid'] - ceiling['kid']:.4f}.",
             f"Precision {samples['precision']:.2f} (real images: {floor['precision']:.2f}): the share of samples "
             f"that look like some held-out image; blur and broken faces lower it. Recall {samples['recall']:.2f} "
             f"(real images: {floor['recall']:.2f}): the share of held-out images that some sample resembles; "
             "kinds of faces the model never draws lower it.",
             f"Mean saturation {samples['saturation']:.3f} against the data's {report['data']['saturation']:.3f} "
             f"(reconstructions {ceiling['saturation']:.3f}): below it, colours are washed out."]
    if "attributes" in samples:
        data = report["data"]["attributes"]
        worst = max(data, key=lambda name: abs(samples["attributes"][name] - data[name]))
        lines.append(f"Judged faces: {samples['attributes']['face']:.2f} of the samples, {data['face']:.2f} of the "
                     f"data; the attribute furthest from the data's rate is {worst} "
                     f"({samples['attributes'][worst]:.2f} against {data[worst]:.2f}).")
    return "\n".join(lines)
