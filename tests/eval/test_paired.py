"""The paired loss bound that DyVEDeep's calibration holds its budget to."""

from __future__ import annotations

import numpy as np
import pytest

from dyve.eval.paired import PairedLoss, check_confidence, paired_loss


def test_counts_loss_and_bound() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    ref = np.array([0, 1, 2, 3, 9, 9, 6, 7])  # wrong on 4, 5
    pts = np.array([0, 9, 9, 3, 4, 9, 6, 7])  # wrong on 1, 2, 5; right on 4
    pl = paired_loss(ref, pts, labels)
    assert (pl.n, pl.worse, pl.better) == (8, 2, 1)
    assert pl.loss_pp == pytest.approx(12.5)
    # the standard error is that of the per-image differences (+1 worse, -1 better, 0 same)
    diff = np.array([0, 1, 1, 0, -1, 0, 0, 0], dtype=float)
    se = diff.std() / np.sqrt(len(diff)) * 100
    assert pl.margin_pp(0.9) == pytest.approx(1.2815516 * se)
    assert pl.bound_pp(0.9) == pytest.approx(12.5 + 1.2815516 * se)
    assert pl.margin_pp(0.95) > pl.margin_pp(0.9) > 0
    assert pl.margin_pp(None) == 0.0
    assert pl.bound_pp(None) == pl.loss_pp


def test_no_disagreement_has_no_margin() -> None:
    assert PairedLoss(100, 0, 0).bound_pp(0.99) == 0.0
    # the loss and its margin shrink together: same share, four times the images
    assert PairedLoss(400, 20, 8).margin_pp(0.9) == pytest.approx(
        PairedLoss(100, 5, 2).margin_pp(0.9) / 2
    )


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal 1-d"):
        paired_loss(np.zeros(3), np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="no images"):
        paired_loss(np.zeros(0), np.zeros(0), np.zeros(0))
    for bad in (0.2, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            check_confidence(bad)
    check_confidence(None)
    check_confidence(0.5)
