"""An accuracy loss that holds beyond the images it was measured on.

An operating point chosen "within 0.5 pp of the reference on the calibration split" is
chosen among many noisy estimates, and the cheapest one that passes is the one whose
estimate happened to be lowest: on unseen images it loses more. A paired comparison
gives the loss's sampling error: only the images where the two networks disagree about
correctness move the difference, so with ``worse`` images the reference gets right and
the point gets wrong, and ``better`` the other way, over ``n`` images, the loss is
``(worse - better) / n`` and its standard error ``sqrt((d/n - loss^2) / n)`` with
``d = worse + better`` (normal approximation). The one-sided upper confidence bound
``loss + z * se`` is what a budget is held to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


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


def paired_loss(reference: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> PairedLoss:
    """Count the images on which ``predictions`` and ``reference`` differ in correctness."""
    reference, predictions, labels = map(np.asarray, (reference, predictions, labels))
    if not (reference.shape == predictions.shape == labels.shape) or reference.ndim != 1:
        raise ValueError(
            f"need three equal 1-d arrays, got {reference.shape}, {predictions.shape}, "
            f"{labels.shape}"
        )
    return PairedLoss.of(reference == labels, predictions == labels)


def check_confidence(confidence: float | None) -> None:
    """Raise ``ValueError`` unless ``confidence`` is None or in [0.5, 1)."""
    if confidence is not None and not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1) or None, got {confidence}")
