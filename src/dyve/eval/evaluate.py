"""Accuracy of a model on an :class:`ImageSet`: top-1/top-5 and per-sample predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.errors import DyveError


@dataclass(frozen=True)
class Accuracy:
    """Top-1/top-5 in percent over ``n`` samples, and each sample's top-1 prediction."""

    n: int
    top1: float
    top5: float
    predictions: np.ndarray


def topk_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """Correct top-1 and top-5 counts of a batch (top-k capped at the class count), and top-1."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return int((top[:, 0] == y).sum()), int((top == y[:, None]).any(1).sum()), top[:, 0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageSet,
    norm: Normalization,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "eval",
) -> Accuracy:
    """Run ``model`` (in eval mode) over ``data`` and return its accuracy.

    Example:
        >>> acc = evaluate(model, data.load("cifar10-jpeg", "val"), CIFAR_NORM)  # doctest: +SKIP
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise DyveError(f"batch size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    preds, correct1, correct5 = [], 0, 0
    it = batches(data, batch_size, norm)
    bar = tqdm(it, total=-(-len(data) // batch_size), desc=desc, disable=not progress, leave=False)
    try:
        for x, y in bar:
            c1, c5, top1 = topk_correct(model(x.to(device)), y.to(device))
            correct1 += c1
            correct5 += c5
            preds.append(top1.cpu().numpy())
    finally:
        model.train(was_training)
    n = len(data)
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return Accuracy(n, 100.0 * correct1 / max(n, 1), 100.0 * correct5 / max(n, 1), pred)
