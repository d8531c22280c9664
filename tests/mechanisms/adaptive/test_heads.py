"""Exit heads: their cost, their cache, and fitting (the same features give the same head)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dyve.errors import DyveError
from dyve.mechanisms.adaptive.early_exit import ExitHead, head_convs
from dyve.mechanisms.adaptive.heads import train_conv_head, train_head


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


@pytest.mark.parametrize(
    ("shape", "convs"), [((16, 32, 32), 2), ((32, 16, 16), 1), ((64, 8, 8), 0), ((64, 8, 8), 1)]
)
def test_a_heads_macs_are_what_the_flop_counter_counts(shape: tuple[int, ...], convs: int) -> None:
    head = ExitHead(shape, 10, 4, convs).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        head(torch.randn(1, *shape))
    assert counter.get_total_flops() == 2 * head.macs


def test_conv_heads_halve_the_map_to_at_most_8x8_unless_told() -> None:
    shapes = [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 5, 5), (64,)]
    assert [head_convs(s, -1) for s in shapes] == [2, 1, 1, 1, 0]
    assert head_convs((16, 32, 32), 0) == 0
    assert head_convs((16, 32, 32), 3) == 3
    with pytest.raises(DyveError, match="feature maps"):
        ExitHead((64,), 10, 4, 1)


@pytest.mark.parametrize("convs", [0, 1])
def test_a_head_from_its_cache_is_the_head(convs: int) -> None:
    head = ExitHead((16, 16, 16), 10, 4, convs).eval()
    x = torch.randn(5, 16, 16, 16)
    with torch.no_grad():
        kept = head.cached(x)
        assert kept.shape == ((5, 16 * 4 * 4) if convs == 0 else x.shape)
        assert torch.allclose(head.from_cache(kept), head(x), atol=1e-6)


def test_a_conv_head_learns_and_does_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (256,), generator=g)
    maps = 0.5 * torch.randn(256, 4, 8, 8, generator=g)
    maps[torch.arange(256), y] += 1.0  # the class's channel lights up

    def fit(threads: int) -> tuple[float, torch.Tensor]:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            head = ExitHead((4, 8, 8), 4, 2, 1)
            rng = torch.get_rng_state()
            top1 = train_conv_head(head, maps, y, epochs=5, batch_size=32)
            assert torch.equal(torch.get_rng_state(), rng), "the caller's RNG is left alone"
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(old)
        assert not head.training
        state = [t.flatten().float() for t in head.state_dict().values()]
        return top1, torch.cat(state)

    (one, w1), (two, w2) = fit(1), fit(2)
    assert one > 90.0
    assert one == two
    assert torch.equal(w1, w2)
