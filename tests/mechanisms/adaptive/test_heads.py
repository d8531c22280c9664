"""Exit-head fitting: the same features give the same head."""

from __future__ import annotations

import torch
from torch import nn

from dyve.mechanisms.adaptive.heads import train_head


def _fit(threads: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        head = nn.Linear(x.shape[1], 10)
        train_head(head, x, y)
        assert torch.get_num_threads() == threads  # the fit restores the caller's setting
    finally:
        torch.set_num_threads(old)
    return torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1)


def test_a_head_does_not_depend_on_the_thread_count() -> None:
    # correlated non-negative features, like pooled ReLU maps: L-BFGS runs its full 300
    # iterations, and on two threads without the fix the weights differed by about 1e-4
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(1000, 32, generator=g) @ torch.randn(32, 128, generator=g))
    w = torch.randn(128, 10, generator=g)
    y = (x @ w / 128**0.5 + 3 * torch.randn(1000, 10, generator=g)).argmax(1)
    one, two = _fit(1, x, y), _fit(2, x, y)
    assert torch.equal(one, two)
    assert torch.equal(_fit(2, x, y), two)
