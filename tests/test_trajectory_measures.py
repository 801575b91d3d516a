"""Measures of a sampling trajectory (notebook 06, section 5): distance_to_result, settling_step."""

import pytest
import torch

from minildm.sampling import distance_to_result, settling_step


def test_distance_to_result_is_the_rms_difference_per_step_and_sample():
    result = torch.zeros(2, 3, 4, 4)
    predictions = [torch.full((2, 3, 4, 4), 2.0), torch.stack([torch.full((3, 4, 4), 1.0), torch.zeros(3, 4, 4)])]
    predictions[1][0, 0] = 3.0  # one channel of sample 0: squares 9 on 16 of its 48 numbers, 1 elsewhere
    distances = distance_to_result(predictions, result)
    assert distances.shape == (2, 2)
    assert torch.allclose(distances[0], torch.tensor([2.0, 2.0]))
    assert distances[1, 0].item() == pytest.approx(((16 * 9 + 32 * 1) / 48) ** 0.5)
    assert distances[1, 1].item() == 0.0


def test_settling_step_is_where_the_curve_stays_below_the_fraction():
    curve = torch.tensor([10.0, 8.0, 4.0, 6.0, 3.0, 1.0, 0.0])
    assert settling_step(curve, 0.5) == 5  # 4.0 at step 3 dips below 5, but 6.0 at step 4 rises again
    assert settling_step(curve, 0.2) == 6
    assert settling_step(curve, 0.0) == 7  # only the last value, 0, is at or below 0
    assert settling_step(curve, 1.0) == 1  # never above the first value
    assert settling_step(torch.tensor([1.0, 2.0, 3.0]), 0.5) == 4  # never settles


def test_settling_step_refuses_what_is_not_a_curve():
    with pytest.raises(ValueError):
        settling_step(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError):
        settling_step(torch.zeros(0), 0.5)
