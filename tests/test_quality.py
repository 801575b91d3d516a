"""The quality report's columns against closed forms and constructed cases."""

import colorsys

import pytest
import torch

from minildm.evaluation.judge import OUTPUTS
from minildm.evaluation.quality import attribute_rates, knn_radii, manifold_coverage, precision_recall, saturation


def test_knn_radii_are_the_kth_distance_to_another_point():
    points = torch.arange(10.0)[:, None]  # 0, 1, ..., 9 on a line
    assert knn_radii(points, k=1).tolist() == [1.0] * 10
    # the second nearest: 2 at both ends (0 -> 1, 2), 1 inside (5 -> 4, 6)
    assert knn_radii(points, k=2).tolist() == [2.0] + [1.0] * 8 + [2.0]
    with pytest.raises(ValueError, match="more than k"):
        knn_radii(points[:3], k=3)


def test_points_on_a_ball_boundary_count_and_points_beyond_do_not():
    manifold = torch.arange(10.0)[:, None]  # every ball has radius 1 at k = 1
    points = torch.tensor([[0.5], [10.0], [11.5], [-1.0], [-1.01]])
    # 0.5 and 10 and -1 are within 1 of a manifold point; 11.5 and -1.01 are not
    assert manifold_coverage(manifold, points, k=1) == pytest.approx(3 / 5)


def test_identical_sets_have_full_precision_and_recall():
    features = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(features, features.clone()) == {"precision": 1.0, "recall": 1.0}


def test_a_dropped_mode_lowers_recall_and_blurred_fakes_lower_precision():
    generator = torch.Generator().manual_seed(1)
    mode_a = torch.randn(50, 4, generator=generator)
    mode_b = torch.randn(50, 4, generator=generator) + 100
    real = torch.cat([mode_a, mode_b])
    # the fakes are mode a alone: every fake is real (precision 1), half the reals are missed
    assert precision_recall(real, mode_a.clone()) == {"precision": 1.0, "recall": 0.5}
    # fakes halfway between the modes (the "average face"): outside the real manifold
    between = torch.randn(100, 4, generator=generator) * 0.1 + 50
    assert precision_recall(real, between)["precision"] == 0.0


def test_saturation_equals_hsv_from_colorsys():
    pixels = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    pixels[0, :, 0, 0] = 0  # a black pixel: saturation 0 by definition
    expected = torch.tensor([[[colorsys.rgb_to_hsv(*(pixels[n, :, y, x].double() / 255).tolist())[1]
                               for x in range(7)] for y in range(5)] for n in range(2)])
    assert torch.allclose(saturation(pixels).double(), expected.double(), atol=1e-6)
    grey = torch.full((1, 3, 4, 4), 0.3)  # float input in [-1, 1]: grey has no saturation
    assert saturation(grey).abs().max().item() < 1e-6


class CountingJudge:
    """Reads a fixed answer per image: attribute j is present in image i iff (i + j) % 3 == 0."""

    def predict(self, images):
        n = len(images)
        attributes = (torch.arange(n)[:, None] + torch.arange(len(OUTPUTS) - 1)) % 3 == 0
        return attributes, torch.arange(n) < n - 1  # every image but the last is a face


def test_attribute_rates_count_what_the_judge_reads():
    rates = attribute_rates(CountingJudge(), torch.zeros(7, 3, 32, 32, dtype=torch.uint8))
    assert list(rates) == list(OUTPUTS)
    # attribute 0: images 0, 3, 6 -> 3/7; attribute 1: images 2, 5 -> 2/7; attribute 2: 1, 4 -> 2/7
    assert [rates[name] for name in OUTPUTS[:3]] == [round(3 / 7, 4), round(2 / 7, 4), round(2 / 7, 4)]
    assert rates["face"] == round(6 / 7, 4)
