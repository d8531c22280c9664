"""Issue 7's targets on the LC-Net results page, checked against the runs: >= 3x fewer MACs
at <= 0.5 pp top-1 loss on the report split, a measured batch-1 speedup >= 0.7x the MAC
reduction, and LC-Net's curve above each baseline's (ConvNet-AIG, SkipNet-style). A loss
is read with its paired 95 % interval against the dense backbone (:mod:`dyve.eval.paired`):
on 5,000 images a 0.5 pp target is about one standard error wide.
"""

from __future__ import annotations

from typing import Any

from dyve.bench import eager_speedup
from dyve.eval.paired import LEVEL, PairedLoss, signed_pp
from dyve.mechanisms.lcnet.static import chain_epochs, run_steps
from dyve.mechanisms.lcnet.train import BASELINES

DISTILLED = "LC-Net + distillation"
#: the kinds the LC-Net targets are checked on
LCNET = ("LC-Net", DISTILLED)
#: >= 3x fewer MACs at <= 0.5 pp top-1 loss; measured batch-1 speedup >= 0.7 x the reduction
TARGET_REDUCTION, TARGET_LOSS, TARGET_EFFICIENCY = 3.0, 0.5, 0.7


def bounds(m: dict[str, Any]) -> tuple[float, float] | None:
    """The loss's two-sided :data:`LEVEL` interval in pp, from the run's paired counts
    against the dense baseline (None for runs reported before session 30: no counts)."""
    if "paired" not in m:
        return None
    return PairedLoss(m["n"], **m["paired"]).interval_pp(LEVEL)


def interval(m: dict[str, Any]) -> str:
    """:func:`bounds` as the page writes it ("-" without counts)."""
    b = bounds(m)
    return f"{signed_pp(b[0])} to {signed_pp(b[1])}" if b else "-"


def _chosen_blind(lc: list[dict[str, Any]], top: dict[str, Any]) -> list[str]:
    """The run of >= the target's cost chosen on the selection split (where each run kept
    its epoch), with its loss and cost on the report split: a choice among the runs that
    does not read the report's images, so that choice does not inflate its loss (the cost
    filter is the selection split's too, so the run may land just under it here)."""
    picked = [
        r
        for r in lc
        if "select" in r["m"]
        and r["m"].get("select_split") != r["m"]["split"]
        and r["m"]["select"]["cost_reduction"] >= TARGET_REDUCTION
        and bounds(r["m"]) is not None
    ]
    if not picked:
        return []
    c = max(picked, key=lambda r: r["m"]["select"]["top1"])
    m = c["m"]
    where = f"`{m['select_split']}`"
    if c is top:
        return [
            f"  It is also the most accurate such run on {where}, where the runs kept their "
            "epochs, so choosing it did not read these images."
        ]
    return [
        f"  Chosen without reading these images instead (the most accurate run of >= "
        f"{TARGET_REDUCTION}x on {where}, where the runs kept their epochs: "
        f"{m['select']['top1']:.2f} %), `{c['run']}` loses "
        f"{m['baseline_top1'] - m['top1']:.2f} pp here at {m['cost_reduction']:.2f}x, "
        f"interval {interval(m)} pp: a loss "
        "the choice among these runs does not inflate."
    ]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The page's *Targets* section: each of the issue's targets, met or missed, and for a
    missed loss target the best run's paired interval."""
    lc = [r for r in rows if r["kind"] in LCNET]
    ok = [r for r in lc if r["m"]["baseline_top1"] - r["m"]["top1"] <= TARGET_LOSS]
    best = max(ok, key=lambda r: r["m"]["cost_reduction"]) if ok else None
    out = ["## Targets", ""]
    goal = f">= {TARGET_REDUCTION}x fewer MACs at <= {TARGET_LOSS} pp loss"
    if best is None:
        out.append(f"- {goal}: **missed** (no LC-Net run within {TARGET_LOSS} pp).")
        cheap = [r for r in lc if r["m"]["cost_reduction"] >= TARGET_REDUCTION]
        top = max(cheap, key=lambda r: r["m"]["top1"]) if cheap else None
        span = bounds(top["m"]) if top is not None else None
        if top is not None and span is not None:
            m = top["m"]
            out.append(
                f"  The most accurate LC-Net run of >= {TARGET_REDUCTION}x, `{top['run']}`, "
                f"loses {m['baseline_top1'] - m['top1']:.2f} pp; its paired {LEVEL:.0%} "
                f"interval on these {m['n']} images is {interval(m)} pp, so the "
                f"{TARGET_LOSS} pp target is "
                + (
                    "inside it: these images do not rule out a true loss within the target."
                    if span[0] <= TARGET_LOSS
                    else "below it: the true loss exceeds the target beyond the sampling error."
                )
                + (
                    f" It is the best of {len(cheap)} such runs on these same images, so its "
                    "loss and interval read optimistic."
                    if len(cheap) > 1
                    else ""
                )
            )
            if len(cheap) > 1:
                out.extend(_chosen_blind(lc, top))
    else:
        red = best["m"]["cost_reduction"]
        verdict = "met" if red >= TARGET_REDUCTION else "missed"
        out.append(
            f"- {goal}: the cheapest LC-Net run within {TARGET_LOSS} pp is "
            f"`{best['run']}` at {red:.2f}x: **{verdict}**."
        )
    timed = [r for r in lc if r["bench"]]
    if timed:
        effs = [eager_speedup(r["bench"]["b1"]) / r["m"]["cost_reduction"] for r in timed]
        verdict = "met" if min(effs) >= TARGET_EFFICIENCY else "missed"
        short = [
            f"`{r['run']}` ({e:.2f})"
            for r, e in zip(timed, effs, strict=True)
            if e < TARGET_EFFICIENCY
        ]
        out.append(
            f"- Measured batch-1 speedup (against dense eager) >= {TARGET_EFFICIENCY} x the MAC "
            f"reduction: LC-Net runs reach {min(effs):.2f}-{max(effs):.2f}: **{verdict}**"
            + ("." if verdict == "met" else f", below it: {', '.join(short)}.")
            + " Against the dense network in the same native runtime (the skipped work "
            "alone) see *Where the time goes*."
        )
    baselines = [r for r in rows if r["kind"] in BASELINES.values()]
    steps = run_steps(rows) if baselines else {}
    for a in baselines:
        cheaper = [r for r in lc if r["m"]["macs_per_sample"] <= a["m"]["macs_per_sample"]]
        # a fair match: no longer schedule and the same use of a teacher as the baseline's
        epochs = chain_epochs(a["run"], steps)
        matched = [
            r
            for r in cheaper
            if _within(chain_epochs(r["run"], steps), epochs) and _taught(r) == _taught(a)
        ]
        how = "distilled" if _taught(a) else "not distilled"
        out.append(
            f"- LC-Net's curve above {a['kind']}'s (`{a['run']}`): "
            + _above(cheaper, a, "best LC-Net run of no higher cost")
            + "; "
            + _above(matched, a, f"of those trained as it was ({epochs} epochs or fewer, {how})")
            + "."
        )
    return out


def _within(epochs: int | None, limit: int | None) -> bool:
    return epochs is not None and limit is not None and epochs <= limit


def _taught(r: dict[str, Any]) -> bool:
    """Whether a run was trained with distillation (runs before the option have no key)."""
    return bool(r["cfg"].get("distill", 0.0) > 0)


def _above(runs: list[dict[str, Any]], a: dict[str, Any], what: str) -> str:
    """Whether the most accurate of ``runs`` (LC-Net runs of no higher cost than the
    baseline run ``a``) is at least as accurate as ``a``."""
    top = max(runs, key=lambda r: r["m"]["top1"], default=None)
    if top is None:
        return f"{what}: none"
    t, b = top["m"]["top1"], a["m"]["top1"]
    verdict = "**LC-Net above**" if t >= b else "**LC-Net below**"
    return f"{what}: `{top['run']}` {t:.2f} % vs {b:.2f} %: {verdict}"
