"""Small backbones for tests and docs, built to exercise what zoo ResNets do not.

``ToyBottleneckNet`` has torchvision-style bottleneck blocks: the shortcut is called
before the residual branch, downsampling shortcuts are conv+BN (they cost MACs), the
merge is an in-place add, and the block ends with a ReLU applied after the merge.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 bottleneck with an optional conv+BN downsample shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out // 2)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out // 2, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


class ToyBottleneckNet(nn.Module):
    """Stem, two stages of bottlenecks (the second downsamples), pooled linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.stage1 = nn.Sequential(Bottleneck(8, 8, 1), Bottleneck(8, 8, 1))
        self.stage2 = nn.Sequential(Bottleneck(8, 16, 2), Bottleneck(16, 16, 1))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage2(self.stage1(torch.relu(self.stem(x))))
        return self.head(y.mean((2, 3)))


def toy_bottleneck_net(seed: int = 0) -> ToyBottleneckNet:
    """A seeded ToyBottleneckNet in eval mode with non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = ToyBottleneckNet()
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(16, 3, 16, 16))
    return net.eval()
