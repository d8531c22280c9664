"""Exit-head training with the backbone frozen, from cached features.

The backbone runs once over a split; at each exit point a forward hook keeps what the
head's trained part reads (:meth:`ExitHead.cached`). For a linear head that is the pooled
feature, so training it is a multinomial logistic regression on a fixed matrix: seconds on
a CPU, deterministic (full-batch L-BFGS on one thread: on two the reductions' order
changes, and 300 iterations grow the rounding into weights that differ by up to 2e-3). A
conv head keeps the whole maps and is trained by SGD on them (:func:`train_conv_head`):
minutes, and a cache the size of the maps. The cache (``{split}.safetensors``:
``feat.<point>``, ``logits``, ``labels``) is also what the policies are fitted from: exit
logits are ``head.from_cache(feat)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dyve._io import atomic_save
from dyve.data import ImageSet, Normalization, batches
from dyve.errors import DyveError
from dyve.eval.latency import num_threads

if TYPE_CHECKING:
    from dyve.mechanisms.adaptive.early_exit import ExitHead


@torch.no_grad()
def collect(
    backbone: nn.Module,
    reads: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    data: ImageSet,
    norm: Normalization,
    *,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """At each exit point ``p``, ``reads[p]`` of its output (what the head's trained part
    reads: :meth:`ExitHead.cached`), the backbone's logits and the labels, for ``data``."""
    from tqdm import tqdm

    backbone = backbone.eval()
    feats: dict[str, list[torch.Tensor]] = {p: [] for p in reads}
    handles = []
    for p, read in reads.items():

        def keep(
            mod: nn.Module,
            args: object,
            out: torch.Tensor,
            p: str = p,
            read: Callable[[torch.Tensor], torch.Tensor] = read,
        ) -> None:
            feats[p].append(read(out).float().cpu().clone())  # not the live activation

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


@num_threads(1)
def train_conv_head(
    head: ExitHead,
    maps: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Train a conv head (in place) on cached exit-point ``maps``; return its train top-1.

    SGD with Nesterov momentum under a one-cycle learning rate, cross-entropy, and a
    random horizontal flip of the maps as augmentation (a flipped image's maps are nearly
    its maps flipped: the only augmentation a cache of maps allows). Seeded and on one
    thread, so the same cache gives the same head. The head is left in eval mode.
    """
    from tqdm import tqdm

    if len(maps) < batch_size:
        batch_size = max(len(maps), 1)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the layers' initialisation, the caller's RNG untouched
        torch.manual_seed(seed)
        head.body.apply(_reset)
        head.fc.reset_parameters()
    steps = epochs * (len(maps) // batch_size)
    opt = torch.optim.SGD(
        head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 1))
    head.train()
    for _ in tqdm(range(epochs), desc="conv head", disable=not progress):
        order = torch.randperm(len(maps), generator=g)
        flips = torch.rand(len(maps), generator=g) < 0.5
        for i in range(len(maps) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = maps[idx].float()
            flip = flips[idx]
            x[flip] = x[flip].flip(3)
            loss = F.cross_entropy(head(x), labels[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        right = sum(
            int((head(maps[i : i + 1024].float()).argmax(1) == labels[i : i + 1024]).sum())
            for i in range(0, len(maps), 1024)
        )
    return 100.0 * right / max(len(maps), 1)


def _reset(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d | nn.BatchNorm2d):
        m.reset_parameters()
