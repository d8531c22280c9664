"""How input-adaptive the LC-Net page's runs are: which blocks each image runs, and how far
each image's executed cost spreads.

A learned gate may end up deciding the same for every image, which makes it a static
pruning learned with gates; the page says so from the runs' own files instead of assuming
adaptivity. Blocks come from ``ran_fraction`` in ``metrics.json`` (the share of the report
split's images that ran each block); the cost spread from the executed batch-1 trace's
per-image MACs (``macs_min``, ``macs_p50``, ``macs_p95``, ``macs_max``, which runs
reported before session 33 lack).
"""

from __future__ import annotations

from typing import Any

from dyve.mechanisms.lcnet.train import BASELINES, SPREAD

#: a block run by fewer than this share of the images, or skipped by fewer, counts as
#: decided the same for (nearly) every image
SAME = 0.01


def _blocks(ran: dict[str, float]) -> tuple[int, int, int]:
    """Blocks every image ran, none ran, and some ran and others skipped."""
    always = sum(f == 1 for f in ran.values())
    never = sum(f == 0 for f in ran.values())
    return always, never, len(ran) - always - never


def _varied(ran: dict[str, float]) -> int:
    """Blocks that at least ``SAME`` of the images run and at least ``SAME`` skip."""
    return sum(SAME <= f <= 1 - SAME for f in ran.values())


def _row(r: dict[str, Any]) -> str:
    m = r["m"]
    always, never, some = _blocks(m["ran_fraction"])
    spread = [m.get(k) for k in SPREAD]
    if None in spread:
        cost = "- | - | - | - | -"
    else:
        lo, hi = spread[0], spread[-1]
        ratio = f"{hi / lo:.2f}x" if lo > 0 else "-"  # an image that ran nothing: no ratio
        cost = " | ".join(f"{v / 1e6:.1f}" for v in spread) + f" | {ratio}"
    return f"| {r['run']} | {r['kind']} | {always} | {never} | {some} | {cost} |"


def _finding(rows: list[dict[str, Any]]) -> list[str]:
    """What the blocks say, computed: how many runs with L-Net's gates decide every block
    the same for (nearly) every image, and how many blocks the baseline's gates decide
    per image."""
    lnet = [  # trained to skip blocks (the control without sparsity loss is not)
        r
        for r in rows
        if r["cfg"]["method"] == "lcnet"
        and r["cfg"]["layer"]
        and r["cfg"]["lam_l"] > 0
        and r["m"]["ran_fraction"]
    ]
    baselines = [r for r in rows if r["cfg"]["method"] in BASELINES and r["m"]["ran_fraction"]]
    out = []
    if lnet:
        varied = [f"`{r['run']}`" for r in lnet if _varied(r["m"]["ran_fraction"])]
        share = f"{SAME:.0%}"
        out.append(
            f"- Runs with L-Net's block gates: in {len(lnet) - len(varied)} of {len(lnet)}, "
            f"every block runs for fewer than {share} of the images or is skipped by fewer "
            f"than {share}"
            + (
                f"; blocks decided per image in {', '.join(varied)}."
                if varied
                else ": L-Net's decisions are the same for (nearly) every image, a learned "
                "static choice of blocks."
            )
        )
    for r in baselines:
        ran = r["m"]["ran_fraction"]
        out.append(
            f"- {BASELINES[r['cfg']['method']]} (`{r['run']}`): {_varied(ran)} of its "
            f"{len(ran)} blocks are run by between {SAME:.0%} and {1 - SAME:.0%} of the images."
        )
    return out


def adaptivity_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The page's section on how input-adaptive each run is (``rows`` in the table's order)."""
    some = [r for r in rows if all(k in r["m"] for k in SPREAD)]
    out = [
        "",
        "## How input-adaptive the runs are",
        "",
        "Per run, the residual blocks that every image of the report split runs, that none "
        "runs, and that some run and others skip (`ran_fraction` in `metrics.json`); and the "
        "spread of each image's executed MACs at batch 1 (M)"
        + (
            "; `-`: reported before the spread was kept (a run whose weights are kept is "
            "re-reported with `--resume`)."
            if len(some) < len(rows)
            else "."
        ),
        "",
        "| run | method | blocks always run | never run | run per image | MACs min | p50 | p95 "
        "| max | max / min |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row(r) for r in rows),
        "",
        *_finding(rows),
    ]
    return out
