"""Static networks beside the LC-Net runs on their results page (``dyve lcnet results
--static``): ``dyve eval`` runs on the same images, as references of their cost.

A reference with the shipped weights says what a smaller network trained the plain way
reaches at about a run's cost. A reference whose weights come from ``dyve train`` (its
``model.json`` kept beside it) is a *same-recipe control*: the static network trained with
the LC-Net runs' recipe (distillation, schedule), so a run is set against the control of
its cost that trained as many epochs from the shipped weights. Epochs count along the
``init`` chains of both: an LC-Net run started from another run (``--init``) adds that
run's epochs, a control started from another control's ``model.safetensors`` likewise.
A control of the backbone itself (the dense backbone trained as the runs were) is set
against the runs of any cost that trained as many epochs: their loss against it; and the
backbone with its shipped weights, when given, against those controls: what the recipe
alone does to the backbone. Each difference comes with its paired interval when both runs
kept ``correct.npy`` (:func:`dyve.eval.paired.paired_runs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyve._io import read_json
from dyve.errors import DyveError
from dyve.eval.paired import LEVEL, paired_runs, signed_pp

#: a static network is compared with the LC-Net runs within this fraction of its cost
NEAR = 0.05
#: the ``dyve train`` metadata a same-recipe control keeps beside its ``dyve eval`` files
TRAINED = "model.json"


def load_static(run: Path, m0: dict[str, Any]) -> dict[str, Any]:
    """A ``dyve eval`` run's metrics, weights and (for a control) training config, refused
    unless it scored the runs' images (``m0``: a run's metrics)."""
    m = read_json(run / "metrics.json")
    if "model" not in m:
        raise DyveError(f"{run}: not a `dyve eval` run (its metrics.json names no model)")
    where = [m.get(k) for k in ("dataset", "split", "n")]
    if where != [m0[k] for k in ("dataset", "split", "n")]:
        raise DyveError(
            f"{run}: evaluated on {m.get('dataset')} {m.get('split')} ({m.get('n')} images); "
            f"the runs on {m0['dataset']} {m0['split']} ({m0['n']} images)"
        )
    has = (run / TRAINED).is_file()
    trained = read_json(run / TRAINED).get("config") if has else None
    if has and not isinstance(trained, dict):
        raise DyveError(f"{run / TRAINED}: not the metadata of `dyve train` weights (no config)")
    return {
        **m,
        "name": run.name,
        "dir": run,
        "weights": read_json(run / "config.json")["weights"],
        "trained": trained,
    }


def chain_epochs(name: str, steps: dict[str, tuple[int, str | None]]) -> int | None:
    """Epochs trained from the shipped weights by ``name``: its own and, along ``steps``
    (name -> (epochs, the name it started from, or None for the shipped weights)), those
    of every run it started from; None when the chain leaves ``steps``."""
    total, seen = 0, set()
    at: str | None = name
    while at is not None:
        if at not in steps or at in seen:
            return None
        seen.add(at)
        epochs, at = steps[at]
        total += epochs
    return total


def _control_steps(refs: list[dict[str, Any]]) -> dict[str, tuple[int, str | None]]:
    """The controls' chain: a control's ``init`` is ``shipped`` or another's weights file."""
    steps: dict[str, tuple[int, str | None]] = {}
    for s in refs:
        init = s["trained"] and s["trained"]["init"]
        if init:  # not from random initialisation: its epochs count from the shipped weights
            steps[s["name"]] = (
                s["trained"]["epochs"],
                None if init == "shipped" else Path(init).parent.name,
            )
    return steps


def run_steps(rows: list[dict[str, Any]]) -> dict[str, tuple[int, str | None]]:
    """The LC-Net runs' chain: a run's ``init`` is another run's directory."""
    return {
        r["run"]: (
            r["cfg"]["epochs"],
            Path(r["cfg"]["init"]).name if r["cfg"].get("init") else None,
        )
        for r in rows
    }


def _recipe(t: dict[str, Any], epochs: int | None) -> str:
    """How a control was trained, in a few words."""
    teacher = (t.get("teacher") or t["model"]).replace(",", " + ")
    how = (
        f"distill {t['distill']} (T={t['temperature']}) from {teacher}, "
        if t.get("distill")
        else ""
    )
    init = t["init"]
    start = (
        "its shipped weights"
        if init == "shipped"
        else f"`{Path(init).parent.name}`"
        if init
        else "random initialisation"
    )
    total = f", {epochs} epochs from the shipped weights in all" if epochs is not None else ""
    return f"`dyve train` from {start}: {how}{t['epochs']} epochs from lr {t['lr']}{total}"


def _difference(s: dict[str, Any], m: dict[str, Any]) -> tuple[str, bool]:
    """A run's (or a control's) top-1 minus a static network's, with its paired interval
    when both kept their per-image correctness; and whether it is paired."""
    diff = m["top1"] - s["top1"]
    p = paired_runs(s["dir"], m["dir"])  # each file checked against its metrics.json
    if p is None:
        return f"{signed_pp(diff)} pp, unpaired", False
    lo, hi = p.interval_pp(LEVEL)  # of the static network's lead over the run
    return f"{signed_pp(diff)} pp, {LEVEL:.0%} interval {signed_pp(-hi)} to {signed_pp(-lo)}", True


def shipped_backbone(s: dict[str, Any], model: str) -> bool:
    """Whether static reference ``s`` is the backbone ``model`` with its shipped weights:
    the runs' own baseline, set against its same-recipe controls, not against the runs."""
    return not s["trained"] and s["weights"] == "shipped" and s["model"] == model


def static_lines(
    refs: list[dict[str, Any]], rows: list[dict[str, Any]], kinds: tuple[str, ...]
) -> list[str]:
    """One paragraph per static network: its point, and the LC-Net runs (``kinds``) of about
    its cost; for a same-recipe control, those that trained as many epochs, and for a
    control of the backbone itself, those of any cost (their loss against it); for the
    backbone with its shipped weights, its same-recipe controls."""
    base = rows[0]["m"]["baseline_macs_per_sample"]
    runs = run_steps(rows)
    controls = _control_steps(refs)
    model = rows[0]["cfg"]["model"]
    out, paired = [], []
    for s in refs:
        epochs = chain_epochs(s["name"], controls) if s["trained"] else None
        same = s["model"] == model
        backbone = s["trained"] and same  # a control of the backbone itself
        near = [
            r["m"] | {"run": r["run"], "dir": r["dir"]}
            for r in rows
            if r["kind"] in kinds
            and (backbone or abs(r["m"]["macs_per_sample"] / s["macs_per_sample"] - 1) <= NEAR)
        ]
        head = f"Static `{s['model']}`"
        if s["trained"]:
            head = f"Same-recipe control `{s['name']}`: static `{s['model']}`"
            what = f"{_recipe(s['trained'], epochs)}; scored by `dyve eval`"
            near = [
                m for m in near if epochs is not None and chain_epochs(m["run"], runs) == epochs
            ]
            which = (
                "LC-Net runs of any cost that trained as many epochs, set against the "
                "backbone trained as they were"
                if backbone
                else f"LC-Net runs within {NEAR:.0%} of its cost that trained as many epochs"
            )
        elif shipped_backbone(s, model):  # the runs' baseline, against its controls
            what = "`dyve eval`, shipped weights: the dense backbone"
            near = [c | {"run": c["name"]} for c in refs if c["trained"] and c["model"] == model]
            which = "the same-recipe controls of the backbone, set against it"
        else:
            what = (
                f"`dyve eval`, {s['weights']} weights; "
                "the README's zoo table says how they were trained"
            )
            which = f"LC-Net runs within {NEAR:.0%} of its cost"
        cost = (
            "the dense backbone's cost"
            if same
            else f"{base / s['macs_per_sample']:.2f}x fewer than the dense backbone"
        )
        line = (
            f"{head} ({what}): {s['top1']:.2f} % at {s['macs_per_sample'] / 1e6:.1f} M MACs, "
            f"{cost}; {which}: "
        )
        parts = []
        for m in sorted(near, key=lambda m: m["macs_per_sample"]):
            diff, ok = _difference(s, m)
            paired.append(ok)
            parts.append(
                f"`{m['run']}` {m['top1']:.2f} % at {m['macs_per_sample'] / 1e6:.1f} M ({diff})"
            )
        out += [line + (", ".join(parts) or "none") + ".", ""]
    if paired:
        out += [
            "A difference is the top-1 of the run (or control) named minus the static "
            "network's, with its paired "
            f"{LEVEL:.0%} interval from the images on which the two differ (each run's "
            "`correct.npy`)"
            + (
                "; *unpaired*: a run reported before those files were kept (re-report it "
                "with `--resume`, or rerun `dyve eval`)."
                if not all(paired)
                else "."
            ),
            "",
        ]
    return out
