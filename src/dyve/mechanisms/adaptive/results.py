"""The results page of early-exit and network-selection runs (``dyve adaptive results``).

Everything on the page is read from the runs' ``metrics.json`` and ``curves.json``; the
plots are copied beside the page. The target of the issue is stated with each run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dyve._io import atomic_write, read_json
from dyve.bench import eager_caveat, eager_speedup
from dyve.eval.paired import rule_note

TARGET = 2.8  # measured batch-1 speedup at <= 1 pp top-1 loss (the paper's headline)


def _best_at(points: list[dict[str, Any]], macs: float) -> float | None:
    """Best top-1 among ``points`` that cost no more than ``macs``."""
    ok = [p["top1"] for p in points if p["macs_mean"] <= macs * 1.0001]
    return max(ok) if ok else None


def _dominance(curves: dict[str, Any]) -> tuple[int, int]:
    """Learned points at or above the best threshold baseline of no higher cost."""
    base = curves["baselines"]["max_prob"] + curves["baselines"]["entropy"]
    pts = curves["learned"]
    above = 0
    for p in pts:
        b = _best_at(base, p["macs_mean"])
        above += b is None or p["top1"] >= b
    return above, len(pts)


def _table(curves: dict[str, Any], ref_macs: float) -> list[str]:
    timed = curves.get("latency") is not None
    rows = [
        "| policy | setting | top-1 (%) | mean MACs (M; from cached outputs, not executed) "
        "| MAC reduction |"
        + (" est. latency (ms, batch 1) | est. speedup |" if timed else "")
        + " where samples stop |",
        "| --- | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if timed else "") + " --- |",
    ]

    def row(kind: str, setting: str, p: dict[str, Any]) -> str:
        stops = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["stop_fraction"].items())
        ms = f" {p['latency_ms']:.2f} | {p['speedup_est']:.2f}x |" if timed else ""
        return (
            f"| {kind} | {setting} | {p['top1']:.2f} | {p['macs_mean'] / 1e6:.1f} | "
            f"{ref_macs / p['macs_mean']:.2f}x |{ms} {stops} |"
        )

    for name, p in curves["single"].items():
        rows.append(row("single", name, p))
    for p in curves["learned"]:
        rows.append(row("learned", f"lambda={p['lam']}", p))
    for kind in ("max_prob", "entropy"):
        for p in curves["baselines"][kind][:: max(1, len(curves["baselines"][kind]) // 8)]:
            t = p["threshold"]
            rows.append(row(kind, f"t={t:.3g}" if t is not None else "never", p))
    rows.append(row("oracle", "cheapest correct", curves["oracle"]))
    return rows


def _stages(curves: dict[str, Any], m: dict[str, Any], budget: float) -> list[str]:
    """The stage latency table, the chosen point's estimate against its measurement, and
    the curve's best estimated speedup within the budget on the eval split."""
    lat = curves["latency"]
    macs = {n["name"]: n["macs"] for n in curves["nodes"]}
    rows = [
        f"Stage latencies (batch 1, one thread, {lat['images']} images, interleaved with the "
        "executed point above; a stage = the system forced along the cheapest path to the "
        "node, minus the path to the node before, the policy still asked on the way):",
        "",
        "| node | MACs (M) | stage latency (ms) | path latency (ms) | alone (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for n, ms in lat["stage_ms"].items():
        alone = lat["alone_ms"].get(n)
        rows.append(
            f"| {n} | {macs[n] / 1e6:.1f} | {ms:.2f} | {lat['path_ms'][n]:.2f} | "
            + (f"{alone:.2f} |" if alone is not None else "- |")
        )
    ref_top1 = m["baseline_top1"]
    pts = [
        (p, kind)
        for kind, group in (
            ("learned", curves["learned"]),
            ("max_prob", curves["baselines"]["max_prob"]),
            ("entropy", curves["baselines"]["entropy"]),
        )
        for p in group
        if p["top1"] >= ref_top1 - budget
    ]
    rows.append("")
    if curves["chosen"] is not None:
        c = curves["learned"][curves["chosen"]]
        rows.append(
            f"- The chosen point's estimate from the table: {c['latency_ms']:.2f} ms "
            f"({c['speedup_est']:.2f}x); executed and timed: {m['latency_ms_b1']:.2f} ms "
            f"({m['speedup_b1']:.2f}x)."
        )
    if pts:
        best, kind = max(pts, key=lambda pk: pk[0]["speedup_est"])
        rows.append(
            f"- Best estimated speedup of any curve point within {budget:g} pp on the "
            f"evaluation split (read off the curve, not an operating point: it is picked on "
            f"the split it is reported on): {best['speedup_est']:.2f}x ({kind}, "
            f"{best['top1']:.2f} %)."
        )
    return [*rows, ""]


def _eager_kind(m: dict[str, Any]) -> str:
    """Which eager reference the speedup is against."""
    tuned = m.get("baseline_tuned_ms_b1")
    if tuned is None:
        return " (eager as given; timed before the tuned baseline, which runs faster)"
    return " (eager, tuned)" if tuned <= m["baseline_as_given_ms_b1"] else " (eager, as given)"


def _bench(run: Path, lam: float | None) -> list[str]:
    """The run's ``dyve bench`` result (bench.json), when it has one of the chosen point."""
    if not (run / "bench.json").is_file():
        return []
    b = read_json(run / "bench.json")
    timed = next((v for k, v in b["knobs"].items() if k.split(".")[-1] == "lam"), None)
    if timed != lam:
        return [f"(`bench.json` timed lambda {timed}, not {lam}: left out.)", ""]

    def setting(k: str) -> str:
        s = b[k]
        comp = s["speedup_vs_compiled"]
        return (
            f"batch {s['batch']} ({s['threads']} thread{'s' if s['threads'] > 1 else ''}): "
            f"**{eager_speedup(s):.2f}x** vs dense eager"
            + (f", {comp:.2f}x vs dense compiled" if comp is not None else "")
            + (
                f", {s['speedup_vs_dense_native']:.2f}x vs dense native"
                if s.get("speedup_vs_dense_native") is not None
                else ""
            )
            + f" ({s['cost_reduction']:.2f}x fewer MACs executed)"
        )

    return [
        f"`dyve bench{' --frozen' if b.get('frozen') else ''}` against {b['backbone']} "
        f"({b['b1']['repeats']} interleaved batch-1 "
        f"calls over {b['b1']['images']} {b['data']['split']} images: the mean over the "
        "images of each one's median): "
        f"{setting('b1')}; {setting('b64')}."
        + (f" {caveat}" if (caveat := eager_caveat([b])) else ""),
        "",
    ]


def write_results(runs: list[Path], out: Path) -> Path:
    """Write the page ``out`` (Markdown) and copy each run's plot into ``out``'s folder."""
    figs = out.with_suffix("")
    figs.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Adaptive early exits and network selection (Bolukbasi et al. 2017)",
        "",
        "Generated by `bash scripts/adaptive_results.sh` (`dyve exits fit`, `dyve select fit`,",
        "`dyve adaptive results`); every number comes from the runs' `metrics.json` and",
        "`curves.json`. Costs are MACs per sample (FLOPs = 2 x MACs). Policy curves are",
        "computed from cached outputs; the chosen operating point is then **executed** on the",
        "evaluation split (samples really leave early / networks really not run) and timed at",
        "batch 1 on one thread against the most accurate single network, interleaved, over",
        "real images (mean latency: a dynamic model's time depends on the image). In the",
        "same run a stage latency table is measured (each node's network or segment, head",
        "and policy decision), from which every curve point gets an *estimated* batch-1",
        "latency and speedup (the paper's cost is measured time); the executed point shows",
        "how far the estimate is from a real run. *Frozen*: timed as deployed",
        "(`freeze()`: the native programs take the weights as constants and skip the",
        "per-call check of every weight tensor, as the compiled baseline's `freezing`; the",
        "native references alike; `docs/concepts.md`). A selection runs its networks as native",
        "programs (dyve's runtime, every layer dense), early exit its backbone, heads and",
        "policies as one native program; their stage tables and estimates",
        "are in that runtime, and their measured speedups are stated against the reference",
        "both in eager PyTorch (the issue's baseline: the faster of the network as given and",
        "a tuned copy, BN folded and channels_last, timed in the same run) and in the same",
        "runtime (dense native: the method's own share).",
        "",
        "Splits: the shipped ResNet weights saw CIFAR-10's val images in training, so the",
        "policies are fitted on `test-a` (test images 0-4,999) and reported on `test-b`",
        "(5,000-9,999), the paper's protocol of splitting a held-out set in two. The",
        "operating point is the cheapest learned policy within the budget **on the fit",
        "split**; with a confidence, the budget holds the one-sided upper confidence bound",
        "of the policy's paired loss against the reference there, not the loss itself (the",
        "cheapest policy that passes on the split it was fitted on loses more on others;",
        "`dyve.eval.paired`). *Cross-fitted*: that loss is out of sample, each lambda's",
        "policy fitted on one half of the fit split and judged on the other, both ways (the",
        "policy kept is fitted on the whole split). The *rule* says how the cheapest",
        "of the lambdas that pass is chosen: `bound` takes it as it is, `bonferroni` widens",
        "the bound for the number of lambdas compared (choosing the cheapest of many noisy",
        "estimates adds its own optimism). Each section states its budget.",
        "",
    ]
    for run in runs:
        m, c = read_json(run / "metrics.json"), read_json(run / "curves.json")
        title = (
            f"Early exit on {m['model']} (exits after {', '.join(m['exits'])}; {_heads(m)})"
            if m["method"] == "early_exit"
            else "Network selection: " + " -> ".join(m["networks"])
        )
        shutil.copyfile(run / "curve.png", figs / f"{run.name}.png")
        loss = m["baseline_top1"] - m["top1"]
        above, total = _dominance(c)
        met = m["speedup_b1"] >= TARGET and loss <= 1.0
        lines += [
            f"## {title}",
            "",
            f"![{run.name}]({figs.name}/{run.name}.png)",
            "",
            f"Chosen point (lambda = {m['chosen_lam']}), executed on {m['split']} "
            f"({m['n']} images): top-1 **{m['top1']:.2f} %** vs {m['baseline_top1']:.2f} % "
            f"for {m['baseline']} ({loss:+.2f} pp loss), **{m['cost_reduction']:.2f}x** "
            f"fewer MACs (executed), batch-1 latency {m['latency_ms_b1']:.2f} vs "
            f"{m['baseline_latency_ms_b1']:.2f} ms{_eager_kind(m)}: "
            f"**{m['speedup_b1']:.2f}x measured** "
            f"({m['latency_images']} images; "
            f"{'frozen; ' if m.get('latency_frozen') else ''}{m['machine']['cpu']}, torch "
            f"{m['machine']['torch']}).{_native_share(m)}{_choice(m, c)}",
            "",
            f"- Target (>= {TARGET}x measured batch-1 speedup at <= 1 pp loss): "
            + _verdict(met, m),
            f"- Learned policy at or above the threshold baselines (best threshold point of no "
            f"higher cost): {above} of {total} lambda values.",
            f"- Oracle (cheapest correct exit): {c['oracle']['top1']:.2f} % at "
            f"{c['oracle']['cost_reduction']:.2f}x fewer MACs, the bound no policy can beat.",
            "",
            *_bench(run, m["chosen_lam"]),
            *(_stages(c, m, m["budget_pp"]) if c.get("latency") else []),
            *_table(c, m["baseline_macs_per_sample"]),
            "",
        ]
    with atomic_write(out, "w") as fh:
        fh.write("\n".join(lines))
    return out


def _heads(m: dict[str, Any]) -> str:
    """What the exit heads are: linear, or how many conv layers each has."""
    convs = m.get("head_convs") or {}  # runs from before conv heads: linear
    if not any(convs.values()):
        return "linear heads"
    layers = ", ".join(f"{convs[p]}" for p in m["exits"])
    return f"conv heads: {layers} conv layers, then pooling and a linear layer"


def _choice(m: dict[str, Any], c: dict[str, Any]) -> str:
    """How the operating point was chosen on the fit split: budget, bound, fit loss."""
    conf = m.get("confidence")
    how = rule_note(conf, m.get("rule"), ("cross-fitted",) if m.get("crossfit") else ())
    rule = f"{m['budget_pp']:g} pp{how}"
    if c.get("chosen") is None:
        return f" No learned policy was within the budget ({rule}) on {m['fit_split']}."
    p = c["learned"][c["chosen"]]
    if "fit_loss_pp" not in p:  # curves from before the bound
        return f" Budget {rule} on {m['fit_split']}."
    got = f"loss {p['fit_loss_pp']:.2f} pp" + (
        f", bound {p['fit_loss_bound_pp']:.2f} pp" if conf else ""
    )
    return f" Budget {rule} on {m['fit_split']}: {got}."


def _native_share(m: dict[str, Any]) -> str:
    """The runtime's share of a measured speedup, when the networks ran natively."""
    if m.get("speedup_vs_native_b1") is None:
        return ""
    what = (
        "backbone, heads and policies ran as one native program"
        if m.get("method") == "early_exit"
        else "networks ran as native programs"
    )
    return (
        f" The {what}: against the reference in that runtime "
        f"({m['baseline_native_latency_ms_b1']:.2f} ms) the speedup is "
        f"{m['speedup_vs_native_b1']:.2f}x, the method's own share; the rest is the "
        "runtime's. The stage table and the estimated curve latencies are all native."
    )


def _verdict(met: bool, m: dict[str, Any]) -> str:
    """Met or missed; a speedup that meets the target only through the runtime says so."""
    if not met:
        return "**missed**."
    own = m.get("speedup_vs_native_b1")
    if own is None or own >= TARGET:
        return "**met**."
    return (
        f"**met against the reference in PyTorch, only through the runtime**: against the "
        f"reference in the same native runtime the speedup is {own:.2f}x (missed there)."
    )
