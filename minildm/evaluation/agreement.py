"""Does a sample show what was asked for? Raw and balanced agreement, and their baselines.

A classifier reads attributes off the samples (``predicted``) and we compare them with the
request (``requested``), both bool (N, k). The raw agreement, the fraction of (sample,
attribute) pairs where the two match, rewards the data's imbalance: on CelebA about 5% of
faces wear a hat, so a model that never draws one agrees on Wearing_Hat 95% of the time.
The balanced agreement does not. For each attribute it averages

- the true-positive rate: asked for the attribute, how often the classifier sees it, and
- the true-negative rate: asked for its absence, how often the classifier does not see it,

the balanced accuracy of classification (Brodersen et al., ICPR 2010), with the request as
the truth. A model that ignores the request scores 0.5 on every attribute, whatever the
imbalance. Two baselines make the numbers readable: the same samples scored against
requests shuffled between samples (what ignoring the request scores on this data, about
0.5), and the classifier's own balanced accuracy on real held-out images (the best a
perfect model can score with this classifier as the measuring stick).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from minildm.config import MinildmError


def attribute_rates(predicted: Tensor, requested: Tensor, names: Sequence[str], scored: Tensor | None = None) -> dict:
    """Per attribute: raw agreement, true-positive and true-negative rates, their mean (the
    balanced agreement) and how often it was asked for on and off, over the scored pairs.

    ``predicted``, ``requested``, ``scored``: bool (N, k); ``names``: k names. Attributes that
    are never asked for on, or never off, get no balanced score (it would be one rate only).
    """
    scored = torch.ones_like(requested, dtype=torch.bool) if scored is None else scored.bool()
    if not predicted.shape == requested.shape == scored.shape == (predicted.shape[0], len(names)):
        raise MinildmError(f"predicted {tuple(predicted.shape)}, requested {tuple(requested.shape)} and scored "
                           f"{tuple(scored.shape)} must all be (N, {len(names)})")
    asked_on, asked_off = requested.bool() & scored, ~requested.bool() & scored  # (N, k) each
    seen = predicted.bool()
    rates = {}
    for j, name in enumerate(names):
        on, off = int(asked_on[:, j].sum()), int(asked_off[:, j].sum())
        if on + off == 0:
            continue
        row = {"agreement": ((seen[:, j] == requested[:, j].bool()) & scored[:, j]).sum().item() / (on + off),
               "asked_on": on, "asked_off": off}
        if on and off:
            row["true_positive_rate"] = (seen[:, j] & asked_on[:, j]).sum().item() / on
            row["true_negative_rate"] = (~seen[:, j] & asked_off[:, j]).sum().item() / off
            row["balanced"] = (row["true_positive_rate"] + row["true_negative_rate"]) / 2
        rates[name] = row
    return rates


def balanced_agreement(rates: dict) -> float | None:
    """Mean balanced agreement over the attributes of :func:`attribute_rates` that have one."""
    balanced = [row["balanced"] for row in rates.values() if "balanced" in row]
    return sum(balanced) / len(balanced) if balanced else None


def agreement_report(predicted: Tensor, requested: Tensor, names: Sequence[str], scored: Tensor | None = None,
                     seed: int = 0) -> dict:
    """Raw and balanced agreement of samples with their requests, next to the shuffled baseline:
    the same samples against the requests (and scored masks) of a seeded permutation of the
    samples. Keys: ``accuracy`` (raw, over all scored pairs), ``balanced_agreement``,
    ``accuracy_shuffled``, ``balanced_agreement_shuffled``, ``per_attribute`` (raw, per name),
    ``per_attribute_rates`` (see :func:`attribute_rates`) and ``pairs`` (scored)."""
    scored = torch.ones_like(requested, dtype=torch.bool) if scored is None else scored.bool()
    rates = attribute_rates(predicted, requested, names, scored)
    order = torch.randperm(len(requested), generator=torch.Generator().manual_seed(seed))
    shuffled = attribute_rates(predicted, requested[order], names, scored[order])
    matches = (predicted.bool() == requested.bool()) & scored
    shuffled_matches = (predicted.bool() == requested[order].bool()) & scored[order]
    return {"accuracy": (matches.sum() / scored.sum()).item(),
            "balanced_agreement": balanced_agreement(rates),
            "accuracy_shuffled": (shuffled_matches.sum() / scored[order].sum()).item(),
            "balanced_agreement_shuffled": balanced_agreement(shuffled),
            "per_attribute": {name: row["agreement"] for name, row in rates.items()},
            "per_attribute_rates": rates, "pairs": int(scored.sum())}
