"""Does DyVEDeep's choice of operating point hold its budget on images it did not see?

The calibration verifies 5-20 points of its greedy trajectory on the calibration split and
picks the cheapest whose paired-loss bound is within the budget
(:func:`dyve.eval.paired.choose`). Picking the cheapest of many noisy estimates favours
the one whose estimate was luckiest. This checks each choice rule on the calibration
split alone, never on test: per verified point it re-measures every image's prediction,
then, over random halvings of the split, chooses on one half and measures the chosen
point's loss on the other. The verified points themselves were placed by a search over
the whole split (both halves), so the other half is not quite unseen: the losses measured
there are a little optimistic for every rule alike.

    python benchmarks/point_selection.py docs/results/dyvedeep-time/resnet56_cifar [...]

Per run it prints, per rule, how often no point passes, how often the chosen point
exceeds the budget on the other half, its mean loss on each half and its mean estimated
saving (these over the halvings where a point was chosen). Predictions
are cached in ``--cache`` (the emulated back-end, so any machine gives the same ones).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np

from dyve._io import atomic_save, read_json
from dyve.data import load_images
from dyve.dynamic import load
from dyve.eval.measure import measure
from dyve.eval.paired import RULES, PairedLoss, choose
from dyve.mechanisms.dyvedeep.calibrate import Calibration, apply_knobs
from dyve.models import create, model_info


def _savez(arrays: dict[str, np.ndarray], name: str) -> None:
    with open(name, "wb") as fh:  # a file object: numpy adds no suffix to the temp name
        np.savez(fh, **arrays)


def predictions(run: Path, cache: Path) -> tuple[Calibration, np.ndarray, dict[int, np.ndarray]]:
    """The run's calibration, its split's labels, and per verified step every image's
    prediction (measured once, then read from ``cache``)."""
    cfg = read_json(run / "config.json")
    d = read_json(run / "calibration.json")
    cal = Calibration(**{k: d.get(k) for k in Calibration.__dataclass_fields__})
    backbone = create(cfg["model"], pretrained=cfg["weights"] or True)
    info = model_info(backbone)
    split = load_images(cfg["data"], cfg["split"], limit=cfg["limit"], shape=info.input_size)
    key = hashlib.sha1(
        json.dumps(
            [cfg["data"], cfg["split"], cfg["limit"], cal.trajectory], sort_keys=True
        ).encode()
    ).hexdigest()[:12]
    path = cache / f"{cfg['model']}_{cfg['split']}_{key}.npz"
    preds = {int(k[1:]): v for k, v in np.load(path).items()} if path.exists() else {}
    preds = {s: p for s, p in preds.items() if str(s) in cal.evaluations}
    steps = sorted(int(k) for k in cal.evaluations if int(k) not in preds)
    if steps:
        # the run's own network (its mechanism settings from dynamic.json), emulated
        net = load(run, backbone=backbone, weights=bool(cfg["weights"])).eval()
        net.backend = "emulated"
        mech = net.mechanism("dyvedeep")
        for s in steps:
            apply_knobs(mech, cal.knob_values(s))
            preds[s] = measure(net, split, info.norm, batch_size=250, desc=f"step {s}").predictions
            cache.mkdir(parents=True, exist_ok=True)
            atomic_save(path, partial(_savez, {f"s{k}": v for k, v in preds.items()}))
    dense = np.asarray(cal.dense_predictions)
    for s, p in preds.items():  # the re-measured counts must be the stored ones
        e = cal.evaluations[str(s)]
        got = PairedLoss.of(dense == split.labels, p == split.labels)
        if (got.worse, got.better) != (e["worse"], e["better"]):
            raise SystemExit(f"{run}: step {s} re-measured {got}, stored {e}")
    return cal, np.asarray(split.labels), preds


def halves(
    cal: Calibration, labels: np.ndarray, preds: dict[int, np.ndarray], rounds: int, seed: int
) -> dict[str, dict[str, float]]:
    """Per rule: over ``rounds`` random halvings, the share where no point passes, and over
    the others the share of choices whose loss on the other half exceeds the budget, the
    chosen points' mean loss on the half they were chosen on and on the other half (the
    difference is what choosing the luckiest estimate adds), and their mean estimated
    saving. Each rule is held to the run's own family size (:meth:`Calibration.family`)."""
    budget, conf = cal.config["budget_pp"], cal.config["confidence"]
    cost = "est_us" if cal.config.get("cost", "ops") == "time" else "scalar_ops_mean"
    ref = np.asarray(cal.dense_predictions) == labels
    ok = {s: p == labels for s, p in preds.items()}
    curve = {p["step"]: p for p in cal.curve()}
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[float, float, float]]] = {r: [] for r in RULES}
    none = dict.fromkeys(RULES, 0)
    n = len(labels)
    for _ in range(rounds):
        a = np.zeros(n, bool)
        a[rng.permutation(n)[: n // 2]] = True
        pts = []
        for s in sorted(ok):
            pl = PairedLoss.of(ref[a], ok[s][a])
            pts.append({**curve[s], "worse": pl.worse, "better": pl.better})
        for rule in RULES:
            s = choose(pts, n // 2, budget, conf, cost, rule, cal.family())
            if s is None:  # dense would run: counted apart
                none[rule] += 1
                continue
            seen = PairedLoss.of(ref[a], ok[s][a]).loss_pp
            held = PairedLoss.of(ref[~a], ok[s][~a]).loss_pp
            out[rule].append((seen, held, curve[0][cost] / curve[s][cost]))
    return {
        r: {
            "none_chosen": none[r] / rounds,
            "over_budget": float(np.mean([h > budget for _, h, _ in v])) if v else 0.0,
            "seen_loss_pp": float(np.mean([s for s, _, _ in v])) if v else 0.0,
            "held_loss_pp": float(np.mean([h for _, h, _ in v])) if v else 0.0,
            "mean_saving": float(np.mean([g for _, _, g in v])) if v else 1.0,
        }
        for r, v in out.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="DyVEDeep run directories")
    p.add_argument("--cache", type=Path, default=Path("runs/point-selection"))
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for run in args.runs:
        cal, labels, preds = predictions(run, args.cache)
        res = halves(cal, labels, preds, args.rounds, args.seed)
        print(f"\n{run} ({len(preds)} verified points, {len(labels)} images halved)")
        print(
            f"| rule | no point passes | chosen loss > {cal.config['budget_pp']} pp on the "
            "other half | mean loss, half chosen on (pp) | mean loss, other half (pp) "
            "| mean saving of the chosen point vs step 0 |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r, v in res.items():
            print(
                f"| {r} | {100 * v['none_chosen']:.1f} % | {100 * v['over_budget']:.1f} % "
                f"| {v['seen_loss_pp']:.2f} "
                f"| {v['held_loss_pp']:.2f} | {v['mean_saving']:.3f}x |"
            )


if __name__ == "__main__":
    main()
