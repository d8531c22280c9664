"""The D2NN results page (``dyve d2nn results``): curves against the static graphs, targets.

Read from the runs' ``config.json``, ``metrics.json`` and (when ``dyve bench`` ran)
``bench.json``. Per architecture, the static baseline is the **static frontier**: every
static path of the graph (each controller fixed to one action; weights trained with random
routing for the same epochs as the D2NN runs), the full network trained alone, and any
input-independent mixture of them (the upper concave hull). A D2NN point's cost reduction
at equal accuracy is the frontier's cost at the point's accuracy over the point's cost.
The headline point of an architecture is chosen on val (largest reduction there) and
reported on test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyve._io import atomic_save, atomic_write, read_json

TARGET = 2.0  # at equal accuracy, >= 2x lower mean cost than the static graph ...
TARGET_ARCHS = 2  # ... on at least two architectures
Point = tuple[float, float]  # (MACs, metric)


def frontier(points: Sequence[Point]) -> list[Point]:
    """Upper concave hull of ``(cost, metric)`` points: the best any mixture reaches."""
    pts = sorted(set(points))
    pareto: list[Point] = []
    for p in pts:
        if not pareto or p[1] > pareto[-1][1]:
            pareto.append(p)
    hull: list[Point] = []
    for p in pareto:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):  # hull[-1] under the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def cost_at(front: Sequence[Point], metric: float) -> tuple[float, bool] | None:
    """Cost the frontier needs to reach ``metric``; (cost, True) when it cannot reach it
    (then the cost of its best point: a lower bound of what equal accuracy would cost);
    None below its cheapest point (no static path is that poor: no comparison)."""
    if metric < front[0][1]:
        return None
    for (x1, y1), (x2, y2) in itertools.pairwise(front):
        if metric <= y2:
            return x1 + (metric - y1) * (x2 - x1) / (y2 - y1), False
    return front[-1][0], True


def _load(run: Path) -> dict[str, Any]:
    bench = read_json(run / "bench.json") if (run / "bench.json").is_file() else None
    return {
        "run": run.name,
        "cfg": read_json(run / "config.json")["config"],
        "m": read_json(run / "metrics.json"),
        "bench": bench,
    }


def _static(runs: list[dict[str, Any]], split: str) -> list[tuple[str, Point]]:
    key = runs[0]["m"]["metric"]
    out = []
    for r in runs:
        if r["cfg"]["route"] == "random" and r["cfg"]["init"]:
            for p in r["m"]["points"]:
                label = "/".join(p["static"].values())
                out.append((label, (p[f"{split}_macs_per_sample"], p[f"{split}_{key}"])))
        elif r["cfg"]["route"] == "static":  # the path it trained: its own, or the full one
            p = max(r["m"]["points"], key=lambda p: p[f"{split}_macs_per_sample"])
            p = r["m"]["points"][0] if r["cfg"].get("static") else p
            label = "/".join(p["static"].values()) + ", trained alone"
            out.append((label, (p[f"{split}_macs_per_sample"], p[f"{split}_{key}"])))
    return out


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One architecture: static points and frontier, D2NN points and their reductions."""
    key = runs[0]["m"]["metric"]
    fronts = {s: frontier([p for _, p in _static(runs, s)]) for s in ("val", "test")}
    points = []
    for r in runs:
        if r["cfg"]["route"] != "learned":
            continue
        for p in r["m"]["points"]:
            row = {"run": r["run"], "lam": r["cfg"]["lam"], "bias": p["bias"]}
            for s in ("val", "test"):
                macs, metric = p[f"{s}_macs_per_sample"], p[f"{s}_{key}"]
                at = cost_at(fronts[s], metric)
                row.update({f"{s}_macs": macs, f"{s}_metric": metric})
                row.update({f"{s}_reduction": at and at[0] / macs, f"{s}_beyond": at and at[1]})
            points.append(row)
    comparable = [p for p in points if p["val_reduction"] is not None]
    best = max(comparable, key=lambda p: p["val_reduction"]) if comparable else None
    return {
        "metric": key,
        "static": _static(runs, "test"),
        "front": fronts["test"],
        "points": points,
        "best": best,
    }


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    for ax, (arch, res) in zip(axes, results.items(), strict=False):
        pts = [p for _, p in res["static"]]
        ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], "o", color="grey", ms=4,
                label="static paths")  # fmt: skip
        fx, fy = zip(*res["front"], strict=True)
        ax.plot([x / 1e6 for x in fx], fy, "--", color="grey", label="static frontier")
        for run in dict.fromkeys(p["run"] for p in res["points"]):
            mine = sorted(
                (p for p in res["points"] if p["run"] == run), key=lambda p: p["test_macs"]
            )
            ax.plot([p["test_macs"] / 1e6 for p in mine], [p["test_metric"] for p in mine], ".-",
                    label=f"D2NN lambda={mine[0]['lam']}")  # fmt: skip
        ax.set_title(arch)
        ax.set_xlabel("MACs per sample (M, executed)")
        ax.set_ylabel("F1 (%)" if res["metric"] == "f1" else "top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    atomic_save(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def write_results(run_dirs: list[Path], out: Path) -> Path:
    """Write the page ``out`` (Markdown) and its plot ``<out stem>/curves.png``."""
    runs = [_load(r) for r in run_dirs]
    if not runs:
        raise ValueError("no runs given")
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_arch.setdefault(r["cfg"]["arch"], []).append(r)
    results = {}
    for arch, rs in by_arch.items():
        if not any(r["cfg"]["route"] == "random" and r["cfg"]["init"] for r in rs):
            raise ValueError(f"{arch}: no static-baseline run (random routing with --init)")
        results[arch] = analyse(rs)
    figs = out.with_suffix("")
    figs.mkdir(parents=True, exist_ok=True)
    _plot(results, figs / "curves.png")
    c0 = runs[0]["cfg"]
    lines = [
        "# D2NN: Q-learned controllers in graphs of modules (Liu & Deng)",
        "",
        "Generated by `bash scripts/d2nn_results.sh` (`dyve d2nn train`, `dyve bench`,",
        "`dyve d2nn results`); every number is read from the runs' files, kept in",
        f"`{figs.name}/runs/`. Four graphs built with dyve's graph language on CIFAR-10",
        "(`docs/methods/d2nn.md`), trained from scratch on the train split (45,000 images):",
        "pre-training with random routing, then, from that checkpoint and for the same number",
        "of epochs, either Q-learned controllers (one run per lambda) or random routing again",
        "(the weights of the static baseline); the full static network is also trained alone",
        "for the whole budget. lambda and the test-time cost bias are chosen on val (5,000",
        "images), everything is reported on test (10,000 images). Costs are **executed** MACs",
        "per sample (the fast back-end, controllers included; FLOPs = 2 x MACs). The cascade",
        f"scores class {c0['positive']} against the rest by F1 (over the whole test split;",
        "trained with the F1 of mini-bags of 32 as reward).",
        "",
        "The baseline of each architecture is its **static frontier**: every static path of",
        "the graph (each controller fixed to one action) with the random-routing weights,",
        "the paths trained alone, and every input-independent mixture of them (the upper",
        "concave hull). A D2NN point's *reduction at equal accuracy* is the frontier's cost",
        "at the point's accuracy divided by the point's cost (`>=`: no static mixture reaches",
        "that accuracy, so the frontier's best point's cost is used, a lower bound). The",
        "headline point of an architecture (lambda and bias) is the one with the largest",
        "reduction on val, reported on test.",
        "",
        "![curves](" + figs.name + "/curves.png)",
        "",
    ]
    met = 0
    for arch, res in results.items():
        lines += _section(arch, res, by_arch[arch])
        b = res["best"]
        if b and (b["test_reduction"] or 0) >= TARGET:
            met += 1
    lines += [
        "## Target",
        "",
        f"At equal accuracy, >= {TARGET:.0f}x lower mean cost than the static graph on at "
        f"least {TARGET_ARCHS} architectures: {met} of {len(results)} reach it with their "
        f"val-chosen point: **{'met' if met >= TARGET_ARCHS else 'missed'}**.",
        "",
    ]
    benches = [r["bench"] for r in runs if r["bench"]]
    if benches:
        mach = benches[0]["machine"]
        lines += [
            f"Timings (`dyve bench`, interleaved, median): batch 1 on 1 thread over "
            f"{benches[0]['b1']['images']} test images, batch 64 on 2 threads, against the "
            f"run's own graph with every controller at its static action (the full network, "
            f"eager). Machine: {mach['cpu']}, torch {benches[0]['torch']}.",
            "",
        ]
    with atomic_write(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def _section(arch: str, res: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    name = "F1" if res["metric"] == "f1" else "top-1"
    out = [f"## {arch}", "", f"| static path (test) | {name} (%) | MACs/sample (M) |",
           "| --- | ---: | ---: |"]  # fmt: skip
    for label, (macs, metric) in sorted(res["static"], key=lambda t: t[1][0]):
        out.append(f"| {label} | {metric:.2f} | {macs / 1e6:.2f} |")
    benches = {r["run"]: r["bench"] for r in runs if r["bench"]}
    out += [
        "",
        f"| D2NN run | bias | {name} val (%) | {name} test (%) | MACs/sample test (M) "
        "| reduction at equal accuracy (test) | b=1 speedup | b=64 speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in res["points"]:
        b = benches.get(p["run"]) if p["bias"] == 0 else None
        s1 = f"{b['b1']['speedup_vs_eager']:.2f}x" if b else "-"
        s64 = f"{b['b64']['speedup_vs_eager']:.2f}x" if b else "-"
        red = (
            f"{'>=' if p['test_beyond'] else ''}{p['test_reduction']:.2f}x"
            if p["test_reduction"] is not None
            else "below every static path"
        )
        out.append(
            f"| {p['run']} | {p['bias']} | {p['val_metric']:.2f} | {p['test_metric']:.2f} | "
            f"{p['test_macs'] / 1e6:.2f} | {red} | {s1} | {s64} |"
        )
    b = res["best"]
    if b:
        red = b["test_reduction"]
        verdict = (
            f"{'>=' if b['test_beyond'] else ''}{red:.2f}x cheaper than the static frontier "
            "at that accuracy"
            if red is not None
            else "below every static path on test"
        )
        out += [
            "",
            f"Chosen on val: `{b['run']}` with bias {b['bias']}: {name} {b['test_metric']:.2f} % "
            f"at {b['test_macs'] / 1e6:.2f} M MACs on test, {verdict}.",
        ]
    return [*out, ""]
