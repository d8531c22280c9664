"""BN folding for inference: fold each BatchNorm that follows a conv into the conv."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dyve.graph.blocks import BlockGraph
from dyve.graph.discover import discover


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


def tuned_eager(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, dict[str, object]]:
    """A copy of ``model`` as eager PyTorch runs it fastest on a CPU, for baselines.

    BN folded into the convs (where discovery finds them) and, for image batches, the
    weights in ``channels_last``: on the CIFAR nets here eager PyTorch then runs 24-40 %
    faster at batch 1 than the NCHW model as given (``benchmarks/NOTES.md``, session 24).
    Callers feed it inputs in that layout (:func:`tuned_input`), converted outside the
    timing where they can.

    Returns:
        The copy (eval mode) and what was done: ``{"memory_format": ..., "bn_folded": ...}``.
    """
    try:
        tuned, folded = fold_bn(model, discover(model, example)), True
    except Exception:  # a model discovery cannot trace still gets the layout
        tuned, folded = copy.deepcopy(model).eval(), False
    layout = "channels_last" if example.dim() == 4 else "contiguous"
    if layout == "channels_last":
        tuned = tuned.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return tuned, {"memory_format": layout, "bn_folded": folded}


def tuned_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout :func:`tuned_eager`'s copy takes: channels_last for image batches."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
