"""Write a report: ``report.html`` (self-contained), ``report.md``, ``figures/``, ``report.json``.

The HTML page embeds its figures as data URIs, so it can be mailed or archived as one
file; on load a small script marks ``<body data-rendered>`` with the number of figures that
decoded and tables present (what the headless-browser test reads). The Markdown version
links the same PNGs under ``figures/``. ``report.json`` holds every number shown.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from dyve._io import atomic_write, jsonable, write_json
from dyve.bench import eager_speedup
from dyve.cost import CONVENTION
from dyve.report import figures
from dyve.report.collect import Collection, Measured

HEADERS = (
    "subject",
    "method",
    "reference",
    "top-1 (%)",
    "vs reference (pp)",
    "MACs/sample (M, executed)",
    "MAC reduction",
    "p95 cost / dense",
    "b=1 latency (ms)",
    "b=1 speedup (same run)",
    "bench b=1 vs eager / compiled",
    "bench b=64 vs eager",
)


def rows(col: Collection) -> list[list[str]]:
    """The main table, one row per subject (see :data:`HEADERS`)."""
    ref_top1 = {r.subject.reference_name: r.m.top1 for r in col.results if r.subject.is_dense}
    out = []
    for r in col.results:
        s = r.subject
        base = ref_top1.get(s.reference_name)
        delta = "" if base is None or s.is_dense else f"{r.m.top1 - base:+.2f}"
        out.append(
            [
                s.label,
                s.method,
                s.reference_name,
                f"{r.m.top1:.2f}",
                delta,
                f"{r.m.macs_mean / 1e6:.1f}",
                f"{r.reduction:.2f}x",
                f"{float(_p95(r)):.2f}",
                "" if r.latency is None else f"{r.latency.mean_ms:.2f}",
                "" if r.speedup is None else f"{r.speedup:.2f}x",
                _bench(s.bench, 1),
                _bench(s.bench, 64),
            ]
        )
    return out


def _p95(r: Measured) -> float:
    return float(np.percentile(r.relative_cost, 95))


def _bench(bench: dict[str, Any] | None, batch: int) -> str:
    """The run's own bench speedups at batch 1 (vs eager / compiled) or 64 (vs eager)."""
    setting = (bench or {}).get(f"b{batch}")
    if not isinstance(setting, dict) or setting.get("speedup_vs_eager") is None:
        return ""
    eager = f"{eager_speedup(setting):.2f}x"
    if batch > 1:
        return eager
    comp = setting.get("speedup_vs_compiled")
    return f"{eager} / " + ("-" if comp is None else f"{comp:.2f}x")


def notes(col: Collection) -> list[str]:
    """The paragraph under the table: data, conventions, machine, what is measured where."""
    m = col.machine
    cost_modes = sorted({r.m.cost.cost_mode for r in col.results})
    out = [
        f"Data: {col.data.name}/{col.data.split}, {len(col.data)} images. Every subject ran on "
        f"the fast back-end (really skipping); cost mode: {', '.join(cost_modes)}.",
        f"Cost convention: {CONVENTION}",
        "MAC reduction = the reference's static MACs / the subject's mean executed MACs. "
        "p95 cost: the 95th percentile of an image's executed MACs over the reference's.",
    ]
    if col.latency_repeats:
        out.append(
            f"Latency: batch 1, one thread, {col.latency_repeats} interleaved rounds over "
            f"{col.latency_images} images, per subject the mean over the images of each "
            "image's median; every subject and one dense network per reference architecture, "
            "as given and as eager PyTorch runs it fastest (channels_last, BN folded), in the "
            "same run, so a speedup is a ratio of times of one run, against the faster of "
            "the two (a dense subject's own row is as given). Dynamic subjects "
            "are timed frozen, as deployed (`freeze()`: native programs take the weights as "
            "constants, their dense native references alike). Machine: "
            f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}."
        )
    out.append(
        "Bench columns: the run's own `dyve bench` result (bench.json), when it has one: "
        "dense eager (the faster of as given and tuned, where the file has both) and "
        "torch.compile against the fast back-end, timed on its machine."
    )
    return out


FIGURES = (
    ("tradeoff", "Accuracy against executed cost and measured latency"),
    ("effort_hist", "How much each image cost"),
    ("effort_by_class", "Effort per class"),
    ("effort_by_difficulty", "Effort per difficulty"),
    ("examples", "Example images and their effort maps"),
)

CAPTIONS = {
    "examples": "Each strip is one subject's units in execution order (blocks, sites, exits, "
    "networks or D2NN nodes); shade = the unit's executed MACs for this image over the most "
    "it cost any image (dark = skipped, not reached or nearly free). "
    "For DyVEDeep, the small map is one layer (of those at the finest resolution, the one "
    "with the least work in full on these images): the share of its output channels "
    "computed in full at each position (dark = interpolated by SDSS or stopped by SPET), "
    "and, above it, the share of input channels "
    "SFMA approximated over all layers (from the emulation; the fast kernels make the same "
    "SDSS and SFMA decisions). dN = difficulty fifth.",
    "effort_by_difficulty": "Difficulty: fifths of the images by the first subject's dense "
    "reference's probability of the true class (1 = most confident).",
}


def draw(col: Collection) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, by name."""
    out = {"tradeoff": figures.tradeoff(col)}
    if figures.dynamic_results(col):
        out["effort_hist"] = figures.effort_hist(col)
        out["effort_by_class"] = figures.effort_by_class(col)
        out["effort_by_difficulty"] = figures.effort_by_difficulty(col)
        out["examples"] = figures.examples(col, figures.pick_examples(col))
    return out


def write(col: Collection, out: Path, title: str = "dyve report") -> dict[str, Path]:
    """Write the report files into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    pngs = draw(col)
    for name, data in pngs.items():
        with atomic_write(out / "figures" / f"{name}.png") as fh:
            fh.write(data)
    table = rows(col)
    paths = {
        "html": out / "report.html",
        "md": out / "report.md",
        "json": out / "report.json",
    }
    for key, text in (
        ("html", _html(title, col, table, pngs)),
        ("md", _markdown(title, col, table, pngs)),
    ):
        with atomic_write(paths[key], "w") as fh:
            fh.write(text)
    write_json(paths["json"], jsonable(summary(col)))
    return paths


def summary(col: Collection) -> dict[str, Any]:
    """Every number of the report, JSON-ready."""
    return {
        "format": "dyve.report/1",
        "data": {"name": col.data.name, "split": col.data.split, "n": len(col.data)},
        "machine": col.machine,
        "cost_convention": CONVENTION,
        "latency": {"images": col.latency_images, "repeats": col.latency_repeats},
        "subjects": [
            {
                "label": r.subject.label,
                "method": r.subject.method,
                "run_dir": None if r.subject.run_dir is None else str(r.subject.run_dir),
                "reference": r.subject.reference_name,
                "top1": r.m.top1,
                "top5": r.m.top5,
                "macs_mean": r.m.macs_mean,
                "reference_macs": r.reference_macs,
                "reduction": r.reduction,
                "cost_mode": r.m.cost.cost_mode,
                "latency_ms": None if r.latency is None else r.latency.mean_ms,
                "reference_latency_ms": None
                if r.reference_latency is None
                else r.reference_latency.mean_ms,
                "speedup_b1": r.speedup,
                "speedup_b1_vs_native": r.speedup_vs_native,
                "bench": r.subject.bench,
            }
            for r in col.results
        ],
    }


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}
img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}
figcaption{font-size:13px;color:#555}p.note{font-size:13px;color:#444}
"""

_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.filter.call(document.images, function (i) {
    return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-rendered',
    'figures=' + imgs.length + ';tables=' + document.querySelectorAll('table tr').length);
});
"""


def _html(title: str, col: Collection, table: list[list[str]], pngs: dict[str, bytes]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in table)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<table><tr>{head}</tr>{body}</table>",
        *(f"<p class='note'>{e(n)}</p>" for n in notes(col)),
    ]
    for name, heading in FIGURES:
        if name not in pngs:
            continue
        src = "data:image/png;base64," + base64.b64encode(pngs[name]).decode()
        cap = CAPTIONS.get(name, "")
        parts.append(
            f"<figure id='{name}'><h2>{e(heading)}</h2><img alt='{e(heading)}' src='{src}'>"
            f"<figcaption>{e(cap)}</figcaption></figure>"
        )
    parts.append(f"<script>{_CHECK}</script></body></html>")
    return "\n".join(parts)


def _markdown(title: str, col: Collection, table: list[list[str]], pngs: dict[str, bytes]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADERS) + " |"]
    lines.append("| " + " | ".join(["---"] * 3 + ["---:"] * (len(HEADERS) - 3)) + " |")
    lines += ["| " + " | ".join(c or " " for c in r) + " |" for r in table]
    lines.append("")
    for n in notes(col):
        lines += [n, ""]
    for name, heading in FIGURES:
        if name in pngs:
            lines += [f"## {heading}", "", f"![{heading}](figures/{name}.png)", ""]
            if name in CAPTIONS:
                lines += [CAPTIONS[name], ""]
    return "\n".join(lines)
