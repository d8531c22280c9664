"""BN folding for inference: fold each BatchNorm that follows a conv into the conv."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dyve.graph.blocks import BlockGraph


@torch.no_grad()
def fold_bn(model: nn.Module, graph: BlockGraph) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BN that follows a conv folded into the conv.

    The folded BN is replaced by ``nn.Identity``. Outputs equal the original's up to float
    rounding (not bit for bit), so back-ends that must match the backbone exactly do not
    fold; deployment and benchmarks do.
    """
    folded = copy.deepcopy(model).eval()
    mods = dict(folded.named_modules())
    for s in graph.sites:
        if s.kind != "conv" or s.bn is None:
            continue
        conv, bn = mods[s.name], mods[s.bn]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        if bn.running_var is None or bn.running_mean is None:
            continue
        scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        shift = bn.bias if bn.bias is not None else 0.0
        conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
        parent_name, _, attr = s.bn.rpartition(".")
        parent = mods[parent_name] if parent_name else folded
        setattr(parent, attr, nn.Identity())
    return folded
