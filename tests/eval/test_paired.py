"""The paired loss bound that DyVEDeep's calibration holds its budget to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dyve.errors import DyveError
from dyve.eval.paired import (
    CORRECT,
    PairedLoss,
    check_confidence,
    choose,
    family_confidence,
    paired_loss,
    paired_runs,
    rule_note,
    save_predictions,
    signed_pp,
)


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


def test_the_two_sided_interval_holds_each_tail_at_half_the_rest() -> None:
    p = PairedLoss(5000, 184, 137)
    lo, hi = p.interval_pp(0.95)
    assert (lo + hi) / 2 == pytest.approx(p.loss_pp)
    assert hi == pytest.approx(p.bound_pp(0.975))  # 1.96 standard errors, not 1.645
    assert (lo, hi) == pytest.approx((0.24, 1.64), abs=0.005)  # the LC-Net page's _g01


def _run(d: Path, predictions: list[int], labels: list[int]) -> None:
    """A run directory: its predictions, correctness and metrics (as `dyve eval` writes)."""
    save_predictions(d, np.array(predictions), np.array(labels))
    right = np.array(predictions) == np.array(labels)
    (d / "metrics.json").write_text(json.dumps({"n": len(right), "top1": 100 * right.mean()}))


def test_a_value_that_rounds_to_zero_reads_plus_zero() -> None:
    _, hi = PairedLoss(5000, 151, 187).interval_pp(0.95)
    assert -0.005 < -hi < 0  # the run-minus-static interval's end as the page shows it
    assert signed_pp(-hi) == "+0.00"
    assert [signed_pp(x) for x in (-0.0, 0.004, -0.005001, 1.234, -1.236)] == [
        "+0.00", "+0.00", "-0.01", "+1.23", "-1.24"]  # fmt: skip


def test_runs_compare_paired_from_their_files(tmp_path: Path) -> None:
    labels = [0, 1, 2, 3, 4, 5, 6, 7]
    ref, run, old = tmp_path / "ref", tmp_path / "run", tmp_path / "old"
    _run(ref, [0, 1, 2, 3, 9, 9, 6, 7], labels)
    _run(run, [0, 9, 9, 3, 4, 9, 6, 7], labels)
    assert np.load(run / "predictions.npy").tolist() == [0, 9, 9, 3, 4, 9, 6, 7]
    assert np.load(run / CORRECT).tolist() == [1, 0, 0, 1, 1, 0, 1, 1]
    assert paired_runs(ref, run) == PairedLoss(8, 2, 1)
    assert paired_runs(run, ref) == PairedLoss(8, 1, 2)
    old.mkdir()  # a run from before the files
    assert paired_runs(ref, old) is None
    assert paired_runs(old, ref) is None
    _run(old, [0] * 5, [0] * 5)  # other images
    with pytest.raises(DyveError, match=r"scored 8 images, .* 5"):
        paired_runs(ref, old)
    # a file that disagrees with its own run's metrics (left from another report)
    (old / "metrics.json").write_text(json.dumps({"n": 5, "top1": 80.0}))
    with pytest.raises(DyveError, match=r"old/correct.npy: 5 images at 100.00 %, its metrics"):
        paired_runs(ref, old)
    with pytest.raises(ValueError, match="predictions for"):
        save_predictions(old, np.zeros(4, int), np.zeros(5, int))


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


def _pts(*counts: tuple[int, int, float]) -> list[dict]:
    """Points along a trajectory (step = position): (worse, better, cost)."""
    return [{"step": i, "worse": w, "better": b, "cost": c} for i, (w, b, c) in enumerate(counts)]


def test_choose_takes_the_cheapest_point_its_rule_passes() -> None:
    """On 1000 images with a 0.5 pp budget at 90 %: step 1 (loss 0.5 pp, bound 0.92) fails
    and the cheaper step 2 (one discordant image: bound 0.23) passes on its own. ``bound``
    takes step 2; ``monotone`` stops at step 1's failure and takes step 0; Bonferroni over
    three points (z 1.83) still passes step 2 (0.28)."""
    pts = _pts((0, 0, 10.0), (8, 3, 9.0), (1, 0, 8.0))
    assert choose(pts, 1000, 0.5, 0.9, "cost", "bound") == 2
    assert choose(pts, 1000, 0.5, 0.9, "cost", "monotone") == 0
    assert choose(pts, 1000, 0.5, 0.9, "cost", "bonferroni") == 2
    assert choose(pts, 1000, 0.5, 0.9, "cost", "monotone-bonferroni") == 0
    assert choose(pts, 1000, 0.5, None, "cost", "bound") == 2


def test_bonferroni_widens_the_bound_with_the_number_of_points() -> None:
    """Step 1 (15 worse on 5000: loss 0.3 pp, se 0.077 pp) passes at 90 % among two points
    (z 1.64: 0.43); among 40 points (z 2.81: 0.52) it fails, and only step 0 is left."""
    two = _pts((0, 0, 10.0), (15, 0, 5.0))
    assert choose(two, 5000, 0.5, 0.9, "cost", "bonferroni") == 1
    forty = two + _pts(*[(100, 0, 1.0)] * 40)[2:]
    assert len(forty) == 40
    assert choose(forty, 5000, 0.5, 0.9, "cost", "bound") == 1
    assert choose(forty, 5000, 0.5, 0.9, "cost", "bonferroni") == 0


def test_choose_without_a_passing_point_or_with_a_bad_rule() -> None:
    pts = _pts((50, 0, 10.0))
    assert choose(pts, 1000, 0.5, 0.9, "cost") is None
    with pytest.raises(ValueError, match="rule"):
        choose(pts, 1000, 0.5, 0.9, "cost", "cheapest")


def test_the_family_size_is_fixed_by_the_caller() -> None:
    """Bonferroni holds a point to the family the procedure compares, not to the points it
    happens to hold: one point among a planned 40 is held to z 2.81 and fails."""
    one = _pts((15, 0, 5.0))
    assert choose(one, 5000, 0.5, 0.9, "cost", "bonferroni") == 0
    assert choose(one, 5000, 0.5, 0.9, "cost", "bonferroni", k=40) is None
    assert family_confidence(0.9, "bonferroni", 40) == pytest.approx(0.9975)
    assert family_confidence(0.9, "monotone", 40) == 0.9
    assert family_confidence(None, "bonferroni", 40) is None


def test_rule_note_names_the_rule_where_it_acts() -> None:
    assert rule_note(0.9, "bonferroni") == " (90% bound, bonferroni rule)"
    assert rule_note(0.9, None, ("cross-fitted",)) == " (90% bound, cross-fitted, bound rule)"
    assert rule_note(None, "bonferroni") == ""  # no bound to widen
    assert rule_note(None, "monotone") == " (monotone rule)"
