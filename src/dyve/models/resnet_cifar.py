"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, §4.2) with the "option A" shortcut.

Exactly the layout of the akamaster/pytorch_resnet_cifar10 weights (BSD-2): conv3x3(16) +
BN + ReLU, three stages of n BasicBlocks (16, 32, 64 channels; stride 2 at the first block
of stages 2 and 3), global average pool, Linear(64, classes). The option-A shortcut
subsamples ``x[:, :, ::2, ::2]`` and zero-pads planes/4 channels on each side; it has no
parameters. State-dict keys: ``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyve.models.core import CIFAR_NORM, ModelInfo, register_model


class ShortcutA(nn.Module):
    """Parameter-free shortcut: stride-2 subsampling plus zero channel padding."""

    def __init__(self, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_channels
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers and a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = (
            ShortcutA(planes // 4) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n+2."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        planes_in = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.pool(x)))


def register() -> None:
    """Register resnet{20,32,44,56,110}_cifar."""
    for depth in (20, 32, 44, 56, 110):
        register_model(
            ModelInfo(
                name=f"resnet{depth}_cifar",
                family="resnet_cifar",
                description=f"CIFAR ResNet-{depth}, option-A shortcut (He et al. 2016)",
                input_size=(3, 32, 32),
                num_classes=10,
                norm=CIFAR_NORM,
                stages=("layer1", "layer2", "layer3"),
                classifier="linear",
                builder=ResNetCifar,
                kwargs={"depth": depth},
            )
        )
