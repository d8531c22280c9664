"""Probe (session 34): LC-Net's predictors reading their pooled input *standardised*
(per-channel mean and variance: the batch's in training, running ones at inference,
folded into the linear's weight and bias there, so every inference path sees a plain
linear of the same MACs). A reparametrisation of the paper's predictor, not a new
function class: it asks whether L-Net's decisions come out input-independent (NOTES,
session 33) because the raw pooled input barely varies between images next to its mean.

Not a `dyve lcnet train` option: it patches the gates' linear layers and the trainer's
parameter groups (the predictors' weight matrices get their own learning-rate scale,
`--weight-lr`, times the backbone's). NOTES, session 34, has what it measured.

    python benchmarks/lcnet_standardised.py OUT [--which l|lc] [--weight-lr S]
        [--from RUN] [ARGS...]

`--which`: standardise L-Net's predictors only (`l`) or C-Net's too (`lc`, default).
`--from RUN`: start from a kept LC-Net run (`--init`), converted exactly (the same
outputs at inference, checked) with statistics measured on 10,000 training images.
Either way the run starts from `lcnet_l04_c002`'s settings; ARGS go to
`dyve lcnet train` after them (later ones win), so with `--from` pass the source run's
own settings. Rerun to resume.

The networks it saves load only with this patch (their predictors hold `w_raw` and
running statistics), and the folded weight and bias are recomputed on every call, so
time them with care: the MACs are LC-Net's, the Python overhead is not.
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import dyve.mechanisms.lcnet.gates as gates
import dyve.mechanisms.lcnet.train as lcnet_train
from dyve import data as dyve_data
from dyve.cli.main import main
from dyve.dynamic import DynamicNet, load, save
from dyve.dynamic.unit import Unit
from dyve.eval.measure import measure
from dyve.models import create, model_info

plain_linear, trained_groups = gates._linear, lcnet_train._params


class Standardised(nn.Module):
    """``linear((p - mean) / sqrt(var + eps))``; ``weight`` and ``bias`` are the folded
    plain-linear equivalents under the running statistics (what inference reads)."""

    def __init__(self, c_in: int, c_out: int, bias: float) -> None:
        super().__init__()
        self.w_raw = nn.Parameter(torch.zeros(c_out, c_in))
        self.b_raw = nn.Parameter(torch.full((c_out,), float(bias)))
        self.norm = nn.BatchNorm1d(c_in, affine=False)
        self.in_features, self.out_features = c_in, c_out

    @property
    def weight(self) -> torch.Tensor:
        assert self.norm.running_var is not None
        return self.w_raw / (self.norm.running_var + self.norm.eps).sqrt()

    @property
    def bias(self) -> torch.Tensor:
        assert self.norm.running_mean is not None
        return self.b_raw - self.weight @ self.norm.running_mean

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(self.norm(p), self.w_raw, self.b_raw)
        return F.linear(p, self.weight, self.bias)


def patch(which: str, weight_lr: float) -> None:
    """New LC-Net gates get standardised predictors (L-Net's: one output); the trainer
    gives their weight matrices the learning-rate scale ``weight_lr``."""

    def linear(c_in: int, c_out: int, bias: float, std: float) -> nn.Module:
        if which == "lc" or c_out == 1:
            return Standardised(c_in, c_out, bias)
        return plain_linear(c_in, c_out, bias, std)

    def groups(net: DynamicNet, cfg: lcnet_train.GateTrainConfig) -> list[dict[str, Any]]:
        out = trained_groups(net, cfg)
        w = [p for n, p in net.named_parameters() if n.endswith("w_raw")]
        ids = {id(p) for p in w}
        out[-1]["params"] = [p for p in out[-1]["params"] if id(p) not in ids]
        return [*out, {"params": w, "weight_decay": 0.0, "lr_scale": weight_lr}]

    gates._linear = linear  # type: ignore[assignment]
    lcnet_train._params = groups


def convert(run: str, dest: Path) -> None:
    """``run`` (plain predictors) as a network with standardised ones, same outputs."""
    patched, gates._linear = gates._linear, plain_linear
    raw = load(run).eval()
    gates._linear = patched
    info = model_info(raw.backbone)
    pooled: dict[str, list[torch.Tensor]] = defaultdict(list)
    hooks = []
    for unit_name, unit in raw.named_modules():
        gate = unit.gates["lcnet"] if isinstance(unit, Unit) and "lcnet" in unit.gates else None
        if isinstance(gate, gates.LCGate):  # the gate reads its block's input, pooled

            def hook(_m, inp, name=f"{unit_name}.gates.lcnet"):  # type: ignore[no-untyped-def]
                pooled[name].append(inp[0].mean((2, 3)).double())

            hooks.append(unit.register_forward_pre_hook(hook))
    train = dyve_data.load_images("cifar10-jpeg", "train", shape=info.input_size)
    measure(raw, train.subset(slice(0, 10_000)), info.norm)  # the hooks collect the inputs
    for h in hooks:
        h.remove()
    net = load(run, create(str(raw.backbone_id), pretrained=True), weights=False)
    held, sd = raw.state_dict(), net.state_dict()
    sd.update({k: v for k, v in held.items() if k in sd})
    for name, xs in pooled.items():
        for head in ("l", "c"):
            if f"{name}.{head}.w_raw" not in sd:
                continue
            x = torch.cat(xs)
            mu, var = x.mean(0), x.var(0, unbiased=False)
            w, b = held[f"{name}.{head}.weight"].double(), held[f"{name}.{head}.bias"].double()
            eps = net.get_submodule(f"{name}.{head}.norm").eps
            sd[f"{name}.{head}.w_raw"] = (w * (var + eps).sqrt()).float()
            sd[f"{name}.{head}.b_raw"] = (b + w @ mu).float()
            sd[f"{name}.{head}.norm.running_mean"] = mu.float()
            sd[f"{name}.{head}.norm.running_var"] = var.float()
    net.load_state_dict(sd)
    probe, _ = next(dyve_data.batches(train, 500, info.norm))
    with torch.no_grad():  # the conversion changes no output
        torch.testing.assert_close(net.eval()(probe), raw(probe), rtol=1e-4, atol=1e-4)
    save(net, dest)
    print(f"converted {run} -> {dest}", flush=True)


ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--which", choices=("l", "lc"), default="lc")
ap.add_argument("--weight-lr", type=float, default=1.0)
ap.add_argument("--from", dest="run")
opts, rest = ap.parse_known_args()
patch(opts.which, opts.weight_lr)
argv = ["lcnet", "train", "--out", opts.out, "--model", "resnet56_cifar", "--epochs", "3",
        "--weighting", "macs", "--threads", "2", "--lam-l", "0.04", "--lam-c", "0.002",
        "--no-progress"]  # fmt: skip
if opts.run:
    init = Path(opts.out.rstrip("/") + "_init")
    if not (init / "dynamic.json").is_file():
        convert(opts.run, init)
    argv += ["--init", str(init)]
argv += rest + (["--resume"] if Path(opts.out, "config.json").is_file() else [])
sys.exit(main(argv))
