"""Exit-head training with the backbone frozen, from cached features.

The backbone runs once over a split; at each exit point a forward hook keeps the pooled
feature the head reads (``adaptive_avg_pool2d(x, pool).flatten(1)``), so training a head
is a multinomial logistic regression on a fixed matrix: seconds on a CPU, deterministic
(full-batch L-BFGS on one thread: on two the reductions' order changes, and 300 iterations
grow the rounding into weights that differ by up to 2e-3). The cache
(``{split}.safetensors``: ``feat.<point>``, ``logits``, ``labels``) is also what the
policies are fitted from: exit logits are ``head(feat)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dyve._io import atomic_save
from dyve.data import ImageSet, Normalization, batches
from dyve.errors import DyveError
from dyve.eval.latency import num_threads


def pooled(x: torch.Tensor, pool: int) -> torch.Tensor:
    """What an exit head reads: average pool to ``pool x pool`` (4-d), flattened."""
    if x.dim() == 4 and pool:
        x = F.adaptive_avg_pool2d(x, pool)
    return x.flatten(1)


@torch.no_grad()
def collect(
    backbone: nn.Module,
    points: Sequence[str],
    data: ImageSet,
    norm: Normalization,
    *,
    pool: int = 1,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """Pooled features at each exit point, the backbone's logits and the labels, for ``data``."""
    from tqdm import tqdm

    backbone = backbone.eval()
    feats: dict[str, list[torch.Tensor]] = {p: [] for p in points}
    handles = []
    for p in points:

        def keep(mod: nn.Module, args: object, out: torch.Tensor, p: str = p) -> None:
            feats[p].append(pooled(out, pool).float().cpu())

        handles.append(backbone.get_submodule(p).register_forward_hook(keep))
    logits, labels = [], []
    total = -(-len(data) // batch_size)
    try:
        for x, y in tqdm(
            batches(data, batch_size, norm), total=total, desc=desc, disable=not progress
        ):
            logits.append(backbone(x).float().cpu())
            labels.append(y)
    finally:
        for h in handles:
            h.remove()
    out = {f"feat.{p}": torch.cat(v) for p, v in feats.items()}
    out["logits"] = torch.cat(logits)
    out["labels"] = torch.cat(labels)
    return out


def save_cache(cache: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write a feature cache atomically (safetensors)."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in cache.items()}
    atomic_save(path, lambda tmp: save_file(tensors, tmp))
    return Path(path)


def load_cache(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a feature cache written by :func:`save_cache`."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise DyveError(f"{path}: no feature cache")
    return dict(load_file(str(path)))


@num_threads(1)
def train_head(
    head: nn.Linear,
    feats: torch.Tensor,
    labels: torch.Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
) -> float:
    """Fit ``head`` (in place) by L2-regularised softmax regression; return the train top-1.

    Features are standardised for the optimisation and the scaling is folded back into the
    head's weights, so the head still reads the raw pooled features. The fit runs on one
    thread, so the same features give the same head whatever the caller's thread count.
    """
    x = feats.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(head.out_features, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(head.out_features, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels) + weight_decay * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        weight = w / std  # z @ w.T = (x - mean) @ (w / std).T
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_((b - mean @ weight.T).to(head.bias.dtype))
        acc = (head(feats).argmax(1) == labels).double().mean()
    return 100.0 * float(acc)
