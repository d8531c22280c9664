"""Copy the runs `dyve demo` shows into the package (`src/dyve/_assets/runs/`).

Made by these commands (on 2 cores; see `scripts/*_results.sh`): LC-Net's chain of
continuations takes 4-6 hours, the others about 45 minutes in all:

    COST=time bash scripts/dyvedeep_results.sh  # docs/results/dyvedeep-time/resnet56_cifar
    dyve exits fit --model resnet56_cifar --convs -1 --out runs/adaptive/exits_resnet56_conv
    dyve select fit --models caffe_cifar10,resnet20_cifar,resnet56_cifar \
        --out runs/adaptive/select_caffe_r20_r56
    bash scripts/lcnet_results.sh  # LC-Net at about 3x: its weights kept beside the page
    dyve d2nn train --arch hierarchical --out runs/d2nn/hierarchical/all_pre --route all --epochs 4
    dyve d2nn train --arch hierarchical --out runs/d2nn/hierarchical/all_lam0.1 --route learned \
        --lam 0.1 --epochs 3 --init runs/d2nn/hierarchical/all_pre

then `python scripts/ship_runs.py`. Early exit keeps only its heads (the backbone is the
shipped resnet56_cifar, `save(backbone_weights=False)`); LC-Net and D2NN keep their whole
network (they fine-tune or train it).
"""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path

from dyve._io import atomic_save
from dyve.dynamic import load, save

#: shipped folder -> (source run, files copied as they are)
RUNS = {
    "dyvedeep_resnet56": (
        "docs/results/dyvedeep-time/resnet56_cifar",
        ("dynamic.json", "dynamic.safetensors"),
    ),
    "early_exit_resnet56": ("runs/adaptive/exits_resnet56_conv", ()),
    "select_caffe_r20_r56": (
        "runs/adaptive/select_caffe_r20_r56",
        ("selection.json", "policies.safetensors"),
    ),
    "lcnet_resnet56": (
        "docs/results/lcnet/runs/lcnet_r315_kd05_e100",
        ("dynamic.json", "dynamic.safetensors"),
    ),
    "d2nn_hierarchical": (
        "runs/d2nn/hierarchical/all_lam0.1",
        ("dynamic.json", "dynamic.safetensors"),
    ),
}
#: small files every shipped run keeps (provenance; the sweep a report draws), when present
PROVENANCE = ("config.json", "metrics.json", "curve.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=Path("src/dyve/_assets/runs"))
    ap.add_argument("--only", nargs="*", choices=list(RUNS), help="ship only these runs")
    args = ap.parse_args()
    for name, (src, files) in RUNS.items():
        if args.only and name not in args.only:
            continue
        source, dest = Path(src), args.dest / name
        dest.mkdir(parents=True, exist_ok=True)
        if not files:  # a frozen zoo backbone: keep only what the mechanism trained
            save(load(source), dest, backbone_weights=False)
        for f in files + tuple(p for p in PROVENANCE if (source / p).is_file()):
            # temp file + rename: an interrupted copy never leaves a torn shipped file
            atomic_save(dest / f, partial(shutil.copyfile, source / f))
        size = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
        print(f"{dest}: {size:.2f} MB from {source}")


if __name__ == "__main__":
    main()
