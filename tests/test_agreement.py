"""Raw and balanced agreement (minildm.evaluation.agreement), against hand counts and known cases."""

import pytest
import torch

from minildm.config import MinildmError
from minildm.evaluation.agreement import (
    agreement_report,
    attribute_rates,
    balanced_agreement,
)

NAMES = ["Smiling", "Wearing_Hat"]


def test_rates_match_a_hand_count():
    requested = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    predicted = torch.tensor([[1, 0], [0, 0], [0, 0], [1, 1]], dtype=torch.bool)
    rates = attribute_rates(predicted, requested, NAMES)
    # Smiling: asked on twice (seen once), off twice (not seen once)
    assert rates["Smiling"] == pytest.approx({"agreement": 2 / 4, "asked_on": 2, "asked_off": 2,
                                              "true_positive_rate": 1 / 2, "true_negative_rate": 1 / 2,
                                              "balanced": 1 / 2})
    # Wearing_Hat: asked on once (missed), off three times (a false hat once)
    assert rates["Wearing_Hat"]["true_positive_rate"] == 0 and rates["Wearing_Hat"]["true_negative_rate"] == 2 / 3
    assert balanced_agreement(rates) == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_a_model_that_never_draws_a_rare_attribute_scores_high_raw_but_half_balanced():
    requested = torch.zeros(1000, 1, dtype=torch.bool)
    requested[:50] = True  # 5% ask for a hat, as on CelebA
    never = torch.zeros_like(requested)
    report = agreement_report(never, requested, ["Wearing_Hat"])
    assert report["accuracy"] == pytest.approx(0.95)
    assert report["balanced_agreement"] == pytest.approx(0.5)


def test_a_perfect_model_scores_one_and_its_shuffled_baseline_about_half():
    generator = torch.Generator().manual_seed(0)
    requested = torch.rand(2000, 2, generator=generator) < torch.tensor([0.5, 0.1])
    report = agreement_report(requested.clone(), requested, NAMES, seed=1)
    assert report["accuracy"] == 1 and report["balanced_agreement"] == 1
    assert report["balanced_agreement_shuffled"] == pytest.approx(0.5, abs=0.04)
    assert report["accuracy_shuffled"] > report["balanced_agreement_shuffled"] + 0.1  # raw rewards the imbalance
    assert report["pairs"] == 4000


def test_the_mask_limits_the_pairs_and_one_sided_attributes_get_no_balanced_score():
    requested = torch.tensor([[1, 1], [0, 1], [1, 1]], dtype=torch.bool)
    predicted = torch.tensor([[1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    scored = torch.tensor([[1, 1], [1, 1], [0, 1]], dtype=torch.bool)
    rates = attribute_rates(predicted, requested, NAMES, scored)
    assert rates["Smiling"]["asked_on"] == 1 and rates["Smiling"]["asked_off"] == 1  # row 3 is not scored
    assert rates["Smiling"]["balanced"] == pytest.approx(0.5)
    assert "balanced" not in rates["Wearing_Hat"] and rates["Wearing_Hat"]["agreement"] == pytest.approx(2 / 3)
    assert balanced_agreement(rates) == pytest.approx(0.5)  # only Smiling has both sides
    report = agreement_report(predicted, requested, NAMES, scored)
    assert report["pairs"] == 5 and report["accuracy"] == pytest.approx(3 / 5)


def test_shapes_that_disagree_give_one_error():
    with pytest.raises(MinildmError, match="must all be"):
        attribute_rates(torch.zeros(3, 2, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool), NAMES)
