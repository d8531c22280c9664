"""The D2NN graphs of :mod:`dyve.mechanisms.d2nn.archs` as zoo models (random weights).

Built plainly they are static networks (every controller at its static action); the
``d2nn`` mechanism makes their controllers decide per input. ``dyve d2nn train`` trains them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from dyve.models.core import CIFAR_NORM, ModelInfo, register_model

DESCRIPTIONS = {
    "highlow": "D2NN high-low capacity: a controller picks a cheap or an expensive branch",
    "cascade": "D2NN cascade: stop or continue after each of 3 stages (one class vs rest)",
    "chain": "D2NN chain: before each of 3 stages a controller picks 1, 2 or 4 filter groups",
    "hierarchical": "D2NN hierarchical: vehicles leaf, animals leaf, or both",
    "hierarchical2": "D2NN hierarchical, two levels: groups, then sub-group leaves",
}


def _build(arch: str, **kwargs: Any) -> nn.Module:
    from dyve.mechanisms.d2nn.archs import build

    return build(arch, **kwargs)


def register() -> None:
    """Register d2nn_highlow_cifar, d2nn_cascade_cifar, d2nn_chain_cifar,
    d2nn_hierarchical_cifar, d2nn_hierarchical2_cifar."""
    for arch, text in DESCRIPTIONS.items():
        register_model(
            ModelInfo(
                name=f"d2nn_{arch}_cifar",
                family="d2nn",
                description=text,
                input_size=(3, 32, 32),
                num_classes=2 if arch == "cascade" else 10,
                norm=CIFAR_NORM,
                stages=(),
                classifier="nodes.out",
                builder=partial(_build, arch),
            )
        )
