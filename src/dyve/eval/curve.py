"""Accuracy-versus-cost trade-off curves: points, Pareto front, operating point, JSON, plots.

A :class:`TradeoffCurve` is what :func:`dyve.eval.sweep.sweep` returns: one
:class:`CurvePoint` per knob value, plus a dense *reference* point (every mechanism off).
Costs are MACs per sample (see :data:`dyve.cost.CONVENTION`), ``executed`` when the skipped
work was really not computed, ``simulated`` when it was computed and masked; every table
and plot says which.

Example:
    >>> curve = sweep(net, val, "threshold", [0.2, 0.5, 1.0], norm=CIFAR_NORM)  # doctest: +SKIP
    >>> print(curve.table())  # doctest: +SKIP
    >>> curve.operating_point(1.0).value  # cheapest point within 1 pp of the reference
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dyve._io import atomic_save, read_json, write_json
from dyve.cost import CONVENTION
from dyve.errors import DyveError

FORMAT = "dyve.curve/1"
_COST_MODE_NOTE = {
    "executed": "executed (skipped work was not computed)",
    "simulated": "simulated (computed for every sample, then masked)",
}


@dataclass(frozen=True)
class CurvePoint:
    """One point of a sweep: the knob value and what it gave on the data.

    ``top1``/``top5`` are percent; ``macs_*`` are per-sample MACs over the data;
    ``latency_ms``/``dense_latency_ms`` are batch-1 times on one thread, timed
    interleaved in the same run (None when latency was not measured; the dense one is the
    faster of the backbone as given and tuned: BN folded, channels_last); ``speedup_b1`` is
    their ratio (dense / dynamic); ``cost_reduction`` is static MACs / ``macs_mean``.
    ``knobs`` holds every knob of the network at this point (``{"mechanism.knob": value}``)
    and ``ran_fraction`` the share of samples that ran each unit.
    """

    knob: str
    value: Any
    top1: float
    top5: float
    macs_mean: float
    macs_p50: float
    macs_p95: float
    cost_mode: str
    latency_ms: float | None
    dense_latency_ms: float | None
    speedup_b1: float | None
    cost_reduction: float
    n: int
    dataset: str
    split: str
    reference: bool = False
    knobs: dict[str, Any] = field(default_factory=dict)
    ran_fraction: dict[str, float] = field(default_factory=dict)

    def label(self) -> str:
        """Short text for tables and plot annotations."""
        return "dense (off)" if self.reference else _fmt_value(self.value)


@dataclass(frozen=True)
class TradeoffCurve:
    """Points of a sweep over one knob, with the network's static cost and provenance."""

    knob: str
    points: tuple[CurvePoint, ...]
    static_macs: float
    dataset: str
    split: str
    n: int
    backbone: str | None = None
    mechanisms: tuple[str, ...] = ()
    backend: str = "fast"
    convention: str = CONVENTION
    machine: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    @property
    def reference(self) -> CurvePoint:
        """The dense reference point (every mechanism off)."""
        for p in self.points:
            if p.reference:
                return p
        raise ValueError("this curve has no reference point")

    @property
    def cost_mode(self) -> str:
        """``simulated`` if any point's cost is simulated, else ``executed``."""
        return "simulated" if any(p.cost_mode == "simulated" for p in self.points) else "executed"

    def pareto(self) -> list[CurvePoint]:
        """Points no other point beats on both top-1 (higher) and mean MACs (lower).

        A point is dominated when another is at least as good on both and strictly better
        on one; equal points are all kept. Sorted by mean MACs, then by top-1 descending.
        """
        return _front(self.points, lambda p: p.macs_mean)

    def operating_point(self, budget_pp: float) -> CurvePoint:
        """The cheapest point whose top-1 is at most ``budget_pp`` points below the reference.

        Ties in mean MACs go to the higher top-1, then to the reference, then to the
        earlier point of the sweep. The reference itself always qualifies.

        Example:
            >>> curve.operating_point(1.0)  # doctest: +SKIP
        """
        if not budget_pp >= 0:
            raise ValueError(f"budget_pp must be >= 0, got {budget_pp}")
        ref = self.reference
        ok = [(i, p) for i, p in enumerate(self.points) if p.top1 >= ref.top1 - budget_pp]
        _, best = min(ok, key=lambda t: (t[1].macs_mean, -t[1].top1, not t[1].reference, t[0]))
        return best

    # ------------------------------------------------------------------ JSON
    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what :meth:`to_json` writes)."""
        d = {"format": FORMAT, **asdict(self)}
        d["points"] = [asdict(p) for p in self.points]
        d["mechanisms"] = list(self.mechanisms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TradeoffCurve:
        """Rebuild from :meth:`as_dict` output; a malformed dict raises :class:`DyveError`."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DyveError(f"not a {FORMAT} curve")
        try:
            points = tuple(CurvePoint(**p) for p in d["points"])
            kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name != "points"}
            kw["mechanisms"] = tuple(kw.get("mechanisms", ()))
            return cls(points=points, **kw)
        except (KeyError, TypeError) as exc:
            raise DyveError(f"malformed {FORMAT} curve: {exc}") from None

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the curve atomically as JSON; return the path."""
        path = Path(path)
        write_json(path, self.as_dict())
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> TradeoffCurve:
        """Read a curve written by :meth:`to_json` (the round trip is exact)."""
        path = Path(path)
        d = read_json(path)
        try:
            return cls.from_dict(d)
        except DyveError as exc:
            raise DyveError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ reports
    def table(self) -> str:
        """A readable text table; the header states the cost convention and cost mode."""
        front = {id(p) for p in self.pareto()}
        lines = [
            f"sweep of {self.knob!r} on {self.dataset}/{self.split} (n={self.n}), "
            f"backbone {self.backbone or '?'}, mechanisms {', '.join(self.mechanisms) or '-'}, "
            f"backend {self.backend}",
            f"cost: {CONVENTION}",
            f"cost mode: {_COST_MODE_NOTE.get(self.cost_mode, self.cost_mode)}; "
            f"static cost {self.static_macs / 1e6:.2f} M MACs/sample",
            "latency: batch 1, 1 thread, median ms, interleaved with the dense backbone",
            "",
            f"{'value':<16} {'top-1 %':>8} {'top-5 %':>8} {'MACs mean':>10} {'p50':>9} "
            f"{'p95':>9} {'reduct.':>8} {'lat ms':>8} {'dense ms':>9} {'speedup':>8}  mark",
        ]
        for p in self.points:
            mark = ("ref " if p.reference else "") + ("pareto" if id(p) in front else "")
            lines.append(
                f"{p.label()[:16]:<16} {p.top1:>8.2f} {p.top5:>8.2f} "
                f"{p.macs_mean / 1e6:>8.2f} M {p.macs_p50 / 1e6:>7.2f} M "
                f"{p.macs_p95 / 1e6:>7.2f} M {p.cost_reduction:>7.2f}x "
                f"{_opt(p.latency_ms, '.3f'):>8} {_opt(p.dense_latency_ms, '.3f'):>9} "
                f"{_opt(p.speedup_b1, '.2f', 'x'):>8}  {mark}".rstrip()
            )
        return "\n".join(lines)

    def plot(self, path_stem: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<stem>.png`` and ``<stem>.svg``: top-1 vs mean MACs and vs batch-1 latency.

        Uses matplotlib's Agg canvas directly (no display, no global backend switch).
        Returns the two paths.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        stem = Path(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        mode = self.cost_mode
        fig = Figure(figsize=(11.0, 4.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax_macs, ax_lat = fig.subplots(1, 2, sharey=True)
        _panel(ax_macs, self, lambda p: p.macs_mean / 1e6, "mean MACs")
        ax_macs.set_xlabel(f"mean MACs per sample (millions, {mode})")
        ax_macs.set_ylabel(f"top-1 accuracy on {self.dataset}/{self.split} (%)")
        ax_macs.set_title(f"accuracy vs cost: {_COST_MODE_NOTE.get(mode, mode)}", fontsize=9)
        if all(p.latency_ms is not None for p in self.points):
            _panel(ax_lat, self, lambda p: p.latency_ms or 0.0, "latency")
        else:
            ax_lat.text(0.5, 0.5, "latency not measured", ha="center", transform=ax_lat.transAxes)
        ax_lat.set_xlabel("batch-1 latency (ms, median, 1 thread, measured)")
        ax_lat.set_title("accuracy vs latency (interleaved with the dense backbone)", fontsize=9)
        fig.suptitle(
            f"{self.backbone or 'model'} + {', '.join(self.mechanisms) or '-'}: "
            f"sweep of {self.knob} (n={self.n}, backend {self.backend})",
            fontsize=10,
        )
        png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
        atomic_save(png, lambda tmp: fig.savefig(tmp, format="png"))
        atomic_save(svg, lambda tmp: fig.savefig(tmp, format="svg"))
        return png, svg


def _panel(ax: Any, curve: TradeoffCurve, x_of: Callable[[CurvePoint], float], what: str) -> None:
    """One panel: every point, the Pareto front on this panel's cost, the reference."""
    pts = curve.points
    xs = [x_of(p) for p in pts]
    ys = [p.top1 for p in pts]
    ax.scatter(xs, ys, s=22, color="0.6", label="sweep points", zorder=2)
    front = _front(pts, x_of)
    ax.plot(
        [x_of(p) for p in front],
        [p.top1 for p in front],
        "-o",
        color="tab:red",
        ms=6,
        label=f"Pareto front (top-1 vs {what})",
        zorder=3,
    )
    ref = [p for p in pts if p.reference]
    if ref:
        ax.scatter(
            [float(x_of(ref[0]) or 0.0)],
            [ref[0].top1],
            marker="*",
            s=160,
            color="black",
            label="dense reference",
            zorder=4,
        )
    for p, x, y in zip(pts, xs, ys, strict=True):
        if not p.reference:
            ax.annotate(p.label(), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def _front(points: Sequence[CurvePoint], cost: Callable[[CurvePoint], float]) -> list[CurvePoint]:
    """Points not dominated in (higher top-1, lower ``cost``), sorted by cost then -top-1."""
    front = [
        p
        for p in points
        if not any(
            q.top1 >= p.top1 and cost(q) <= cost(p) and (q.top1 > p.top1 or cost(q) < cost(p))
            for q in points
        )
    ]
    return sorted(front, key=lambda p: (cost(p), -p.top1))


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def _opt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{format(v, spec)}{suffix}"
