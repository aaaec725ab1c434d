"""Ranking metrics (nDCG) in numpy: eval must not import scikit-learn (tests check it against sklearn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ndcg_at(flags: Sequence[bool], n_relevant: int, k: int) -> float:
    """Binary-relevance nDCG@k of one ranking, with the ideal over *all* relevant products, not just the found ones.

    A short list is not credited with items it did not return; relevant items it missed still count in the ideal.
    Same value as scikit-learn's ndcg_score on that list (tests/test_evaluation.py checks it).
    """
    gains = np.zeros(k)
    top = np.asarray(flags[:k], dtype=float)
    gains[: len(top)] = top
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, max(n_relevant, int(sum(flags))))].sum()
    return float(gains @ discounts / ideal) if ideal > 0 else 0.0
