"""VGG-16 with batch norm for 32x32 inputs (Simonyan & Zisserman 2015, CIFAR variant).

Thirteen 3x3 conv+BN+ReLU layers in five stages, each ending in a 2x2 max-pool, then one
linear classifier on the 1x1x512 map (the usual CIFAR adaptation, no 4096-wide FC layers).
``width`` scales every layer's channel count: the zoo registers the full net and a
quarter-width net (``vgg16_bn_cifar_w025``) that can be trained on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from dyve.models.core import CIFAR_NORM, ModelInfo, register_model

CFG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGGCifar(nn.Module):
    """VGG-16-BN for CIFAR; stages are ``stage1`` ... ``stage5``."""

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        c_in = in_channels
        for s, stage_cfg in enumerate(CFG16, start=1):
            layers: list[nn.Module] = []
            for c in stage_cfg:
                c_out = max(8, round(c * width))
                layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)]
                layers.append(nn.ReLU())
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
            self.add_module(f"stage{s}", nn.Sequential(*layers))
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in range(1, 6):
            x = getattr(self, f"stage{s}")(x)
        return self.classifier(self.flatten(x))


def register() -> None:
    """Register vgg16_bn_cifar (full width) and vgg16_bn_cifar_w025 (quarter width)."""
    for name, width in (("vgg16_bn_cifar", 1.0), ("vgg16_bn_cifar_w025", 0.25)):
        register_model(
            ModelInfo(
                name=name,
                family="vgg_cifar",
                description=f"VGG-16 with BN for CIFAR, width x{width}",
                input_size=(3, 32, 32),
                num_classes=10,
                norm=CIFAR_NORM,
                stages=tuple(f"stage{s}" for s in range(1, 6)),
                classifier="classifier",
                builder=VGGCifar,
                kwargs={"width": width},
            )
        )
