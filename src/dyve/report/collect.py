"""Measure every subject of a report on the same images, and time them in one run.

Accuracy and per-sample executed cost come from :func:`dyve.eval.measure.measure` (the
trace, read the same way as everywhere else). Batch-1 latency comes from one interleaved
run (:func:`dyve.eval.latency.interleaved`, one thread) over every subject and every
dense reference architecture, as given and as eager PyTorch runs it fastest
(:func:`~dyve.graph.fold.tuned_eager`), so each speedup is a ratio of two times from the same run
(each the mean over the images of each image's median: what the images cost on average);
dynamic subjects are timed frozen, as deployed (:mod:`dyve.dynamic.frozen`).
An image's *difficulty* is how little probability the first subject's dense reference puts
on its true class (quintiles: 1 = easiest fifth, 5 = hardest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from dyve.cost import static_cost
from dyve.data.core import ImageSet
from dyve.data.loader import batches
from dyve.dynamic.frozen import frozen_while
from dyve.dynamic.net import DynamicNet
from dyve.errors import DyveError
from dyve.eval.latency import Timing, cycling, interleaved, machine, num_threads
from dyve.eval.measure import BATCH, Measurement, measure
from dyve.graph.fold import tuned_eager, tuned_input
from dyve.report.subjects import Subject

#: Difficulty bins (quintiles of the reference's true-class probability).
DIFFICULTY_BINS = 5


@dataclass
class Measured:
    """A subject and what the report measured of it."""

    subject: Subject
    m: Measurement
    #: static MACs per sample of the subject's dense reference
    reference_macs: float
    latency: Timing | None = None
    #: the dense reference in eager PyTorch, the faster of as given and tuned (channels_last,
    #: BN folded: :func:`~dyve.graph.fold.tuned_eager`); a dense subject's own time is as given
    reference_latency: Timing | None = None
    #: the reference as a native program, when the subject runs in that runtime
    native_reference_latency: Timing | None = None

    @property
    def relative_cost(self) -> np.ndarray:
        """Each sample's executed MACs as a share of the reference's static MACs."""
        return self.m.cost.macs.numpy() / self.reference_macs

    @property
    def reduction(self) -> float:
        return self.reference_macs / self.m.macs_mean

    @property
    def speedup(self) -> float | None:
        if self.latency is None or self.reference_latency is None:
            return None
        return self.reference_latency.mean_ms / self.latency.mean_ms

    @property
    def speedup_vs_native(self) -> float | None:
        """Against the reference in the subject's own native runtime: the skipped work's
        share of :attr:`speedup` (None when the subject does not run natively)."""
        if self.latency is None or self.native_reference_latency is None:
            return None
        return self.native_reference_latency.mean_ms / self.latency.mean_ms


@dataclass
class Collection:
    """Everything a report draws: the data, each subject's measurement, the machine."""

    data: ImageSet
    results: list[Measured]
    #: per image, difficulty bin 1..DIFFICULTY_BINS
    difficulty: np.ndarray
    difficulty_reference: str
    machine: dict[str, Any]
    latency_images: int
    latency_repeats: int


def measure_batch(model: Any) -> int:
    """The batch size a subject is measured at: 1 where the fast back-end runs more for a
    batch than for its samples alone (``batch_cost_exact``; LC-Net computes the union of the
    batch's kept channels), so that each sample's cost is what it executes alone, as timed."""
    mechs = getattr(model, "mechanisms", ())
    alone = getattr(model, "backend", None) == "fast" and any(not m.batch_cost_exact for m in mechs)
    return 1 if alone else BATCH


def collect(
    subjects: list[Subject],
    data: ImageSet,
    *,
    latency_images: int = 16,
    repeats: int = 48,  # three timings of each latency image: its median drops a stall
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Collection:
    """Measure ``subjects`` on ``data`` and time them (``repeats=0`` skips the timing)."""
    if not subjects:
        raise ValueError("a report needs at least one subject")
    _check_classes(subjects, data)
    results = []
    for s in subjects:
        log(f"measuring {s.label} ({s.method}) on {len(data)} images")
        m = measure(
            cast(DynamicNet, s.model),  # a Selection has the same run() and trace
            data,
            s.norm,
            batch_size=measure_batch(s.model),
            per_sample=True,
            progress=progress,
            desc=s.label,
        )
        results.append(Measured(s, m, float(static_cost(s.reference).total_macs)))
    if repeats > 0:
        log(f"timing {len(subjects)} subjects at batch 1, one thread, interleaved")
        _time(results, data, latency_images, repeats)
    first = subjects[0]
    return Collection(
        data=data,
        results=results,
        difficulty=difficulty_bins(_true_class_prob(first, data)),
        difficulty_reference=first.reference_name,
        machine=machine(),
        latency_images=min(latency_images, len(data)),
        latency_repeats=repeats,
    )


@torch.no_grad()
def _check_classes(subjects: list[Subject], data: ImageSet) -> None:
    """Refuse a subject that predicts another label set (a binary D2NN task, say)."""
    for s in subjects:
        x, _ = next(batches(data, 1, s.norm))
        n = s.reference.eval()(x).shape[1]
        if n != len(data.classes):
            raise DyveError(
                f"{s.label} predicts {n} classes but {data.name}/{data.split} has "
                f"{len(data.classes)}; report it on data with its own labels"
            )


@torch.no_grad()
def _time(results: list[Measured], data: ImageSet, n_images: int, repeats: int) -> None:
    """Batch-1 times of every subject and each distinct reference, in one interleaved run
    (each: the mean over the images of each image's median, :class:`Timing.mean_ms`)."""
    s0 = results[0].subject
    x, _ = next(batches(data, min(n_images, len(data)), s0.norm))
    images = [x[i : i + 1] for i in range(len(x))]
    fns: dict[str, Callable[[], Any]] = {}
    # one dense timing per reference architecture (latency does not depend on weight values):
    # a dense subject's own, else the first reference of that name; and one of its copy as
    # eager PyTorch runs fastest (tuned_eager); the speedups are against the faster
    refs: dict[str, str] = {
        r.subject.reference_name: f"s{i}" for i, r in enumerate(results) if r.subject.is_dense
    }
    tuned: dict[str, str] = {}
    laid = [tuned_input(x) for x in images]
    # subjects that run as native programs are also timed against their reference lowered
    # to that runtime (once per reference architecture)
    native: dict[str, str] = {}  # reference name -> timing key
    runs_native: dict[int, str] = {}  # subject -> timing key
    # dynamic subjects are timed frozen, as deployed (dyve.dynamic.frozen), their native
    # references alike (built while frozen); each gets its own setting back after
    with frozen_while(*(r.subject.model for r in results if not r.subject.is_dense)):
        for i, r in enumerate(results):
            s = r.subject
            s.model.eval()
            if s.reference_name not in refs:
                refs[s.reference_name] = f"ref{i}"
                fns[f"ref{i}"] = cycling(s.reference.eval(), images)
            fns[f"s{i}"] = cycling(s.reference if s.is_dense else s.model, images)
            if s.reference_name not in tuned:
                tuned[s.reference_name] = f"tuned{i}"
                fns[f"tuned{i}"] = cycling(tuned_eager(s.reference, images[0])[0], laid)
            runner = getattr(s.model, "dense_runner", None)
            ref = s.reference.eval()
            prog = None if s.is_dense or runner is None else runner(ref, images[0])
            if prog is not None:
                if s.reference_name not in native:
                    native[s.reference_name] = f"native{i}"
                    fns[f"native{i}"] = cycling(prog, images)
                runs_native[i] = native[s.reference_name]
        with num_threads(1):
            t = interleaved(fns, repeats=repeats, cycle=len(images))
    for i, r in enumerate(results):
        r.latency = t[f"s{i}"]
        as_given, fastest = t[refs[r.subject.reference_name]], t[tuned[r.subject.reference_name]]
        r.reference_latency = min(as_given, fastest, key=lambda timing: timing.mean_ms)
        if i in runs_native:
            r.native_reference_latency = t[runs_native[i]]


@torch.no_grad()
def _true_class_prob(subject: Subject, data: ImageSet) -> np.ndarray:
    probs = []
    for x, y in batches(data, 256, subject.norm):
        p = torch.softmax(subject.reference.eval()(x).float(), 1)
        probs.append(p.gather(1, y[:, None])[:, 0].numpy())
    return np.concatenate(probs)


def difficulty_bins(true_prob: np.ndarray, bins: int = DIFFICULTY_BINS) -> np.ndarray:
    """Bin 1 (easiest) .. ``bins`` (hardest) by descending true-class probability, equal counts."""
    order = np.argsort(-true_prob, kind="stable")
    out = np.empty(len(true_prob), dtype=np.int64)
    out[order] = 1 + (np.arange(len(true_prob)) * bins) // max(len(true_prob), 1)
    return out
