"""A toy-face judge: a small CNN that reads attributes off images, to score generated samples.

A conditional diffusion model is only as good as its conditioning: asked for eyeglasses,
does it draw eyeglasses? Toy faces (:mod:`minildm.data.toyfaces`) know their attributes exactly,
so a classifier trained on fresh toy faces can answer that question for samples, offline:

* :class:`AttributeClassifier`: a small CNN at 32 px with one logit per binary attribute;
  its pooled features also serve an offline FID-like metric.
* :func:`train_classifier` and :func:`train_attribute_classifier`: binary cross-entropy
  training with AdamW, the latter with a held-out score, e.g. for CelebA and its attributes.
* :class:`ToyFaceJudge` and :func:`load_judge`: the classifier trained once on toy faces and on
  :func:`non_faces`, with an eleventh output "is this a face at all?", cached on disk.
* :class:`ToyFaceFeatures`: the judge's features for a toy-face FID and KID, offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from tqdm import tqdm

from minildm import checkpoint as ckpt
from minildm.config import MinildmError, data_dir
from minildm.data import toyfaces
from minildm.data.images import float_to_uint8, uint8_to_float
from minildm.evaluation.agreement import agreement_report

INPUT_SIZE = 32  # the classifier resizes every image to this side
OUTPUTS = (*toyfaces.ATTRIBUTES, "face")  # the judge's outputs, in order
JUDGE_FILE = "toyface-judge.safetensors"
# Everything that shapes the cached judge (a cache made with other settings is retrained):
# "train" faces and as many non-faces from toy-face seeds that no data set uses, ~1 min on 1 core.
JUDGE_SETTINGS = {"version": 1, "seed": 7_777_777, "resolution": 32, "train": 12_000,
                  "heldout": 1_000, "steps": 750, "batch_size": 128, "learning_rate": 5e-3}


def _as_float(images: Tensor) -> Tensor:
    """Check that ``images`` is (N, 3, R, R) with N >= 1, R >= 16; return float in [-1, 1]."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[0] < 1 or shape[1] != 3 or shape[2] != shape[3] or shape[2] < 16:
        raise MinildmError(f"expected images of shape (N, 3, R, R) with R >= 16, got {shape}")
    return uint8_to_float(images) if images.dtype == torch.uint8 else images.float()


class AttributeClassifier(nn.Module):
    """A small CNN with one logit per binary attribute.

    Images of any side are resized to 32 px (area averaging). Three stages of
    ``conv(stride 2)-GroupNorm-SiLU`` with ``width``, ``2 * width`` and ``4 * width`` channels
    bring them to 4x4, where one more conv-GroupNorm-SiLU lets every position see the whole
    image (which makes small features such as a smile much quicker to learn); a global
    average pool gives the features (B, 4 * width). ``width`` must be a multiple of 8.
    """

    def __init__(self, num_outputs: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, stride in ((3, width, 2), (width, 2 * width, 2), (2 * width, 4 * width, 2),
                                    (4 * width, 4 * width, 1)):  # 32 -> 16 -> 8 -> 4 -> 4 px
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(4 * width, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        """``x``: float (B, 3, R, R) in [-1, 1] -> pooled features (B, 4 * width)."""
        if x.shape[-1] != INPUT_SIZE:
            x = F.interpolate(x, size=INPUT_SIZE, mode="area")  # (B, 3, 32, 32)
        return self.body(x).mean(dim=(2, 3))  # (B, C, 4, 4) -> (B, C)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: float (B, 3, R, R) in [-1, 1] -> logits (B, num_outputs)."""
        return self.head(self.features(x))


@torch.no_grad()
def _in_batches(function: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 512) -> Tensor:
    """Apply ``function`` to uint8 or float images in batches, without gradients."""
    _as_float(images[:1])
    return torch.cat([function(_as_float(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def _check_targets(images: Tensor, targets: Tensor) -> Tensor:
    """Check images (N, 3, R, R) against targets (N, K); return the targets as float."""
    _as_float(images[:1])
    if targets.ndim != 2 or len(targets) != len(images):
        raise MinildmError(f"expected targets of shape ({len(images)}, K) for {len(images)} images, "
                           f"got {tuple(targets.shape)}")
    return targets.float()


def train_classifier(images: Tensor, targets: Tensor, *, steps: int, batch_size: int = 128,
                     learning_rate: float = 2e-3, seed: int = 0, progress: bool = False,
                     augment: bool = True, balance: bool = False, width: int = 16) -> AttributeClassifier:
    """Train an :class:`AttributeClassifier` with binary cross-entropy on each output.

    ``images``: uint8 or float in [-1, 1], (N, 3, R, R). ``targets``: bool or float (N, K);
    a NaN target means "unknown" and is left out of the loss. Batches are drawn at random
    from ``seed``, which also sets the initial weights; ``augment`` flips half of each batch
    left-right (toy-face and CelebA attributes are all mirror-invariant). AdamW, cosine decay.
    ``balance`` weighs each attribute's positives by its ratio of negatives to positives, so a
    rare attribute counts as much as a common one: what a classifier judged by its balanced
    accuracy (mean of true-positive and true-negative rates) should minimise.
    """
    targets = _check_targets(images, targets)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = AttributeClassifier(targets.shape[1], width=width)
    positive_weight = torch.ones(targets.shape[1])
    if balance:
        positives, negatives = (targets == 1).sum(0), (targets == 0).sum(0)  # NaN counts as neither
        positive_weight = negatives.float() / positives.clamp(min=1).float()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for _ in tqdm(range(steps), desc="training classifier", disable=not progress):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = _as_float(images[index]), targets[index]  # (B, 3, R, R), (B, K)
        if augment:
            flip = torch.rand(batch_size, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        known = ~y.isnan()
        weight = torch.where(y == 1, positive_weight, torch.ones_like(positive_weight))  # (B, K)
        loss = F.binary_cross_entropy_with_logits(classifier(x)[known], y[known], weight=weight[known])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return classifier.eval()


def accuracy(classifier: AttributeClassifier, images: Tensor, targets: Tensor, batch_size: int = 512) -> Tensor:
    """Per-output accuracy (K,) of the predictions ``logit > 0``; NaN targets are not counted."""
    targets = _check_targets(images, targets)
    predicted = _in_batches(classifier, images, batch_size) > 0  # (N, K)
    return (predicted == targets).sum(0) / (~targets.isnan()).sum(0)


def train_attribute_classifier(train_pixels: Tensor, train_attributes: Tensor, heldout_pixels: Tensor,
                               heldout_attributes: Tensor, *, steps: int, seed: int = 0, progress: bool = False,
                               balance: bool = False, width: int = 16) -> tuple[AttributeClassifier, Tensor]:
    """Train a classifier on real images (e.g. CelebA) and their attributes (N, K); return it
    with its accuracy (K,) on held-out images that it never saw in training (``balance`` and
    ``width``: see :func:`train_classifier`)."""
    classifier = train_classifier(train_pixels, train_attributes, steps=steps, seed=seed, progress=progress,
                                  balance=balance, width=width)
    return classifier, accuracy(classifier, heldout_pixels, heldout_attributes)


def non_faces(n: int, resolution: int, seed: int) -> Tensor:
    """``n`` images that are not faces, float (n, 3, R, R) in [-1, 1], deterministic from ``seed``.

    Four kinds in equal parts, in this order: toy faces with their 4x4 grid of tiles shuffled,
    50/50 blends of two different toy faces, the background of toy faces alone, and smooth
    colour noise (4x4 and 8x8 random pixels upsampled bicubic). The toy faces are those of
    data set ``seed``. R must be a multiple of 4.
    """
    if resolution < 4 or resolution % 4:
        raise MinildmError(f"non-faces need a resolution that is a multiple of 4, got {resolution}")
    generator = torch.Generator().manual_seed(seed)
    shuffled, blended, background, noise = ((n + k) // 4 for k in range(4))  # sums to n
    faces, _ = toyfaces.generate(shuffled + 2 * blended, resolution, seed)
    tiles = rearrange(faces[:shuffled], "n c (gh h) (gw w) -> n (gh gw) c h w", gh=4, gw=4)
    order = torch.rand(shuffled, 16, generator=generator).argsort(dim=1)  # (n, 16) a permutation each
    tiles = tiles[torch.arange(shuffled)[:, None], order]  # (n, 16, 3, R/4, R/4)
    pairs = rearrange(faces[shuffled:], "(n two) c h w -> two n c h w", two=2)
    backgrounds = toyfaces.render_faces(toyfaces.sample_face_params(background, seed, start=len(faces)), resolution,
                                        layers=toyfaces.LAYERS[:1])  # the background layer alone
    coarse, fine = (F.interpolate(torch.rand(noise, 3, side, side, generator=generator) * 2 - 1, size=resolution,
                                  mode="bicubic", align_corners=False) for side in (4, 8))  # (n, 3, R, R) each
    return torch.cat([rearrange(tiles, "n (gh gw) c h w -> n c (gh h) (gw w)", gh=4), pairs.mean(dim=0),
                      backgrounds, (coarse + 0.5 * fine).clamp(-1, 1)])


class ToyFaceJudge:
    """A trained classifier that reads the 10 toy-face attributes and "is a face" off images.

    Attributes:
        classifier: an :class:`AttributeClassifier` with the 11 outputs of ``OUTPUTS``.
        heldout_accuracy: its accuracy on fresh toy faces, per attribute name, and for
            "face" on fresh faces and non-faces together.
    """

    def __init__(self, classifier: AttributeClassifier, heldout_accuracy: dict[str, float]) -> None:
        self.classifier = classifier.eval()
        self.heldout_accuracy = heldout_accuracy

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 or float images (N, 3, R, R) -> attributes bool (N, 10), is_face bool (N,)."""
        logits = _in_batches(self.classifier, images)  # (N, 11)
        return logits[:, :-1] > 0, logits[:, -1] > 0

    def features(self, images: Tensor) -> Tensor:
        """Pooled classifier features (N, D) of uint8 or float images, for FID-like metrics."""
        return _in_batches(self.classifier.features, images)

    def agreement(self, images: Tensor, requested: Tensor, columns: Sequence[int | str] | None = None,
                  mask: Tensor | None = None, seed: int = 0) -> dict:
        """How often the judge sees what was requested: ``requested`` is bool (N, 10), or (N, k)
        for the attributes named or indexed in ``columns``; ``mask`` (its shape) marks the
        (image, attribute) pairs to score (default: all). Returns the raw and balanced
        agreement with the shuffled baseline (:func:`minildm.evaluation.agreement.agreement_report`),
        "face_rate" (fraction of all images judged faces) and "pairs" (scored)."""
        columns = range(len(toyfaces.ATTRIBUTES)) if columns is None else columns
        indices = [_attribute_index(column) for column in columns]
        requested = torch.as_tensor(requested).bool()
        if requested.shape != (len(images), len(indices)):
            raise MinildmError(f"expected requested attributes of shape {(len(images), len(indices))}, "
                               f"got {tuple(requested.shape)}")
        scored = torch.ones_like(requested) if mask is None else torch.as_tensor(mask).bool()
        if scored.shape != requested.shape:
            raise MinildmError(f"expected a mask of shape {tuple(requested.shape)}, got {tuple(scored.shape)}")
        attributes, is_face = self.predict(images)
        names = [toyfaces.ATTRIBUTES[i] for i in indices]
        report = agreement_report(attributes[:, indices], requested, names, scored, seed=seed)
        return {**report, "face_rate": is_face.float().mean().item()}


def _attribute_index(column: int | str) -> int:
    """The index in ``toyfaces.ATTRIBUTES`` of an attribute given by name or index."""
    names = toyfaces.ATTRIBUTES
    if isinstance(column, str) and column in names:
        return names.index(column)
    if not isinstance(column, str) and 0 <= int(column) < len(names):
        return int(column)
    raise MinildmError(f"unknown attribute {column!r}: use an index below {len(names)} or one of {', '.join(names)}")


def _degrade(images: Tensor, generator: torch.Generator) -> Tensor:
    """Blur half of the images (down- and upsampled by 2) and add Gaussian noise (std 0.03),
    so that slightly blurry or noisy diffusion samples still look like training data."""
    images, blur = images.clone(), torch.rand(len(images), generator=generator) < 0.5
    small = F.avg_pool2d(images[blur], 2)  # (M, 3, R/2, R/2)
    images[blur] = F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)
    return images.add_(0.03 * torch.randn(images.shape, generator=generator)).clamp_(-1, 1)


def _judge_targets(face_attributes: Tensor, n_non_faces: int) -> Tensor:
    """Targets (N + M, 11) for N faces then M non-faces: the faces' attributes and 1, then
    unknown attributes (NaN, left out of the loss) and 0 for the non-faces."""
    faces = F.pad(face_attributes.float(), (0, 1), value=1.0)  # (N, 11)
    others = F.pad(torch.full((n_non_faces, len(OUTPUTS) - 1), float("nan")), (0, 1), value=0.0)  # (M, 11)
    return torch.cat([faces, others])


def _train_judge(settings: dict, progress: bool) -> ToyFaceJudge:
    """Train the judge on ``train`` toy faces of data set ``seed`` and as many non-faces of seed
    ``seed + 1``, all slightly degraded; score it on ``heldout`` further faces of ``seed`` and
    as many non-faces of ``seed + 2``."""
    seed, resolution, n, heldout = (settings[key] for key in ("seed", "resolution", "train", "heldout"))
    faces, attributes = toyfaces.generate(n, resolution, seed)
    images = _degrade(torch.cat([faces, non_faces(n, resolution, seed + 1)]), torch.Generator().manual_seed(seed))
    classifier = train_classifier(float_to_uint8(images), _judge_targets(attributes, n), steps=settings["steps"],
                                  batch_size=settings["batch_size"], learning_rate=settings["learning_rate"],
                                  seed=seed, progress=progress)
    test_faces, test_attributes = toyfaces.generate(heldout, resolution, seed, start=n)
    test_images = torch.cat([test_faces, non_faces(heldout, resolution, seed + 2)])
    scores = accuracy(classifier, test_images, _judge_targets(test_attributes, heldout))  # (11,)
    return ToyFaceJudge(classifier, dict(zip(OUTPUTS, scores.tolist(), strict=True)))


def _cached_judge(path: Path, settings: dict) -> ToyFaceJudge | None:
    """The judge saved at ``path``; None if there is none, it is damaged or has other settings."""
    try:
        tensors, metadata = ckpt.load(path)
        if metadata.get("settings") != settings:
            return None
        classifier = AttributeClassifier(len(OUTPUTS))
        ckpt.load_weights(classifier, tensors, str(path))
    except ckpt.CheckpointError:
        return None
    return ToyFaceJudge(classifier, metadata["heldout_accuracy"])


class ToyFaceFeatures:
    """The judge's pooled features as the feature extractor of a toy-face FID and KID.

    Same formulas as the Inception FID (:mod:`minildm.evaluation.metrics`), on a network that was trained
    on toy faces: it works offline, scores hundreds of images per second on a CPU, and sees
    what matters for toy faces (hair, glasses, hat, smile, skin). Its numbers are on their own
    scale: compare them only with other toy-face distances, never with an Inception FID.
    """

    def __init__(self, judge: ToyFaceJudge) -> None:
        self.judge = judge
        dimension = judge.classifier.head.in_features
        self.description = (f"toy-face judge, {dimension}-d pooled features, images area-resized to "
                            f"{INPUT_SIZE} px")

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 or float images (N, 3, R, R) -> features (N, D)."""
        return self.judge.features(images)


def load_judge(cache_dir: str | Path | None = None, progress: bool = True) -> ToyFaceJudge:
    """The toy-face judge, from ``cache_dir`` (default ``data_dir() / "judge"``) or trained.

    Training (about a minute on one CPU core) follows ``JUDGE_SETTINGS`` (:func:`_train_judge`).
    The weights are saved with the settings and held-out accuracies in the file's metadata;
    a cache made with other settings (or damaged) is trained again.
    """
    path = Path(cache_dir if cache_dir is not None else data_dir() / "judge") / JUDGE_FILE
    settings = dict(JUDGE_SETTINGS)
    with ckpt.exclusive(path):  # two processes that both need it train it once
        judge = _cached_judge(path, settings)
        if judge is None:
            judge = _train_judge(settings, progress)
            ckpt.save_atomic(judge.classifier.state_dict(), path,
                             {"settings": settings, "heldout_accuracy": judge.heldout_accuracy})
    return judge
