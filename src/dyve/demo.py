"""``dyve demo``: every method dyve has, on embedded data and weights, then the report.

Two tables. First the shipped dense backbones (top-1 on the sample, static MACs, batch-1
latency, interleaved). Then every method on its shipped run (``dyve/_assets/runs``, see
its README for the commands that made each): the dense baseline, DyVEDeep, early exit,
network selection, LC-Net and D2NN, each measured on the same images on the fast
back-end (executed cost) and timed at batch 1 against its dense reference in one
interleaved run; then ``dyve report`` on them into ``out``. ``full=True`` measures on the
whole CIFAR-10 test split (prepared with ``dyve data prepare cifar10-jpeg``) instead of
the embedded 1,000-image sample.
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from dyve import data as dyve_data
from dyve._io import write_json
from dyve.cost import static_cost
from dyve.eval.evaluate import evaluate
from dyve.eval.latency import machine, model_latency
from dyve.models import create, model_info, shipped_meta, shipped_models

#: The shipped runs, in the order the demo shows them (folders of ``_assets/runs``).
DEMO_RUNS = (
    ("DyVEDeep", "dyvedeep_resnet56"),
    ("early exit", "early_exit_resnet56"),
    ("network selection", "select_caffe_r20_r56"),
    ("LC-Net", "lcnet_resnet56"),
    ("D2NN", "d2nn_hierarchical"),
)


def runs_dir() -> Path:
    """The folder of the shipped runs inside the installed package."""
    return Path(str(resources.files("dyve") / "_assets" / "runs"))


def run_demo(
    out: Path | None = None,
    *,
    repeats: int = 48,
    full: bool = False,
    data_dir: str | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Print both tables (to ``stream``, default: the current ``sys.stdout``), write the
    report (and ``metrics.json``) into ``out``, return the rows."""
    stream = stream if stream is not None else sys.stdout
    t0 = time.time()
    sample = dyve_data.load_sample()
    models = _backbones(sample, repeats, stream)
    images = dyve_data.load_images("cifar10-jpeg", "test", data_dir) if full else sample
    methods, col = _methods(images, repeats, progress, stream)
    result = {"models": models, "methods": methods, "machine": machine()}
    if out is not None:
        from dyve.report import write

        paths = write(col, out, title="dyve demo: every method on CIFAR-10")
        write_json(out / "metrics.json", result)
        print(f"report: {paths['html']} (and {paths['md'].name})", file=stream)
    print(f"done in {time.time() - t0:.1f} s", file=stream)
    return result


def _backbones(sample: Any, repeats: int, stream: TextIO) -> list[dict[str, Any]]:
    """The shipped dense models: top-1 on the sample, static MACs, batch-1 latency."""
    names = shipped_models()
    print(
        f"dyve demo: {len(names)} shipped models on the embedded sample "
        f"({len(sample)} CIFAR-10 test images, JPEG copy)",
        file=stream,
    )
    nets = {n: create(n, pretrained=True) for n in names}
    rows: list[dict[str, Any]] = []
    for n, net in nets.items():
        acc = evaluate(net, sample, model_info(net).norm)
        rows.append({"model": n, "top1_sample": acc.top1, "macs": static_cost(net).total_macs})
    lat = model_latency(nets, sample.shape, repeats=repeats, batch=1, threads=1)
    for r in rows:
        r["latency_ms_b1"] = lat[r["model"]].median_ms
        r["test_top1_full"] = shipped_meta(r["model"]).get("test_top1")
    head = (
        f"{'model':<22} {'top-1 sample':>12} {'top-1 test*':>11} {'MACs/sample':>14} "
        f"{'latency b=1':>12}"
    )
    print(head, file=stream)
    print("-" * len(head), file=stream)
    for r in rows:
        full = r["test_top1_full"]
        print(
            f"{r['model']:<22} {r['top1_sample']:>11.1f}% {full if full is not None else '-':>10}% "
            f"{r['macs'] / 1e6:>12.1f} M {r['latency_ms_b1']:>9.2f} ms",
            file=stream,
        )
    print(
        "MACs: multiply-accumulates of conv/linear per sample (static = executed for dense nets). "
        f"Latency: median of {repeats} interleaved batch-1 runs, 1 thread, on "
        f"{machine()['cpu']}.\n"
        "* top-1 test: the full 10,000-image JPEG test split, from the weights' metadata "
        "(`dyve eval` reproduces it).\n",
        file=stream,
    )
    return rows


def _methods(
    images: Any, repeats: int, progress: bool, stream: TextIO
) -> tuple[list[dict[str, Any]], Any]:
    """Every shipped method run, measured and timed; its table, rows and collection."""
    from dyve.report import collect, load_run, with_dense

    subjects = with_dense([load_run(runs_dir() / folder, label) for label, folder in DEMO_RUNS])
    print(
        f"every method on {images.name}/{images.split} ({len(images)} images), fast back-end, "
        "executed cost; speedup: batch 1, 1 thread, frozen as deployed, against the dense "
        "reference in eager PyTorch at its fastest, in the same interleaved run",
        file=stream,
    )
    col = collect(
        subjects,
        images,
        repeats=repeats,
        progress=progress,
        log=lambda msg: print(f"  {msg}", file=stream),
    )
    base = {r.subject.reference_name: r.m.top1 for r in col.results if r.subject.is_dense}
    head = (
        f"{'method':<22} {'reference':<24} {'top-1':>7} {'vs ref':>7} {'MACs/sample':>12} "
        f"{'MAC reduction':>13} {'speedup b=1':>11} {'vs native':>9}"
    )
    print(head, file=stream)
    print("-" * len(head), file=stream)
    rows = []
    for r in col.results:
        s = r.subject
        delta = r.m.top1 - base[s.reference_name]
        row = {
            "method": s.label,
            "reference": s.reference_name,
            "top1": r.m.top1,
            "delta_pp": delta,
            "macs_mean": r.m.macs_mean,
            "reduction": r.reduction,
            "speedup_b1": r.speedup,
            "speedup_b1_vs_native": r.speedup_vs_native,
            "cost_mode": r.m.cost.cost_mode,
        }
        rows.append(row)
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
        nat = "-" if r.speedup_vs_native is None else f"{r.speedup_vs_native:.2f}x"
        print(
            f"{s.label:<22} {s.reference_name:<24} {r.m.top1:>6.2f}% {delta:>+6.2f} "
            f"{r.m.macs_mean / 1e6:>10.1f} M {r.reduction:>12.2f}x {speed:>11} {nat:>9}",
            file=stream,
        )
    print(
        "MACs executed (what ran, per sample, conv/linear multiply-accumulates); vs ref: "
        "top-1 points against the dense row of the same reference. The dense rows are the "
        "shipped weights, or, for D2NN, its own graph run statically, as given (NCHW); "
        "speedups are against the faster of that and a tuned copy (channels_last, BN "
        "folded), so a dense row below 1.00x is what tuning gains. vs native: against the "
        "dense reference lowered to the same native runtime the method runs in (the skipped "
        "work's share of the speedup; '-': the method runs per module in PyTorch).",
        file=stream,
    )
    return rows, col
