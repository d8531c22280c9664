"""An accuracy loss that holds beyond the images it was measured on.

An operating point chosen "within 0.5 pp of the reference on the calibration split" is
chosen among many noisy estimates, and the cheapest one that passes is the one whose
estimate happened to be lowest: on unseen images it loses more. A paired comparison
gives the loss's sampling error: only the images where the two networks disagree about
correctness move the difference, so with ``worse`` images the reference gets right and
the point gets wrong, and ``better`` the other way, over ``n`` images, the loss is
``(worse - better) / n`` and its standard error ``sqrt((d/n - loss^2) / n)`` with
``d = worse + better`` (normal approximation). The one-sided upper confidence bound
``loss + z * se`` is what a budget is held to. Choosing the cheapest of several points
that pass adds its own optimism; :func:`choose` holds the choice to rules that account
for it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from dyve._io import read_json, save_npy
from dyve.errors import DyveError

#: a run's per-image correctness on its split (bool ``.npy``, dataset order), written beside
#: its ``predictions.npy``: two runs on the same images compare paired from their files alone
CORRECT = "correct.npy"
#: the two-sided level of the paired intervals on the results pages
LEVEL = 0.95


@dataclass(frozen=True)
class PairedLoss:
    """Top-1 loss (pp) of a point against the reference on the same images, with its bound."""

    n: int
    #: images the reference gets right and the point wrong
    worse: int
    #: images the point gets right and the reference wrong
    better: int

    @property
    def loss_pp(self) -> float:
        return 100.0 * (self.worse - self.better) / self.n

    @classmethod
    def of(cls, reference_correct: np.ndarray, correct: np.ndarray) -> PairedLoss:
        """Count from per-image correctness (bool arrays of equal length)."""
        ref, ok = np.asarray(reference_correct, bool), np.asarray(correct, bool)
        if ref.shape != ok.shape or ref.ndim != 1:
            raise ValueError(f"need two equal 1-d arrays, got {ref.shape}, {ok.shape}")
        if len(ref) == 0:
            raise ValueError("no images to compare")
        return cls(len(ref), int((ref & ~ok).sum()), int((ok & ~ref).sum()))

    def margin_pp(self, confidence: float | None) -> float:
        """``z(confidence)`` standard errors of the loss, in pp (0 when ``confidence`` is None)."""
        if confidence is None:
            return 0.0
        check_confidence(confidence)
        d, diff = (self.worse + self.better) / self.n, (self.worse - self.better) / self.n
        se = math.sqrt(max(d - diff * diff, 0.0) / self.n)
        return 100.0 * NormalDist().inv_cdf(confidence) * se

    def bound_pp(self, confidence: float | None) -> float:
        """The loss's one-sided upper confidence bound, in pp."""
        return self.loss_pp + self.margin_pp(confidence)

    def interval_pp(self, level: float) -> tuple[float, float]:
        """The loss's two-sided ``level`` confidence interval, in pp."""
        half = self.margin_pp(1 - (1 - level) / 2)
        return self.loss_pp - half, self.loss_pp + half


def signed_pp(x: float) -> str:
    """``x`` pp with its sign to two decimals, a value that rounds to zero as ``+0.00``
    (never ``-0.00``)."""
    return f"{round(x, 2) + 0.0:+.2f}"


def save_predictions(
    run: str | os.PathLike[str], predictions: np.ndarray, labels: np.ndarray
) -> None:
    """Write a run's ``predictions.npy`` (each sample's top-1 class) and :data:`CORRECT`."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape} predictions for {labels.shape} labels")
    save_npy(Path(run) / "predictions.npy", predictions)
    save_npy(Path(run) / CORRECT, predictions == labels)


def _correct(run: Path) -> np.ndarray:
    """A run's :data:`CORRECT`, refused unless it agrees with the run's ``metrics.json``
    (``n`` and ``top1``): a file left from another report would pair the wrong images."""
    correct: np.ndarray = np.load(run / CORRECT)
    m = read_json(run / "metrics.json")
    if correct.shape != (m["n"],) or abs(100 * correct.mean() - m["top1"]) > 1e-3:
        raise DyveError(
            f"{run / CORRECT}: {correct.size} images at {100 * correct.mean():.2f} %, its "
            f"metrics.json {m['n']} at {m['top1']:.2f} % (a file from another report?)"
        )
    return correct


def paired_runs(
    reference: str | os.PathLike[str], run: str | os.PathLike[str]
) -> PairedLoss | None:
    """``run``'s paired loss against ``reference``, two run directories scored on the same
    images, from their :data:`CORRECT` files; None when either has none (older runs)."""
    runs = [Path(reference), Path(run)]
    if not all((r / CORRECT).is_file() for r in runs):
        return None
    ref, ok = map(_correct, runs)
    if len(ref) != len(ok):
        raise DyveError(f"{runs[0]} scored {len(ref)} images, {runs[1]} {len(ok)}")
    return PairedLoss.of(ref, ok)


def paired_loss(reference: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> PairedLoss:
    """Count the images on which ``predictions`` and ``reference`` differ in correctness."""
    reference, predictions, labels = map(np.asarray, (reference, predictions, labels))
    if not (reference.shape == predictions.shape == labels.shape) or reference.ndim != 1:
        raise ValueError(
            f"need three equal 1-d arrays, got {reference.shape}, {predictions.shape}, "
            f"{labels.shape}"
        )
    return PairedLoss.of(reference == labels, predictions == labels)


#: how an operating point is chosen among verified points (:func:`choose`)
RULES = ("bound", "bonferroni", "monotone", "monotone-bonferroni")
#: the rule calibrations use unless told (benchmarks/NOTES.md, session 18)
DEFAULT_RULE = "bonferroni"


def check_rule(rule: str) -> None:
    """Raise ``ValueError`` unless ``rule`` is one of :data:`RULES`."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def family_confidence(confidence: float | None, rule: str, k: int) -> float | None:
    """The confidence each of ``k`` compared points is held to under ``rule``:
    ``1 - (1 - confidence) / k`` for the Bonferroni rules, else ``confidence``."""
    check_rule(rule)
    if confidence is None or not rule.endswith("bonferroni"):
        return confidence
    return 1 - (1 - confidence) / max(k, 1)


def passing(
    points: list[dict[str, Any]],
    n: int,
    budget_pp: float,
    confidence: float | None,
    rule: str = DEFAULT_RULE,
    k: int | None = None,
) -> list[dict[str, Any]]:
    """The points ``rule`` lets within ``budget_pp``, in trajectory order.

    ``points`` are dicts with ``step`` (their order along a trajectory of growing
    savings) and the paired counts ``worse`` and ``better`` on ``n`` images (or, from
    states without counts, a plain ``loss_pp``). ``bound``: a point's loss bound at
    ``confidence`` is within the budget. ``bonferroni``: the same at
    ``1 - (1 - confidence) / k``, so that the cheapest of ``k`` noisy estimates is held to
    ``confidence`` as a family; ``k`` is the number of points the procedure compares,
    fixed before it starts (default: ``len(points)``), so that adding points while
    searching does not move the bar. ``monotone``: a point passes only if every point
    before it passes too (steps add savings, so damage accumulates: a point passing after
    a failing one passed by luck). ``monotone-bonferroni``: both.
    """
    conf = family_confidence(confidence, rule, len(points) if k is None else k)

    def bound(p: dict[str, Any]) -> float:
        if "worse" not in p:
            return float(p["loss_pp"])
        return PairedLoss(n, int(p["worse"]), int(p["better"])).bound_pp(conf)

    ok = []
    for p in sorted(points, key=lambda p: p["step"]):
        if bound(p) <= budget_pp:
            ok.append(p)
        elif rule.startswith("monotone"):
            break
    return ok


def choose(
    points: list[dict[str, Any]],
    n: int,
    budget_pp: float,
    confidence: float | None,
    cost: str,
    rule: str = DEFAULT_RULE,
    k: int | None = None,
) -> int | None:
    """The ``step`` of the cheapest point (least ``cost``) that ``rule`` lets within the
    budget (:func:`passing`), or None."""
    ok = passing(points, n, budget_pp, confidence, rule, k)
    return min(ok, key=lambda p: p[cost])["step"] if ok else None


def rule_note(confidence: float | None, rule: str | None, extra: tuple[str, ...] = ()) -> str:
    """How a budget was held, for a results page: `` (90% bound, bonferroni rule)``; the
    rule is named where it acts (with a confidence, or when monotone); ``""`` if nothing."""
    rule = rule or "bound"  # runs from before the rules
    parts = [f"{confidence:.0%} bound"] if confidence else []
    parts += list(extra)
    if confidence or rule.startswith("monotone"):
        parts.append(f"{rule} rule")
    return f" ({', '.join(parts)})" if parts else ""


def check_confidence(confidence: float | None) -> None:
    """Raise ``ValueError`` unless ``confidence`` is None or in [0.5, 1)."""
    if confidence is not None and not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1) or None, got {confidence}")
