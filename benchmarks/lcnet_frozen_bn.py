"""Probe (session 33): LC-Net trained with every batch norm's scale and shift frozen, so
that the sparsity loss on the gates' scales cannot be paid by shrinking the residual
stream instead of closing blocks (in `lcnet_r315_kd05_e22_c26_g01` the stem's batch-norm
scale fell from 0.73 to 0.06 and ten of the eleven open blocks' s_L to 0.02-0.06:
`benchmarks/lcnet_gates.py`).

Not a `dyve lcnet train` option: it patches the trainer's parameter groups, and it did
not make L-Net's decisions input-dependent (NOTES, session 33). Otherwise the settings of
`lcnet_l04_c002` in scripts/lcnet_results.sh; extra arguments go to `dyve lcnet train`.
Rerun to resume.

    python benchmarks/lcnet_frozen_bn.py OUT [ARGS...]
"""

import sys
from pathlib import Path
from typing import Any

from torch import nn

import dyve.mechanisms.lcnet.train as lcnet_train
from dyve.cli.main import main
from dyve.dynamic import DynamicNet

trained_groups = lcnet_train._params


def frozen_bn(net: DynamicNet, cfg: lcnet_train.GateTrainConfig) -> list[dict[str, Any]]:
    """The trainer's groups without any batch norm's affine parameters (frozen)."""
    groups = trained_groups(net, cfg)
    frozen = set()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            for p in (m.weight, m.bias):
                p.requires_grad_(False)
                frozen.add(id(p))
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in frozen]
    print(f"frozen: {len(frozen)} batch-norm tensors", flush=True)
    return groups


lcnet_train._params = frozen_bn
out = sys.argv[1]
argv = ["lcnet", "train", "--out", out, "--model", "resnet56_cifar", "--epochs", "3",
        "--weighting", "macs", "--threads", "2", "--lam-l", "0.04", "--lam-c", "0.002",
        "--no-progress", *sys.argv[2:]]  # fmt: skip
sys.exit(main(argv + (["--resume"] if Path(out, "config.json").is_file() else [])))
