"""One pass of a dynamic network over a dataset: accuracy, per-sample cost and its breakdown.

Every accuracy-versus-cost figure (sweeps, calibration, reports) comes from here, so each
reads the same trace the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dyve.cost.accumulator import CostAccumulator
from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.dynamic.net import DynamicNet
from dyve.dynamic.trace import RAN
from dyve.eval.evaluate import topk_correct
from dyve.train.dist import Dist


@dataclass
class Measurement:
    """Accuracy (percent) and per-sample cost of ``net`` over ``n`` samples."""

    n: int
    top1: float
    top5: float
    predictions: np.ndarray
    cost: CostAccumulator
    #: per unit: the mean over samples of each cost component of the trace
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per unit: the share of samples that ran it
    ran_fraction: dict[str, float] = field(default_factory=dict)
    #: with ``per_sample=True``: per unit, each sample's executed MACs
    unit_macs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def macs_mean(self) -> float:
        return float(self.cost.macs.mean())

    @property
    def scalar_ops_mean(self) -> float:
        return float(self.cost.scalar_ops.mean())


#: images per measured batch (by default)
BATCH = 256


@torch.no_grad()
def measure(
    net: DynamicNet,
    data: ImageSet,
    norm: Normalization,
    *,
    batch_size: int = BATCH,
    progress: bool = False,
    desc: str = "measure",
    per_sample: bool = False,
) -> Measurement:
    """Run ``net`` (eval mode, current knobs) over ``data`` with a trace per batch.

    Batches go to the device of ``net``'s parameters (CPU for a network without any).
    ``per_sample=True`` also keeps each unit's MACs per sample (what reports draw effort
    maps from); a unit missing from a batch's trace cost nothing there.
    """
    from tqdm import tqdm

    if len(data) == 0:
        raise ValueError(f"{data.name}/{data.split}: no images to measure")
    correct1 = correct5 = 0
    preds: list[np.ndarray] = []
    cost: CostAccumulator | None = None
    sums: dict[str, dict[str, float]] = {}
    ran: dict[str, int] = {}
    unit_macs: dict[str, list[tuple[int, np.ndarray]]] = {}
    seen = 0
    was_training = net.training
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    net.eval()
    total = -(-len(data) // batch_size)
    try:
        for x, y in tqdm(
            batches(data, batch_size, norm),
            total=total,
            desc=desc,
            disable=not progress,
            leave=False,
        ):
            res = net.run(x.to(device))
            c1, c5, top = topk_correct(res.logits.cpu(), y)
            correct1, correct5 = correct1 + c1, correct5 + c5
            preds.append(top.numpy())
            if cost is None:
                cost = CostAccumulator(0, res.trace.cost.cost_mode)
            cost.extend(res.trace.cost)
            for unit, status in res.trace.units.items():
                ran[unit] = ran.get(unit, 0) + int((status == RAN).sum())
            for unit, comps in res.trace.detail.items():
                mine = sums.setdefault(unit, {})
                for k, v in comps.items():
                    mine[k] = mine.get(k, 0.0) + float(v.sum())
            if per_sample:
                for unit, comps in res.trace.detail.items():
                    unit_macs.setdefault(unit, []).append((seen, comps["macs"].numpy()))
            seen += len(y)
    finally:
        net.train(was_training)
    assert cost is not None
    n = len(data)
    return Measurement(
        n=n,
        top1=100.0 * correct1 / n,
        top5=100.0 * correct5 / n,
        predictions=np.concatenate(preds),
        cost=cost,
        breakdown={u: {k: v / n for k, v in d.items()} for u, d in sums.items()},
        ran_fraction={u: c / n for u, c in ran.items()},
        unit_macs={u: _spread(parts, n) for u, parts in unit_macs.items()},
    )


def _spread(parts: list[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    """Batch pieces ``(start, values)`` placed into one float64 array of ``n`` (0 elsewhere)."""
    out = np.zeros(n, dtype=np.float64)
    for start, values in parts:
        out[start : start + len(values)] = values
    return out


def measure_sharded(
    net: DynamicNet, data: ImageSet, norm: Normalization, ddp: Dist, **kw: Any
) -> Measurement:
    """:func:`measure` with the images split over ``torchrun``'s processes.

    Each process measures every ``world``-th image; the pieces are gathered and merged on
    every process into the :class:`Measurement` one process would give (counts exact,
    per-sample arrays in dataset order, means up to the order of float sums).
    """
    import torch.distributed as tdist

    if ddp.world == 1:
        return measure(net, data, norm, **kw)
    mine = measure(net, data.subset(slice(ddp.rank, None, ddp.world)), norm, **kw)
    pieces: list[Any] = [None] * ddp.world
    tdist.all_gather_object(pieces, mine)
    n = len(data)
    order = np.concatenate([np.arange(r, n, ddp.world) for r in range(ddp.world)])
    parts: list[Measurement] = pieces

    def placed(arrays: list[np.ndarray]) -> np.ndarray:
        out = np.empty((n, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        out[order] = np.concatenate(arrays)
        return out

    preds = placed([p.predictions for p in parts])
    correct5 = sum(round(p.top5 * p.n / 100) for p in parts)
    cost = CostAccumulator(n, parts[0].cost.cost_mode)
    cost.macs = torch.from_numpy(placed([p.cost.macs.numpy() for p in parts]))
    cost.scalar_ops = torch.from_numpy(placed([p.cost.scalar_ops.numpy() for p in parts]))
    units = {u for p in parts for u in p.breakdown}
    return Measurement(
        n=n,
        top1=100.0 * int((preds == data.labels).sum()) / n,
        top5=100.0 * correct5 / n,
        predictions=preds,
        cost=cost,
        breakdown={
            u: {
                k: sum(p.breakdown.get(u, {}).get(k, 0.0) * p.n for p in parts) / n
                for k in {k for p in parts for k in p.breakdown.get(u, {})}
            }
            for u in units
        },
        ran_fraction={
            u: sum(round(p.ran_fraction.get(u, 0.0) * p.n) for p in parts) / n
            for u in {u for p in parts for u in p.ran_fraction}
        },
        unit_macs={
            u: placed([p.unit_macs.get(u, np.zeros(p.n)) for p in parts])
            for u in {u for p in parts for u in p.unit_macs}
        },
    )
