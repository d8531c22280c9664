"""The LC-Net results page (``dyve lcnet results``): curve, ablations, baseline, targets.

Everything on the page is read from the runs' ``config.json``, ``metrics.json``,
``best.json``, (when ``dyve bench`` ran) ``bench.json`` and (for paired differences from
static networks) ``correct.npy``; the plot is written beside the page. The issue's targets
are checked against the LC-Net runs and stated as met or missed
(:mod:`dyve.mechanisms.lcnet.targets`). Static networks evaluated on the same images
(``dyve eval`` runs) are shown as references of their cost, with the shipped weights or
trained with the runs' recipe (:mod:`dyve.mechanisms.lcnet.static`). A run's loss comes
with its paired 95 % interval (:mod:`dyve.eval.paired`) where its metrics hold the paired
counts. How input-adaptive each run is: :mod:`dyve.mechanisms.lcnet.adaptivity`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dyve._io import atomic_save, atomic_write, read_json, read_run
from dyve.bench import eager_caveat, eager_speedup
from dyve.eval.paired import LEVEL
from dyve.mechanisms.lcnet.adaptivity import adaptivity_lines
from dyve.mechanisms.lcnet.static import load_static, shipped_backbone, static_lines
from dyve.mechanisms.lcnet.targets import (
    DISTILLED,
    LCNET,
    TARGET_LOSS,
    TARGET_REDUCTION,
    interval,
    targets,
)
from dyve.mechanisms.lcnet.train import BASELINES, GateTrainConfig

CONTROL = "control (no sparsity loss)"


def _label(cfg: dict[str, Any]) -> tuple[str, str]:
    """(kind, setting) of a run: LC-Net, L-Net only, C-Net only or a baseline, and its
    lambdas (a baseline: its target rate or cost weight)."""
    if cfg["method"] == "aig":
        return BASELINES["aig"], f"target {cfg['target']}"
    if cfg["method"] == "skipnet":
        return BASELINES["skipnet"], f"alpha {cfg['alpha']}"
    if not (cfg["lam_l"] or cfg["lam_c"]):  # gates trained without the sparsity loss
        return CONTROL, "lam_L = lam_C = 0"
    kind = "LC-Net" if cfg["layer"] and cfg["channel"] else "L-Net" if cfg["layer"] else "C-Net"
    if cfg["predictor"] == "global":
        kind += " (global)"
    lams = [
        f"lam_L={cfg['lam_l']}" if cfg["layer"] else "",
        f"lam_C={cfg['lam_c']}" if cfg["channel"] else "",
    ]
    setting = ", ".join(x for x in lams if x) + f" ({cfg['weighting']})"
    if cfg.get("target_reduction"):  # runs before the option have no key
        setting += f" steered to {cfg['target_reduction']}x"
    if cfg.get("distill", 0.0) > 0:  # runs before the option have no key
        kind = DISTILLED if kind == "LC-Net" else kind + " + distillation"
        setting += f", distill {cfg['distill']} (T={cfg['temperature']})"
        if cfg.get("teacher") or cfg.get("teacher_flip"):  # runs before them have no keys
            names = (cfg.get("teacher") or cfg["model"]).replace(",", " + ")
            setting += f" from {names}" + (" with mirrors" if cfg.get("teacher_flip") else "")
    if cfg.get("init"):  # runs before the option have no key
        setting += f", started from `{Path(cfg['init']).name}`"
    if cfg["gate_lr_scale"] != GateTrainConfig.gate_lr_scale:
        setting += f", gate lr x{cfg['gate_lr_scale']}"
    if cfg.get("warmup_epochs"):  # runs before the option have no key
        setting += f", {cfg['warmup_epochs']:g}-epoch lr warm-up"
    if cfg.get("reopen"):  # runs before the option have no key
        setting += ", channels reopen"
    if cfg.get("min_reduction"):  # runs before the option have no key
        setting += f", kept at >= {cfg['min_reduction']}x"
    return kind, setting


def _load(run: Path) -> dict[str, Any]:
    raw, m = read_run(run, "dyve lcnet train", "method")
    cfg = raw["config"]
    bench = read_json(run / "bench.json") if (run / "bench.json").is_file() else None
    kind, setting = _label(cfg)
    return {
        "run": run.name,
        "dir": run,
        "kind": kind,
        "setting": setting,
        "cfg": cfg,
        "m": m,
        "bench": bench,
    }


def _epochs(rows: list[dict[str, Any]]) -> str:
    """How long the runs trained: the usual count, and the runs that trained longer or less."""
    counts = [r["cfg"]["epochs"] for r in rows]
    usual = max(set(counts), key=counts.count)
    other = [f"`{r['run']}` {r['cfg']['epochs']}" for r in rows if r["cfg"]["epochs"] != usual]
    return f"{usual} epochs" + (f" ({', '.join(other)})" if other else "")


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def _plot(rows: list[dict[str, Any]], refs: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = {
        "LC-Net": "o-",
        DISTILLED: "o--",
        "L-Net": "s",
        "C-Net": "^",
        BASELINES["aig"]: "D",
        BASELINES["skipnet"]: "v",
        CONTROL: "P",
    }
    for kind in dict.fromkeys(r["kind"] for r in rows):
        pts = sorted(
            (r for r in rows if r["kind"] == kind), key=lambda r: r["m"]["macs_per_sample"]
        )
        ax.plot(
            [r["m"]["macs_per_sample"] / 1e6 for r in pts],
            [r["m"]["top1"] for r in pts],
            styles.get(kind, "x--"),
            label=kind,
            ms=6,
        )
    labelled = set()
    for s in refs:  # shipped weights: named; same-recipe controls: one marker for all
        if shipped_backbone(s, rows[0]["cfg"]["model"]):
            continue  # the dense backbone: its own marker below
        xy = (s["macs_per_sample"] / 1e6, s["top1"])
        label = "static, trained as the runs" if s["trained"] else "static network"
        ax.plot(*xy, "kD" if s["trained"] else "ks", mfc="none", ms=6,
                label=None if label in labelled else label)  # fmt: skip
        labelled.add(label)
        if not s["trained"]:
            ax.annotate(s["model"], xy, xytext=(5, -9), textcoords="offset points", fontsize=6)
    m = rows[0]["m"]
    ax.plot(
        m["baseline_macs_per_sample"] / 1e6, m["baseline_top1"], "k*", ms=11, label="dense backbone"
    )
    ax.axhline(m["baseline_top1"] - TARGET_LOSS, color="grey", lw=0.8, ls=":", label="-0.5 pp")
    ax.axvline(
        m["baseline_macs_per_sample"] / TARGET_REDUCTION / 1e6,
        color="grey",
        lw=0.8,
        ls="--",
        label="3x fewer MACs",
    )
    ax.set_xlabel(
        "mean MACs per sample (millions, executed at batch 1; FLOPs = 2 x MACs)", fontsize=7
    )
    ax.set_ylabel(f"top-1 (%) on {m['split']}")
    ax.set_title("LC-Net on ResNet-56, CIFAR-10: ablations and baselines", fontsize=9)
    ax.legend(fontsize=7)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_results(runs: list[Path], out: Path, static: list[Path] | None = None) -> Path:
    """Write the page ``out`` (Markdown) and its plot ``out``'s stem + ``/curve.png``;
    ``static`` are ``dyve eval`` runs of static networks on the same images."""
    rows = [_load(r) for r in runs]
    if not rows:
        raise ValueError("no runs given")
    m0 = rows[0]["m"]
    refs = [load_static(s, m0) for s in static or []]
    figs = out.with_suffix("")
    figs.mkdir(parents=True, exist_ok=True)
    _plot(rows, refs, figs / "curve.png")
    lines = [
        "# LC-Net: learned layer and channel skipping (Xia et al.)",
        "",
        "Generated by `bash scripts/lcnet_results.sh` (`dyve lcnet train`, `dyve bench`,",
        "`dyve lcnet results`); every number is read from the runs' files. Each run",
        f"fine-tunes the shipped {rows[0]['cfg']['model']} with its gates for",
        f"{_epochs(rows)} on the train split, keeps the most accurate epoch on",
        f"`{m0['select_split']}` once the lambda ramp is over, and reports it once on",
        f"`{m0['split']}` ({m0['n']} images; the shipped weights saw val, so test is split in",
        "two). Top-1 and MACs are **executed**: the fast back-end at batch 1 (skipped blocks",
        "not called, skipped channels not computed); MACs per sample, FLOPs = 2 x MACs,",
        "predictor MACs included. The baseline is the dense shipped backbone on the same",
        "images. Each run's small files (config, metrics, history, bench and, if reported",
        f"since session 32, `correct.npy`) are kept in `{figs.name}/runs/`.",
        "",
        "![curve](" + figs.name + "/curve.png)",
        "",
        f"| run | method | setting | top-1 (%) | loss (pp) | loss {LEVEL:.0%} interval (pp, "
        "paired) | MACs/sample (M, executed b=1) | MAC reduction | blocks run "
        "| b=1 speedup vs eager | b=1 vs dense native | b=64 speedup vs eager "
        "| b=64 vs dense native | b=1 speedup / MAC reduction |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    ordered = sorted(rows, key=lambda r: (r["kind"], -r["m"]["macs_per_sample"]))
    for r in ordered:
        m, b = r["m"], r["bench"]
        ran = m["ran_fraction"]
        s1, n1 = _speedups(b, "b1")
        s64, n64 = _speedups(b, "b64")
        eff = s1 / m["cost_reduction"] if s1 else None
        lines.append(
            f"| {r['run']} | {r['kind']} | {r['setting']} | {m['top1']:.2f} | "
            f"{m['baseline_top1'] - m['top1']:+.2f} | {interval(m)} | "
            f"{m['macs_per_sample'] / 1e6:.1f} | "
            f"{m['cost_reduction']:.2f}x | {100 * sum(ran.values()) / len(ran):.0f}% | "
            f"{_x(s1)} | {_x(n1)} | {_x(s64)} | {_x(n64)} | {f'{eff:.2f}' if eff else '-'} |"
        )
    lines += [
        "",
        f"Dense {rows[0]['cfg']['model']}: {m0['baseline_top1']:.2f} % at "
        f"{m0['baseline_macs_per_sample'] / 1e6:.1f} M MACs on {m0['split']}.",
        "",
        *static_lines(refs, rows, LCNET),
    ]
    for c in (r for r in rows if r["kind"] == CONTROL):
        lines += [
            f"Control `{c['run']}`: the same fine-tuning with the gates but no sparsity loss "
            f"reaches {c['m']['top1']:.2f} % at {c['m']['cost_reduction']:.2f}x: the part of "
            "every run's accuracy loss that the short fine-tuning itself causes.",
            "",
        ]
    lines += targets(rows)
    lines += adaptivity_lines(ordered)
    lines += _where_time_goes(rows)
    benches = [r["bench"] for r in rows if r["bench"]]
    if benches:
        machines = _by(rows, lambda b: f"{b['machine']['cpu']}, torch {b['torch']}")
        where = (
            f"Machine: {next(iter(machines))}."
            if len(machines) == 1
            else "Machines (each run's ratios are from one run on one machine): "
            + "; ".join(f"{m} ({', '.join(runs)})" for m, runs in machines.items())
            + "."
        )
        builds = _by(rows, lambda b: b.get("kernels") or "not recorded (benched before session 19)")
        if len(builds) > 1:
            where += (
                " Native kernel builds (`kernels` in `bench.json`: a hash of their sources, "
                "flags, compiler and CPU; the same build times the same code): "
                + "; ".join(f"{b} ({', '.join(runs)})" for b, runs in builds.items())
                + "."
            )
        old = [
            f"`{r['run']}`" for r in rows if r["bench"] and "dense_native_call" not in r["bench"]
        ]
        if old and len(old) < len(benches):
            where += (
                f" Benched with older code ({', '.join(old)}): among other changes since, "
                "the predictors' channel means were then summed one by one (8-10 % of an "
                "LC-Net program's time, "
                "`benchmarks/kernel_ab.py`), and the dense native reference was called "
                "without the check the gated network pays before its program runs (about "
                "3-4 % in the reference's favour; `benchmarks/call_overhead.py`): their "
                "speedups read low against the other runs'."
            )
        where += _calls(rows)
        caveat = eager_caveat(benches)
        where += f" {caveat}" if caveat else ""
        lines += [
            "",
            f"Timings (`dyve bench`, interleaved; per run the mean over the images of each "
            f"image's median): batch 1 on 1 thread over "
            f"{benches[0]['b1']['images']} test images, batch 64 on 2 threads; dense eager is the "
            f"shipped network without gates; dense native is the same network lowered to the "
            "native runtime the gated network runs in (every layer dense; the speedup against "
            "it is the skipped work's share). "
            f"{where} The MACs in `bench.json` "
            "come from the per-block path's trace, which at batch 64 computes per block the "
            "union of the kept channels of the samples that run it; the native program "
            "computes each sample's own channels, so at batch 64 they bound what it ran.",
        ]
    with atomic_write(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def _speedups(bench: dict[str, Any] | None, key: str) -> tuple[float | None, float | None]:
    """(speedup vs dense eager, vs the dense native program) of one setting, if timed."""
    if not bench:
        return None, None
    return eager_speedup(bench[key]), bench[key].get("speedup_vs_dense_native")


def _span(values: list[float], fmt: str = "{:.2f}x") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if f"{lo:.2f}" == f"{hi:.2f}" else f"{fmt.format(lo)}-{fmt.format(hi)}"


def _by(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[str]]:
    """The benched runs (as `name`) grouped by ``key`` of their ``bench.json``, in order."""
    out: dict[Any, list[str]] = {}
    for r in rows:
        if r["bench"]:
            out.setdefault(key(r["bench"]), []).append(f"`{r['run']}`")
    return out


def _calls(rows: list[dict[str, Any]]) -> str:
    """How the gated networks were called in their benches: frozen or checked."""
    calls = _by(rows, lambda b: bool(b.get("frozen")))
    frozen, checked = calls.get(True, []), calls.get(False, [])
    what = (
        "frozen (`dyve bench --frozen`, `net.freeze()`: the programs take the weights as "
        "constants, as the compiled baseline's `freezing` does; the dense native reference "
        "alike)"
    )
    cost = (
        "checked (each call first walks every weight tensor to see that none changed, "
        "`docs/concepts.md`; the dense native reference alike)"
    )
    if not frozen:
        return f" The gated networks were called {cost}."
    if not checked:
        return f" The gated networks were timed {what}."
    return (
        f" The gated networks were timed {what}, except {', '.join(checked)}, called {cost}: "
        "those read low against the others."
    )


def _where_time_goes(rows: list[dict[str, Any]]) -> list[str]:
    """The account of batch-1 time: the runtime's share, the skipped work's, the gates'."""
    out = ["", "## Where the time goes", ""]
    native = [r for r in rows if r["bench"] and r["bench"]["b1"].get("dense_native_ms")]
    if not native:
        out.append(
            "- These benches predate the native runtime (no `dense_native` timing): the "
            "gated network ran per block in PyTorch, whose per-op costs at batch 1 exceed "
            "what small sliced convolutions save. Rerun `dyve bench` on the runs."
        )
        return out
    runtime = [eager_speedup(r["bench"]["b1"]) / r["bench"]["b1"]["speedup_vs_dense_native"]
               for r in native]  # fmt: skip
    out.append(
        "- The fast back-end runs the whole gated network as one native program "
        "(`fast_gated.cpp`: per block the predictors, then the block skipped or only its kept "
        "channels computed). The dense backbone in that runtime is "
        f"{_span(runtime)} faster than dense eager at batch 1: that is the runtime's share "
        "of every speedup in the table, whatever the gates decide."
    )
    lc = [r for r in native if r["kind"] in LCNET]
    if lc:
        share = [r["bench"]["b1"]["speedup_vs_dense_native"] for r in lc]
        eff = [s / r["m"]["cost_reduction"] for s, r in zip(share, lc, strict=True)]
        out.append(
            f"- The skipped work's share (against dense native) is {_span(share)} for LC-Net "
            f"runs of {_span([r['m']['cost_reduction'] for r in lc])} fewer MACs: "
            f"{_span(eff, '{:.2f}')} of the MAC reduction. A block's predictors (channel "
            "means, one or two small linear maps) are paid by every sample, and a kept "
            "channel subset runs the dense tile on fewer filters and input channels, with "
            "the per-sample layouts still built for the whole input."
        )
    for c in (r for r in native if r["kind"] == CONTROL):
        out.append(
            f"- The control run `{c['run']}` skips nothing: against dense native it runs at "
            f"{c['bench']['b1']['speedup_vs_dense_native']:.2f}x, what the predictors and the "
            "scaling cost when nothing is skipped."
        )
    out.append(
        "- At batch 64 the program runs each sample through its own blocks and channels "
        "(samples split over the threads), so it keeps batch 1's per-sample kernels; the "
        "dense eager baseline batches the samples in oneDNN's GEMMs instead."
    )
    out.append(
        "- What would close the accuracy gap: more training. A run steered to a cost "
        "(`--target-reduction`) lands at the cost it is given, so what is left is the "
        "accuracy at that cost, and these runs train far fewer epochs than the usual CIFAR "
        "schedules (160 or more)."
    )
    return out
