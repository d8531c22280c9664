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

from dyve._io import atomic_save, atomic_write, read_json, read_run
from dyve.bench import eager_caveat, eager_speedup

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
    cfg, m = read_run(run, "dyve d2nn train", "arch")
    bench = read_json(run / "bench.json") if (run / "bench.json").is_file() else None
    return {
        "run": run.name,
        "cfg": cfg["config"],
        "m": m,
        "bench": bench,
    }


BASES = {
    "graph": "the same graph's static paths (random-routing weights, same epochs)",
    "all": "every static network (those paths and the paths trained alone)",
}


def _static(runs: list[dict[str, Any]], split: str) -> list[tuple[str, Point, str]]:
    """(label, (MACs, metric), base) of every static point: ``graph`` or ``alone``."""
    key = runs[0]["m"]["metric"]
    out = []
    for r in runs:
        if r["cfg"]["route"] in ("random", "all") and r["cfg"]["init"]:
            for p in r["m"]["points"]:
                label = "/".join(p["static"].values()) + f" (weights of `{r['run']}`)"
                point = (p[f"{split}_macs_per_sample"], p[f"{split}_{key}"])
                out.append((label, point, "graph"))
        elif r["cfg"]["route"] == "static":  # the path it trained: its own, or the full one
            p = max(r["m"]["points"], key=lambda p: p[f"{split}_macs_per_sample"])
            p = r["m"]["points"][0] if r["cfg"].get("static") else p
            label = "/".join(p["static"].values()) + ", trained alone"
            out.append((label, (p[f"{split}_macs_per_sample"], p[f"{split}_{key}"]), "alone"))
    return out


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One architecture: static points, the two frontiers (``graph``: the same graph's
    static paths; ``all``: with the networks trained alone), D2NN points and reductions."""
    key = runs[0]["m"]["metric"]
    fronts = {}
    for split in ("val", "test"):
        pts = _static(runs, split)
        fronts[split] = {
            "graph": frontier([p for _, p, b in pts if b == "graph"]),
            "all": frontier([p for _, p, _ in pts]),
        }
    points = []
    for r in runs:
        if r["cfg"]["route"] != "learned":
            continue
        for p in r["m"]["points"]:
            row = {"run": r["run"], "lam": r["cfg"]["lam"], "bias": p["bias"]}
            for split in ("val", "test"):
                macs, metric = p[f"{split}_macs_per_sample"], p[f"{split}_{key}"]
                row.update({f"{split}_macs": macs, f"{split}_metric": metric})
                for base, front in fronts[split].items():
                    at = cost_at(front, metric)
                    row[f"{split}_{base}"] = None if at is None else (at[0] / macs, at[1])
            points.append(row)
    best = {}
    for base in BASES:
        ok = [p for p in points if p[f"val_{base}"] is not None]
        best[base] = max(ok, key=lambda p: p[f"val_{base}"][0]) if ok else None
    return {
        "metric": key,
        "static": _static(runs, "test"),
        "fronts": fronts["test"],
        "points": points,
        "best": best,
    }


def _kind(cfg: dict[str, Any]) -> str:
    """What a run is: pre-training, joint (learned), frozen (controllers only) or alone."""
    if cfg["route"] == "learned":
        return "frozen" if cfg.get("freeze") else "joint"
    if cfg["route"] == "static":
        return "alone"
    return "pre" if not cfg["init"] else "again"  # random/all from a pre-training run


def _epochs(runs: list[dict[str, Any]], kind: str) -> str:
    """Epochs of the runs of one kind (see :func:`_kind`), as a range if they differ."""
    eps = sorted({r["cfg"]["epochs"] for r in runs if _kind(r["cfg"]) == kind})
    return "-".join(map(str, [eps[0], eps[-1]] if len(eps) > 1 else eps)) or "?"


def _red(v: tuple[float, bool] | None) -> str:
    return "-" if v is None else f"{'>=' if v[1] else ''}{v[0]:.2f}x"


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    for ax, (arch, res) in zip(axes, results.items(), strict=False):
        for base, style, text in (("graph", "o", "static paths"), ("alone", "s", "trained alone")):
            pts = [p for _, p, b in res["static"] if b == base]
            ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], style, color="grey", ms=4,
                    label=text)  # fmt: skip
        for base, style in (("graph", "--"), ("all", ":")):
            fx, fy = zip(*res["fronts"][base], strict=True)
            ax.plot([x / 1e6 for x in fx], fy, style, color="black", lw=0.9,
                    label=f"frontier: {base}")  # fmt: skip
        for run in dict.fromkeys(p["run"] for p in res["points"]):
            mine = sorted(
                (p for p in res["points"] if p["run"] == run), key=lambda p: p["test_macs"]
            )
            ax.plot([p["test_macs"] / 1e6 for p in mine], [p["test_metric"] for p in mine], ".-",
                    label=f"D2NN {run}")  # fmt: skip
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
        if not any(r["cfg"]["route"] in ("random", "all") and r["cfg"]["init"] for r in rs):
            raise ValueError(f"{arch}: no static-graph run (random or all routing with --init)")
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
        f"{_epochs(runs, 'pre')} epochs of pre-training with random routing (`pre`) or with",
        "every branch executed (`all_pre`), then, from that checkpoint,",
        f"{_epochs(runs, 'joint')} epochs of either Q-learned controllers (`lam*`, `all_lam*`:",
        "one run per lambda) or the same pre-training again (`random`, `all`: the weights of",
        "the static graph); from the static graph's weights (`all`, or `random` for the",
        "chain), the controllers alone are also Q-learned with every module frozen",
        f"({_epochs(runs, 'frozen')} epochs, `frozen_lam*`, `--freeze`): their static paths",
        "are exactly the static graph's, so only the decisions differ. The full",
        "network and some cheaper static paths are also trained alone, for",
        f"{_epochs(runs, 'alone')} epochs (the same budget). lambda and the test-time cost",
        "bias are chosen on val (5,000 images), everything is reported on test (10,000",
        "images). Costs are **executed** MACs per sample (the fast back-end, controllers",
        "included; FLOPs = 2 x MACs). The cascade scores class",
        f"{c0['positive']} (airplane) against the rest by F1 over the whole test split; it is",
        "trained with the F1 of mini-bags of 32 as reward.",
        "",
        "Two baselines per architecture, each a **static frontier** (the upper concave hull",
        "of static points: every input-independent mixture of them):",
        "",
        f"- *static graph*: {BASES['graph']}; what the learned decisions add;",
        f"- *all static*: {BASES['all']}; what a user would compare against.",
        "",
        "A D2NN point's *reduction at equal accuracy* is the frontier's cost at the point's",
        "accuracy divided by the point's cost (`>=`: no static mixture reaches it, so the",
        "frontier's best point's cost is used, a lower bound; `-`: the point is poorer than",
        "the cheapest static point). Each architecture's headline point (lambda and bias) is",
        "the one with the largest reduction on val, reported on test.",
        "",
        "![curves](" + figs.name + "/curves.png)",
        "",
    ]
    met: dict[str, list[str]] = {base: [] for base in BASES}
    for arch, res in results.items():
        lines += _section(arch, res, by_arch[arch])
        for base in BASES:
            b = res["best"][base]
            if b and b["test_" + base] and b["test_" + base][0] >= TARGET:
                met[base].append(arch)
    verdict = {b: "met" if len(met[b]) >= TARGET_ARCHS else "missed" for b in BASES}
    lines += [
        "## Target",
        "",
        f"At equal accuracy, >= {TARGET:.0f}x lower mean cost than the static graph on at "
        f"least {TARGET_ARCHS} architectures (val-chosen points, on test):",
        "",
        f"- against the static graph (the same graph's static paths, the target's "
        f"baseline): {len(met['graph'])} of {len(results)} "
        f"({', '.join(met['graph']) or 'none'}): **{verdict['graph']}**;",
        f"- against every static network (also the paths trained alone for the whole "
        f"budget; stricter): {len(met['all'])} of {len(results)} "
        f"({', '.join(met['all']) or 'none'}): **{verdict['all']}**.",
        "",
    ]
    lines += [
        "## Reading the results",
        "",
        "- A D2NN trains several paths in one budget, so each path sees part of the data; a",
        "  static network trained alone for the same epochs gets all of it. The gap between",
        "  the two frontiers is that cost; the D2NN curves are judged against both.",
        "- Controllers that read early features (high-low, chain) learn nearly",
        "  input-independent policies in a few epochs; those that read a cheap head's scores",
        "  (cascade) or pick a coarse class (hierarchical) route per input.",
        "- With the modules frozen at the static graph's weights (`frozen_lam*`), the static",
        "  paths are exactly the baseline's and Q-learning only routes: a controller reading a",
        "  head's scores (cascade) stops confident samples early; one reading trunk features",
        "  (high-low, chain) has little to go on, and learns close to a fixed mixture.",
        "- One hierarchy level caps the hierarchical saving below 2x (one of two leaves",
        "  skipped); the second level (`hierarchical2`) lifts the cap: frozen controllers",
        "  trained long enough route most samples to one of four leaves.",
        "- The D2NN runs as one native program (`docs/methods/d2nn.md`): against eager its",
        "  speedups include the runtime's share. Against the static graph in that runtime",
        "  (*vs static native*) they trail the MAC reductions at batch 1: small nodes run at",
        "  a poorer MAC rate than the full graph's, and each decision has a fixed cost (the",
        "  controller's layers, whose weights are loaded on every call).",
        "- What would close the gaps (high-low, chain; the stricter baseline): longer",
        "  schedules (a GPU), controllers fed a cheap head's confidence, initialising the",
        "  paths from networks trained alone.",
        "",
    ]
    benches = [r["bench"] for r in runs if r["bench"]]
    if benches:
        mach = benches[0]["machine"]
        lines += [
            f"Timings (`dyve bench`, interleaved, median): batch 1 on 1 thread over "
            f"{benches[0]['b1']['images']} test images, batch 64 on 2 threads, against the "
            "run's own graph with every controller at its static action (the full network, "
            "eager; *vs static native*: that graph as one native program, the runtime the "
            "D2NN runs in, so the ratio is the skipped nodes' share; `-`: benched per "
            f"module). Machine: {mach['cpu']}, torch {benches[0]['torch']}."
            + (f" {caveat}" if (caveat := eager_caveat(benches)) else ""),
            "",
        ]
    with atomic_write(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _section(arch: str, res: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    name = "F1" if res["metric"] == "f1" else "top-1"
    out = [f"## {arch}", "", f"| static path (test) | {name} (%) | MACs/sample (M) |",
           "| --- | ---: | ---: |"]  # fmt: skip
    on_front = set(res["fronts"]["graph"]) | set(res["fronts"]["all"])
    shown = [t for t in res["static"] if t[2] == "alone" or t[1] in on_front]
    for label, (macs, metric), _ in sorted(shown, key=lambda t: t[1][0]):
        out.append(f"| {label} | {metric:.2f} | {macs / 1e6:.2f} |")
    if len(shown) < len(res["static"]):
        out += ["", f"({len(res['static']) - len(shown)} static paths below both frontiers "
                "are left out; every one is in the runs' `metrics.json`.)"]  # fmt: skip
    benches = {r["run"]: r["bench"] for r in runs if r["bench"]}
    out += [
        "",
        f"| D2NN run | bias | {name} val (%) | {name} test (%) | MACs/sample test (M) "
        "| reduction vs static graph | reduction vs all static | b=1 speedup "
        "| b=1 vs static native | b=64 speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seen = set()  # rows: each run's bias sweep, less biases that changed no decision
    for p in sorted(res["points"], key=lambda p: (p["run"], p["bias"])):
        same = (p["run"], p["val_metric"], p["test_metric"], p["test_macs"])
        if same in seen:  # a larger bias that changed no decision
            continue
        seen.add(same)
        b = benches.get(p["run"]) if p["bias"] == 0 else None
        s1, nat, s64 = (
            _x(eager_speedup(b["b1"]) if b else None),
            _x(b["b1"].get("speedup_vs_dense_native") if b else None),
            _x(eager_speedup(b["b64"]) if b else None),
        )
        out.append(
            f"| {p['run']} | {p['bias']} | {p['val_metric']:.2f} | {p['test_metric']:.2f} | "
            f"{p['test_macs'] / 1e6:.2f} | {_red(p['test_graph'])} | {_red(p['test_all'])} | "
            f"{s1} | {nat} | {s64} |"
        )
    out.append("")
    for base, text in (("graph", "the static graph"), ("all", "every static network")):
        b = res["best"][base]
        if b is None:
            out.append(f"- Against {text}: no D2NN point is as good as the cheapest on val.")
            continue
        out.append(
            f"- Against {text}, chosen on val: `{b['run']}` with bias {b['bias']}: {name} "
            f"{b['test_metric']:.2f} % at {b['test_macs'] / 1e6:.2f} M MACs on test, "
            f"reduction {_red(b['test_' + base])}."
        )
    return [*out, ""]
