"""Small CIFAR-10 nets: Caffe's "cifar10_quick" class, an AlexNet-style and a SqueezeNet-style net.

* ``caffe_cifar10``: the Caffe CIFAR-10 example class used by DyVEDeep's CIFAR benchmark:
  three 5x5 conv layers (32, 32, 64) with 3x3/stride-2 pooling (Caffe's ceil rounding),
  then FC-64 and FC-10. No batch norm, as in Caffe. ReLU comes right after each conv
  (for the first, max-pooled layer this equals Caffe's pool-then-ReLU order).
* ``alexnet_cifar``: the cuda-convnet/TensorFlow-tutorial adaptation of AlexNet to 32x32
  inputs: two 5x5 conv layers (64) with pooling, then FC-384, FC-192, FC-10; BN after convs.
* ``squeezenet_cifar``: SqueezeNet 1.1's fire modules on a 3x3 stride-1 stem, three
  poolings (32 -> 4), a 1x1 conv classifier and global average pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from dyve.models.core import CIFAR_NORM, ModelInfo, register_model


class CaffeCifar10(nn.Module):
    """Caffe ``cifar10_quick``-style net (about 12 M MACs)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, 1, 2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 32, 5, 1, 2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(32, 64, 5, 1, 2)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 4 * 4, 64)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(self.flatten(x))))


class AlexNetCifar(nn.Module):
    """AlexNet-style CIFAR net (cuda-convnet layout) with BN after the convs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, 1, 2, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(64, 64, 5, 1, 2, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64 * 8 * 8, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then parallel 1x1 and 3x3 expands, concatenated."""

    def __init__(self, c_in: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.squeeze_relu = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_relu(self.squeeze(x))
        return self.expand_relu(torch.cat([self.expand1x1(s), self.expand3x3(s)], 1))


class SqueezeNetCifar(nn.Module):
    """SqueezeNet-1.1-style CIFAR net."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            Fire(64, 16, 64),
            Fire(128, 16, 64),
            nn.MaxPool2d(2),
            Fire(128, 32, 128),
            Fire(256, 32, 128),
            nn.MaxPool2d(2),
            Fire(256, 48, 192),
            Fire(384, 48, 192),
            Fire(384, 64, 256),
            Fire(512, 64, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Conv2d(512, num_classes, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def register() -> None:
    """Register caffe_cifar10, alexnet_cifar and squeezenet_cifar."""
    common = {"input_size": (3, 32, 32), "num_classes": 10, "norm": CIFAR_NORM}
    register_model(
        ModelInfo(
            name="caffe_cifar10",
            family="small_cifar",
            description="Caffe cifar10_quick-style net (DyVEDeep's CIFAR-10 benchmark class)",
            stages=("pool1", "pool2", "pool3"),
            classifier="fc2",
            builder=CaffeCifar10,
            **common,  # type: ignore[arg-type]
        )
    )
    register_model(
        ModelInfo(
            name="alexnet_cifar",
            family="small_cifar",
            description="AlexNet-style CIFAR net (cuda-convnet layout, BN after convs)",
            stages=("features.3", "features.7"),
            classifier="classifier.4",
            builder=AlexNetCifar,
            **common,  # type: ignore[arg-type]
        )
    )
    register_model(
        ModelInfo(
            name="squeezenet_cifar",
            family="small_cifar",
            description="SqueezeNet-1.1-style CIFAR net (fire modules)",
            stages=("features.2", "features.5", "features.8", "features.12"),
            classifier="classifier.1",
            builder=SqueezeNetCifar,
            **common,  # type: ignore[arg-type]
        )
    )
