"""Tests for the toy-face judge and the attribute classifier (minildm/judge.py)."""
import os

import pytest
import torch
from einops import rearrange

from minildm import checkpoint
from minildm.data import toyfaces
from minildm.evaluation import judge
from minildm.config import MinildmError
from minildm.data.images import float_to_uint8
from minildm.evaluation.judge import (JUDGE_FILE, OUTPUTS, AttributeClassifier, ToyFaceFeatures, ToyFaceJudge, load_judge,
                           non_faces, train_attribute_classifier)
from minildm.evaluation.metrics import feature_distances

FRESH_SEED = 31_337  # a toy-face data set that the judge never trains on
COLUMN = {name: k for k, name in enumerate(toyfaces.ATTRIBUTES)}


@pytest.fixture(scope="module")
def trained_judge():
    """The judge from the default cache, trained there (about a minute) on the first run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_judge(progress=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fresh_faces():
    """1000 toy faces at 32 px from a data set the judge never saw: images, attributes."""
    return toyfaces.generate(1000, 32, seed=FRESH_SEED)


def test_judge_reads_every_attribute_of_fresh_faces(trained_judge, fresh_faces):
    images, attributes = fresh_faces
    predicted, is_face = trained_judge.predict(images)
    assert predicted.shape == attributes.shape and predicted.dtype == torch.bool
    per_attribute = (predicted == attributes).float().mean(dim=0)
    assert (per_attribute >= 0.97).all(), dict(zip(toyfaces.ATTRIBUTES, per_attribute.tolist()))
    assert is_face.float().mean() >= 0.97
    assert set(trained_judge.heldout_accuracy) == set(OUTPUTS)
    assert min(trained_judge.heldout_accuracy.values()) >= 0.95


def test_judge_separates_faces_from_non_faces(trained_judge, fresh_faces):
    negatives = non_faces(1000, 32, seed=FRESH_SEED)
    _, faces_judged = trained_judge.predict(fresh_faces[0])
    _, negatives_judged = trained_judge.predict(negatives)
    balanced_accuracy = (faces_judged.float().mean() + (~negatives_judged).float().mean()) / 2
    assert balanced_accuracy >= 0.95
    shuffled, blended, background, noise = rearrange(negatives_judged.float(), "(kind n) -> kind n", kind=4).mean(1)
    assert max(shuffled, background, noise) <= 0.05 and blended <= 0.35


def test_judge_works_at_other_resolutions_and_on_uint8(trained_judge):
    images, attributes = toyfaces.generate(300, 64, seed=FRESH_SEED, start=2000)
    predicted, is_face = trained_judge.predict(images)
    assert ((predicted == attributes).float().mean(dim=0) >= 0.95).all()
    assert is_face.float().mean() >= 0.95
    from_uint8, _ = trained_judge.predict(float_to_uint8(images))
    assert (from_uint8 == predicted).float().mean() >= 0.99
    features = trained_judge.features(images)
    assert features.shape == (300, trained_judge.classifier.head.in_features)
    assert torch.allclose(features[:5], trained_judge.classifier.features(images[:5]), atol=1e-5)


@pytest.mark.parametrize("parameter, attribute", [("eyeglasses", "Eyeglasses"), ("hat", "Wearing_Hat"),
                                                  ("smiling", "Smiling")])
def test_flipping_one_attribute_flips_the_judgement(trained_judge, parameter, attribute):
    params = toyfaces.sample_face_params(400, seed=FRESH_SEED, start=5000)
    flipped = {name: value.copy() for name, value in params.items()}
    flipped[parameter] = ~params[parameter]
    before, _ = trained_judge.predict(toyfaces.render_faces(params, 32))
    after, _ = trained_judge.predict(toyfaces.render_faces(flipped, 32))
    column = COLUMN[attribute]
    followed = (before[:, column] == torch.as_tensor(params[parameter])) & (after[:, column] != before[:, column])
    assert followed.float().mean() >= 0.95


@pytest.fixture
def fake_judge(monkeypatch):
    """A judge whose predictions for 3 images are fixed by hand."""
    fake = ToyFaceJudge(AttributeClassifier(len(OUTPUTS)), {})
    predicted = torch.zeros(3, 10, dtype=torch.bool)
    predicted[0, COLUMN["Eyeglasses"]] = predicted[1, COLUMN["Smiling"]] = predicted[2, COLUMN["Bald"]] = True
    is_face = torch.tensor([True, False, True])
    monkeypatch.setattr(fake, "predict", lambda images: (predicted.clone(), is_face))
    return fake, predicted


def test_agreement_matches_a_hand_count(fake_judge):
    fake, predicted = fake_judge
    images = torch.zeros(3, 3, 32, 32)
    requested = predicted.clone()
    requested[0, COLUMN["Eyeglasses"]] = False  # 3 of the 30 pairs disagree, 2 of them on Smiling
    requested[0, COLUMN["Smiling"]] = requested[2, COLUMN["Smiling"]] = True
    result = fake.agreement(images, requested)
    assert result["pairs"] == 30 and result["accuracy"] == pytest.approx(27 / 30)
    assert result["face_rate"] == pytest.approx(2 / 3)
    assert result["per_attribute"]["Smiling"] == pytest.approx(1 / 3)
    assert result["per_attribute"]["Eyeglasses"] == pytest.approx(2 / 3)
    assert result["per_attribute"]["Bald"] == 1.0 and len(result["per_attribute"]) == 10

    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, COLUMN["Smiling"]] = mask[0, COLUMN["Bald"]] = True  # 4 pairs, 2 of them disagree
    masked = fake.agreement(images, requested, mask=mask)
    assert masked["pairs"] == 4 and masked["accuracy"] == pytest.approx(2 / 4)
    assert masked["per_attribute"] == pytest.approx({"Smiling": 1 / 3, "Bald": 1.0})

    chosen = requested[:, [COLUMN["Smiling"], COLUMN["Wearing_Hat"]]]  # 2 of 6 pairs disagree
    columns = fake.agreement(images, chosen, columns=["Smiling", COLUMN["Wearing_Hat"]])
    assert columns["pairs"] == 6 and columns["accuracy"] == pytest.approx(4 / 6)
    assert set(columns["per_attribute"]) == {"Smiling", "Wearing_Hat"}


def test_non_faces_are_the_four_kinds_in_order():
    images = non_faces(8, 32, seed=5)
    assert images.shape == (8, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, non_faces(8, 32, seed=5))
    assert (images - non_faces(8, 32, seed=6)).abs().mean() > 0.05
    faces, _ = toyfaces.generate(6, 32, seed=5)  # 2 to shuffle, then 2 pairs to blend
    for shuffled, face in zip(images[:2], faces[:2]):
        tiles = [rearrange(x, "c (gh h) (gw w) -> (gh gw) (c h w)", gh=4, gw=4) for x in (shuffled, face)]
        assert not torch.equal(*tiles)  # moved, but the same tiles
        assert torch.equal(tiles[0].sort(dim=0).values, tiles[1].sort(dim=0).values)
    assert torch.allclose(images[2:4], (faces[2::2] + faces[3::2]) / 2)
    def roughness(x):  # mean absolute difference of horizontal neighbours
        return (x - x.roll(1, dims=3))[..., 1:].abs().mean()

    assert roughness(images[4:6]) < 0.02 < roughness(faces)  # backgrounds: smooth gradients
    assert roughness(images[6:]) < 0.2 and images[6:].std() > 0.2  # noise: smooth, unlike white noise (~0.67)


def test_load_judge_uses_its_cache_and_retrains_on_other_settings(tmp_path, monkeypatch):
    tiny = {**judge.JUDGE_SETTINGS, "train": 64, "heldout": 32, "steps": 2, "batch_size": 16}
    monkeypatch.setattr(judge, "JUDGE_SETTINGS", tiny)
    first = load_judge(tmp_path, progress=False)
    path = tmp_path / JUDGE_FILE
    os.utime(path, ns=(10**18, 10**18))  # a known modification time

    train = judge._train_judge
    monkeypatch.setattr(judge, "_train_judge", lambda *args: pytest.fail("the cache was not used"))
    second = load_judge(tmp_path, progress=False)
    assert path.stat().st_mtime_ns == 10**18
    assert second.heldout_accuracy == pytest.approx(first.heldout_accuracy)
    for name, value in first.classifier.state_dict().items():
        assert torch.equal(second.classifier.state_dict()[name], value)

    monkeypatch.setattr(judge, "_train_judge", train)
    monkeypatch.setattr(judge, "JUDGE_SETTINGS", {**tiny, "steps": 3})
    load_judge(tmp_path, progress=False)
    assert path.stat().st_mtime_ns != 10**18
    assert checkpoint.load(path)[1]["settings"]["steps"] == 3

    path.write_bytes(b"not a safetensors file")
    load_judge(tmp_path, progress=False)
    assert checkpoint.load(path)[1]["settings"]["steps"] == 3


def separable_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images (n, 3, 32, 32) with two balanced labels: a bright top half, a bright centre.
    Both are mirror-invariant, so the classifier's left-right flips keep them."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randperm(n, generator=generator) < n // 2 for _ in range(2)], dim=1)  # (n, 2)
    images = 0.3 * torch.randn(n, 3, 32, 32, generator=generator)
    images[:, :, :16] += 0.6 * labels[:, 0, None, None, None]
    images[:, :, 12:20, 12:20] += 0.6 * labels[:, 1, None, None, None]
    return images.clamp(-1, 1), labels


def test_train_attribute_classifier_held_out_accuracy_is_honest(one_thread):
    train_images, train_labels = separable_task(512, seed=0)
    heldout_images, heldout_labels = separable_task(256, seed=1)
    classifier, accuracy = train_attribute_classifier(float_to_uint8(train_images), train_labels,
                                                      heldout_images, heldout_labels, steps=40)
    assert isinstance(classifier, AttributeClassifier) and accuracy.shape == (2,)
    assert (accuracy >= 0.98).all()

    generator = torch.Generator().manual_seed(2)  # random labels on noise: memorised, never generalised
    noise = torch.rand(64 + 256, 3, 32, 32, generator=generator) * 2 - 1
    labels = torch.rand(64 + 256, 2, generator=generator) < 0.5
    classifier, chance = train_attribute_classifier(noise[:64], labels[:64], noise[64:], labels[64:], steps=60)
    assert (judge.accuracy(classifier, noise[:64], labels[:64]) >= 0.95).all()
    assert ((chance - 0.5).abs() <= 0.15).all()


def test_wrong_inputs_raise_minildm_errors(fake_judge):
    fake, predicted = fake_judge
    classifier = AttributeClassifier(2)
    images = torch.zeros(3, 3, 32, 32)
    with pytest.raises(MinildmError, match="shape"):
        ToyFaceJudge(classifier, {}).predict(torch.zeros(3, 1, 32, 32))
    with pytest.raises(MinildmError, match="R >= 16"):
        ToyFaceJudge(classifier, {}).features(torch.zeros(3, 3, 8, 8))
    with pytest.raises(MinildmError, match="targets"):
        judge.train_classifier(images, torch.zeros(2, 2), steps=1)
    with pytest.raises(MinildmError, match="targets"):
        judge.accuracy(classifier, images, torch.zeros(3))
    with pytest.raises(MinildmError, match="requested"):
        fake.agreement(images, predicted[:, :9])
    with pytest.raises(MinildmError, match="requested"):
        fake.agreement(images[:2], predicted)
    with pytest.raises(MinildmError, match="mask"):
        fake.agreement(images, predicted, mask=torch.ones(3, 9, dtype=torch.bool))
    with pytest.raises(MinildmError, match="unknown attribute"):
        fake.agreement(images, predicted[:, :1], columns=["Moustache"])
    with pytest.raises(MinildmError, match="multiple of 4"):
        non_faces(4, 30, seed=0)


def test_toy_face_distances_rank_fresh_faces_above_hatless_faces_and_non_faces(trained_judge, fresh_faces):
    images, attributes = fresh_faces
    features = ToyFaceFeatures(trained_judge)
    assert torch.equal(features(images[:8]), trained_judge.features(images[:8]))
    assert features.description.startswith("toy-face judge, 64-d")
    reference, same = features(images[:500]), features(images[500:])
    hatless = features(images[500:][~attributes[500:, COLUMN["Wearing_Hat"]]])
    strangers = features(non_faces(500, 32, seed=FRESH_SEED))
    scores = [feature_distances(reference, other)["fid"] for other in (same, hatless, strangers)]
    assert scores[0] < scores[1] < scores[2], scores  # a shifted attribute costs less than no faces at all


def test_balanced_training_stops_a_rare_attribute_from_being_always_off(one_thread):
    # pure-noise images carry no signal: plain cross-entropy learns the 5% prior (always off),
    # the balanced loss weighs the rare positives 19 times and its best constant is 50/50
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2000, 3, 16, 16, generator=generator) * 2 - 1
    targets = (torch.rand(2000, 1, generator=generator) < 0.05).float()
    fresh = torch.rand(500, 3, 16, 16, generator=generator) * 2 - 1  # nothing memorised applies to these
    predicted_on = {}
    for balance in (False, True):
        classifier = judge.train_classifier(images, targets, steps=150, batch_size=64, balance=balance, width=8)
        with torch.no_grad():
            predicted_on[balance] = (classifier(fresh) > 0).float().mean().item()
    assert predicted_on[False] < 0.05
    assert predicted_on[True] > 0.2
