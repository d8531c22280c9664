"""Sweeps: run a dynamic network over a dataset at several values of one knob.

For each value, :func:`sweep` sets the knob, runs :meth:`DynamicNet.run` over every batch
and records top-1/top-5, the per-sample cost from the trace (mean, p50, p95; ``executed``
or ``simulated``), the share of samples that ran each unit, and the batch-1 latency on one
thread, timed interleaved with the dense backbone in the same run on a few real samples.
A dense reference point (every mechanism's :meth:`~Mechanism.off_knobs`) comes first.
Every knob is restored afterwards, also when the sweep fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from dyve._io import jsonable
from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.dynamic.net import DynamicNet
from dyve.eval.curve import CurvePoint, TradeoffCurve
from dyve.eval.latency import cycling, interleaved, machine, num_threads
from dyve.eval.measure import measure
from dyve.graph.fold import tuned_eager, tuned_input

#: Real samples cycled through for the batch-1 latency (the same sample for both models
#: in a round).
LATENCY_SAMPLES = 4


@contextmanager
def restored_knobs(net: DynamicNet) -> Iterator[None]:
    """Put every knob of every mechanism back to its current value when the block ends."""
    saved = [(m, dict(m.knob_values())) for m in net.mechanisms]
    try:
        yield
    finally:
        for m, values in saved:
            for k, v in values.items():
                m.set_knob(k, v)


def apply_point(net: DynamicNet, point: CurvePoint) -> None:
    """Set every knob of ``net`` to its value at ``point`` (e.g. the operating point)."""
    for key, value in point.knobs.items():
        mech_name, _, knob = key.partition(".")
        net.mechanism(mech_name).set_knob(knob, value)


def sweep(
    net: DynamicNet,
    data: ImageSet,
    knob: str,
    values: Sequence[Any],
    *,
    norm: Normalization,
    batch_size: int = 256,
    latency_repeats: int = 10,
    progress: bool = True,
) -> TradeoffCurve:
    """Measure accuracy, per-sample cost and batch-1 latency at each value of ``knob``.

    Args:
        net: the equipped network (its knobs are restored afterwards).
        data: the images (use a validation split: the operating point is chosen on it).
        knob: a knob name as :meth:`DynamicNet.set_knobs` takes it (``threshold`` or
            ``block_skip__threshold``).
        values: the knob values, in sweep order.
        norm: the backbone's input normalisation.
        batch_size: batch size of the accuracy and cost pass.
        latency_repeats: timed batch-1 rounds per point (0: do not time).
        progress: show a progress bar over the points.

    Example:
        >>> curve = sweep(net, val, "threshold", [0.2, 0.5, 1.0], norm=CIFAR_NORM)  # doctest: +SKIP
        >>> curve.operating_point(1.0)  # doctest: +SKIP
    """
    from tqdm import tqdm

    if not values:
        raise ValueError("sweep needs at least one knob value")
    if len(data) == 0:
        raise ValueError(f"{data.name}/{data.split}: no images to sweep over")
    if latency_repeats < 0:
        raise ValueError(f"latency_repeats must be >= 0, got {latency_repeats}")
    mech, name = net.resolve_knob(knob)
    off = {f"{m.name}__{k}": v for m in net.mechanisms for k, v in m.off_knobs().items()}
    # swept points keep every other knob at its current value (the reference turned them off)
    now = {f"{m.name}__{k}": v for m in net.mechanisms for k, v in m.knob_values().items()}
    now.pop(f"{mech.name}__{name}")
    settings: list[tuple[Any, dict[str, Any], bool]] = [(mech.off_knobs()[name], off, True)]
    settings += [(v, {**now, knob: v}, False) for v in values]
    points = []
    was_training = net.training
    bar = tqdm(settings, desc=f"sweep {knob}", disable=not progress, leave=False)
    try:
        net.eval()
        timer = _Timer(net, data, norm, latency_repeats) if latency_repeats else None
        with restored_knobs(net):
            for value, knobs, is_ref in bar:
                net.set_knobs(**knobs)
                points.append(_measure(net, data, norm, batch_size, knob, value, is_ref, timer))
    finally:
        bar.close()
        net.train(was_training)
    return TradeoffCurve(
        knob=knob,
        points=tuple(points),
        static_macs=float(net.static_macs),
        dataset=data.name,
        split=data.split,
        n=len(data),
        backbone=net.backbone_id,
        mechanisms=tuple(m.name for m in net.mechanisms),
        backend=net.backend,
        machine=machine() if timer else {},
    )


def _measure(
    net: DynamicNet,
    data: ImageSet,
    norm: Normalization,
    batch_size: int,
    knob: str,
    value: Any,
    reference: bool,
    timer: _Timer | None,
) -> CurvePoint:
    """One point: accuracy and cost over ``data`` at the current knobs, then latency."""
    m = measure(net, data, norm, batch_size=batch_size)
    n = m.n
    s = m.cost.summary()
    lat, dense_lat = timer.time() if timer is not None else (None, None)
    macs_mean = float(s["macs_mean"])
    return CurvePoint(
        knob=knob,
        value=jsonable(value),
        top1=m.top1,
        top5=m.top5,
        macs_mean=macs_mean,
        macs_p50=float(s["macs_p50"]),
        macs_p95=float(s["macs_p95"]),
        cost_mode=m.cost.cost_mode,
        latency_ms=lat,
        dense_latency_ms=dense_lat,
        speedup_b1=dense_lat / lat if lat and dense_lat else None,
        cost_reduction=net.static_macs / macs_mean if macs_mean > 0 else float("inf"),
        n=n,
        dataset=data.name,
        split=data.split,
        reference=reference,
        knobs={k: jsonable(v) for k, v in net.knobs().items()},
        ran_fraction=m.ran_fraction,
    )


class _Timer:
    """Batch-1, one-thread latency of ``net`` against its dense backbone in eager PyTorch
    (as given and tuned), interleaved."""

    def __init__(self, net: DynamicNet, data: ImageSet, norm: Normalization, repeats: int) -> None:
        self.net, self.repeats = net, repeats
        self.dense = net.detach()
        x, _ = next(batches(data, min(LATENCY_SAMPLES, len(data)), norm))
        self.samples = [x[i : i + 1] for i in range(len(x))]
        self.tuned = tuned_eager(self.dense, self.samples[0])[0]
        self.laid = [tuned_input(s) for s in self.samples]

    def time(self) -> tuple[float, float]:
        """(dynamic, dense) ms: the mean over the samples of each one's median (all see the
        same sample in each round); dense: the faster of the backbone as given and tuned
        (:func:`~dyve.graph.fold.tuned_eager`)."""
        with torch.no_grad(), num_threads(1):
            fns = {
                "dynamic": cycling(self.net, self.samples),
                "dense": cycling(self.dense, self.samples),
                "tuned": cycling(self.tuned, self.laid),
            }
            t = interleaved(fns, repeats=self.repeats, warmup=2, cycle=len(self.samples))
        return t["dynamic"].mean_ms, min(t["dense"].mean_ms, t["tuned"].mean_ms)
