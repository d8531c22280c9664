"""The report's pictures, drawn with matplotlib (Agg) and returned as PNG bytes.

- ``tradeoff``: top-1 against mean executed MACs and against batch-1 latency, one colour
  per method, the Pareto front of all measured points, dense references as stars; a run's
  own stored sweep (``curve.json``, measured on its own split) is drawn dotted.
- ``effort_hist``, ``effort_by_class``, ``effort_by_difficulty``: how executed cost is
  spread over the images.
- ``examples``: a few images with their *effort map* per subject: one cell per unit of the
  trace (blocks, sites, exits, networks, D2NN nodes), shaded by that unit's executed MACs
  for the image relative to the most it cost any image (dark: skipped or not reached);
  for DyVEDeep also the map of one layer: where its output was computed in full (SDSS
  interpolated the rest, SPET stopped some), and the share of input channels SFMA
  approximated.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from dyve.report.collect import DIFFICULTY_BINS, Collection, Measured

#: Marker colours, one per method, in order of first appearance.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def method_colours(col: Collection) -> dict[str, str]:
    """A fixed colour per method (dense references in black)."""
    out: dict[str, str] = {"dense": "black"}
    for r in col.results:
        if r.subject.method not in out:
            out[r.subject.method] = PALETTE[(len(out) - 1) % len(PALETTE)]
    return out


def dynamic_results(col: Collection) -> list[Measured]:
    return [r for r in col.results if not r.subject.is_dense]


def tradeoff(col: Collection) -> bytes:
    """Top-1 against MACs (left) and against measured batch-1 latency (right)."""
    plt = _plt()
    colours = method_colours(col)
    timed = all(r.latency is not None for r in col.results)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 6.5, 4.6))
    axes = np.atleast_1d(axes)
    cost_axes: list[tuple[str, Any]] = [("MACs", lambda r: r.m.macs_mean / 1e6)]
    if timed:
        cost_axes.append(("latency", lambda r: r.latency.mean_ms))
    for ax, (what, x_of) in zip(axes, cost_axes, strict=False):
        pts = [(x_of(r), r.m.top1) for r in col.results]
        for method, colour in colours.items():
            mine = sorted((r for r in col.results if r.subject.method == method), key=x_of)
            if not mine:
                continue
            xs, ys = [x_of(r) for r in mine], [r.m.top1 for r in mine]
            marker = "*" if method == "dense" else "o"
            ax.plot(
                xs,
                ys,
                marker=marker,
                ms=12 if marker == "*" else 7,
                color=colour,
                lw=1.2 if len(mine) > 1 and method != "dense" else 0,
                label=method,
            )
            for r, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(
                    r.subject.label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points"
                )
            if what == "MACs":
                for r in mine:
                    _stored_curve(ax, r, colour)
        front = _front(pts)
        ax.plot(*zip(*front, strict=True), ls="--", color="grey", lw=1, label="Pareto front")
        unit = (
            "mean executed MACs per sample (M)"
            if what == "MACs"
            else ("batch-1 latency, mean over images (ms, 1 thread)")
        )
        ax.set_xlabel(unit)
        ax.set_ylabel(f"top-1 (%) on {col.data.split} ({len(col.data)} images)")
        tops = [r.m.top1 for r in col.results]  # the measured points set the view; a stored
        ax.set_ylim(max(0.0, min(tops) - 5), min(100.0, max(tops) + 3))  # sweep may run off
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("accuracy against cost (executed: what ran)", fontsize=11)
    return _png(fig)


def _stored_curve(ax: Any, r: Measured, colour: str) -> None:
    curve = r.subject.curve
    if curve is None:
        return
    pts = sorted((macs / 1e6, top1) for macs, top1 in curve.points)
    ax.plot(
        *zip(*pts, strict=True),
        ls=":",
        color=colour,
        lw=1,
        alpha=0.7,
        label=f"{r.subject.label}: stored sweep ({curve.split}, {curve.cost_mode})",
    )


def _front(pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(pts, key=lambda p: (p[0], -p[1])):
        if not out or y > out[-1][1]:
            out.append((x, y))
    return out


def effort_hist(col: Collection) -> bytes:
    """Histogram of each image's executed cost relative to the dense reference."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    colours = method_colours(col)
    bins = np.linspace(0, 1.2, 49)
    for r in dynamic_results(col):
        ax.hist(
            np.clip(r.relative_cost, 0, 1.2),
            bins=bins,
            histtype="step",
            lw=1.5,
            color=colours[r.subject.method],
            label=r.subject.label,
        )
    ax.set_xlabel("executed MACs / dense reference MACs (per image)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _grouped(col: Collection, groups: np.ndarray, names: Sequence[str], xlabel: str) -> bytes:
    plt = _plt()
    dyn = dynamic_results(col)
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(names) * max(len(dyn), 1) / 2), 3.8))
    colours = method_colours(col)
    width = 0.8 / max(len(dyn), 1)
    for j, r in enumerate(dyn):
        rel = r.relative_cost
        means = [
            float(rel[groups == g].mean()) if (groups == g).any() else 0.0
            for g in range(len(names))
        ]
        ax.bar(
            np.arange(len(names)) + j * width - 0.4 + width / 2,
            means,
            width,
            color=colours[r.subject.method],
            label=r.subject.label,
            alpha=0.6 + 0.4 * (j % 2),
        )
    ax.set_xticks(np.arange(len(names)), names, rotation=30 if len(names) > 5 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean executed MACs / dense")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def effort_by_class(col: Collection) -> bytes:
    return _grouped(col, col.data.labels, col.data.classes, "true class")


def effort_by_difficulty(col: Collection) -> bytes:
    names = [
        f"{b}" + (" easiest" if b == 1 else " hardest" if b == DIFFICULTY_BINS else "")
        for b in range(1, DIFFICULTY_BINS + 1)
    ]
    return _grouped(
        col,
        col.difficulty - 1,
        names,
        f"difficulty fifth (by {col.difficulty_reference}'s true-class probability)",
    )


def pick_examples(col: Collection, k: int = 6) -> list[int]:
    """``k`` images spread over the difficulty bins, easiest first (deterministic)."""
    out = []
    for j in range(k):
        b = 1 + (j * DIFFICULTY_BINS) // k
        idx = np.flatnonzero(col.difficulty == b)
        if len(idx):
            out.append(int(idx[(j * 7919) % len(idx)]))
    return out


def examples(col: Collection, picks: Sequence[int]) -> bytes:
    """Each picked image with, per dynamic subject, its effort map over the trace's units,
    and, for a mechanism that keeps maps inside a layer (DyVEDeep), where in that layer
    the work was done."""
    plt = _plt()
    dyn = dynamic_results(col)
    inner = [(r, m) for r in dyn if (m := layer_maps(r, col, picks)) is not None]
    rows, cols = len(picks), 1 + len(dyn) + len(inner)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.2 + 3.2 * len(dyn) + 1.6 * len(inner), 1.25 * rows + 0.4),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] + [3] * len(dyn) + [1] * len(inner)},
    )
    for i, idx in enumerate(picks):
        ax = axes[i, 0]
        ax.imshow(col.data.images[idx], interpolation="nearest")
        ax.set_title(
            f"{col.data.classes[col.data.labels[idx]]}, d{col.difficulty[idx]}", fontsize=7
        )
        ax.axis("off")
        for j, r in enumerate(dyn):
            _effort_strip(axes[i, j + 1], r, idx, col.data.labels[idx], last=i == rows - 1)
        for j, (r, (site, grid, approx)) in enumerate(inner):
            ax = axes[i, 1 + len(dyn) + j]
            ax.imshow(grid[i], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{r.subject.label}: SFMA {approx[i]:.0%} ch.", fontsize=7)
            ax.axis("off")
            if i == rows - 1:
                ax.text(0.5, -0.12, f"computed in full at {site}", fontsize=6,
                        ha="center", va="top", transform=ax.transAxes)  # fmt: skip
    return _png(fig)


def layer_maps(
    r: Measured, col: Collection, picks: Sequence[int]
) -> tuple[str, np.ndarray, np.ndarray] | None:
    """For a subject whose mechanism keeps maps inside layers (``effort_maps``): of the
    sites at the finest resolution, the one with the least work in full on the picked
    images, its ``[K, H, W]`` map of the share
    of channels computed in full, and each image's share of input channels SFMA
    approximated over all sites; None for other mechanisms."""
    import torch

    fn = next(
        (getattr(m, "effort_maps", None) for m in getattr(r.subject.model, "mechanisms", [])),
        None,
    )
    if fn is None:
        return None
    x = r.subject.norm.apply(torch.from_numpy(col.data.images[list(picks)]))
    maps = fn(r.subject.model, x)
    spatial = {k: v["computed"] for k, v in maps.items() if v["computed"][0].numel() > 1}
    if not spatial:
        return None
    # the finest resolution (where positions show), and there the layer with least in full
    site = max(spatial, key=lambda k: (spatial[k][0].numel(), -float(spatial[k].mean())))
    approx = torch.stack([v["approximated"] for v in maps.values()]).float().mean(0)
    return site, spatial[site].numpy(), approx.numpy()


def _effort_strip(ax: Any, r: Measured, idx: int, label: int, *, last: bool) -> None:
    units = [u for u in r.m.unit_macs if r.m.unit_macs[u].max() > 0]
    peak = np.array([r.m.unit_macs[u].max() for u in units])
    share = np.array([r.m.unit_macs[u][idx] for u in units]) / np.where(peak > 0, peak, 1)
    ax.imshow(
        share[None, :], aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    ok = "correct" if r.m.predictions[idx] == label else "wrong"
    ax.set_title(f"{r.subject.label}: {r.relative_cost[idx]:.2f}x dense, {ok}", fontsize=7)
    ax.set_yticks([])
    ax.set_xticks([])
    if last:
        ax.set_xlabel(f"{len(units)} units in execution order", fontsize=7)
