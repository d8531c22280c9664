"""LC-Net's gated blocks in the native program: the per-block path's outputs, decisions and
executed cost, with every sample's own channels; rebuilt on changes; fallbacks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dyve.dynamic import equip
from dyve.mechanisms import ConvNetAIG, LCNet
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.lcnet.program import GatedProgram
from dyve.models import create
from dyve.testing.contract import graded_inputs
from dyve.testing.toy import toy_bottleneck_net

pytestmark = pytest.mark.skipif(not native.available(), reason="the native kernels are unavailable")

COL = {name: k for k, name in enumerate(native.STATS)}


def _net(backbone: nn.Module, example: torch.Tensor | None = None, **cfg: Any) -> Any:
    """``backbone`` with LC-Net predictors that skip blocks and channels (fast back-end)."""
    torch.manual_seed(0)
    kw = {"example_inputs": example} if example is not None else {}
    cfg = {"init_bias": 0.3, "init_std": 0.5, "eps": 0.0, **cfg}
    return equip(backbone.eval(), LCNet(**cfg), backend="fast", **kw).eval()


def _r20() -> nn.Module:
    torch.manual_seed(0)
    return create("resnet20_cifar")


def _inputs(size: int = 32) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.cat([graded_inputs(size), torch.randn(8, 3, size, size)])


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(b.abs().max())))


def _check_against_per_block(
    net: Any, x: torch.Tensor, kept: list[tuple[str, int]] | None = None
) -> tuple[int, int]:
    """Each sample against the per-block path at batch 1 (its own channels, its trace);
    returns how many (blocks skipped, blocks that dropped channels) the inputs exercised,
    and appends (block, channels dropped) of every block that ran to ``kept``."""
    prog = GatedProgram(net, x[:1], net.mechanisms[0])
    y, stats, changed = prog.run(x)
    gated = {name: k for k, name in enumerate(prog.site_names) if name in net.units}
    assert len(gated) == len(net.units)
    skipped = dropped = 0
    with torch.no_grad():
        for i in range(len(x)):
            ref = net.run(x[i : i + 1])
            assert _close(y[i : i + 1], ref.logits)
            for name, row in gated.items():
                st = stats[row, i]
                ran = int(ref.trace.units[name][0]) == 0
                assert bool(st[COL["stopped"]]) == (not ran), name
                # executed cost: the block's convs as they ran, plus the predictors
                charged = float(ref.trace.detail[name]["macs"][0])
                assert float(st[COL["macs"]] + st[COL["overhead"]]) == charged, name
                assert bool(changed[row, i]) == (not ran or st[COL["channels_approximated"]] > 0)
                skipped += not ran
                if kept is not None and ran:
                    kept.append((name, int(st[COL["channels_approximated"]])))
                dropped += int(st[COL["channels_approximated"]] > 0)
    return skipped, dropped


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_program_is_the_per_block_path_on_resnet20(eps: float) -> None:
    net = _net(_r20(), eps=eps)
    kept: list[tuple[str, int]] = []
    skipped, dropped = _check_against_per_block(net, _inputs(), kept)
    assert skipped > 0, "the inputs should skip some blocks"
    assert dropped > 0, "the inputs should drop some channels"
    if eps == 0:  # a block keeping every channel runs conv1 on the site's own weights
        assert {b.split(".")[0] for b, n in kept if n == 0} >= {"layer1", "layer2"}
    if eps > 0:
        # on 8 x 8 maps conv1's kept filters run filter-vectorised when they fill more of
        # their vectors of 16 than the plane pass fills its tiles (fast_dense.cpp,
        # dense()); the larger maps take the plane pass. That pass reads a compact copy of
        # the kept filters' weights, or the site's own table where the kept filters need
        # all four vectors (49-64 filters): both must be exercised
        small = {64 - n for b, n in kept if b.startswith("layer3")}  # 64 filters there
        vectorised = {n for n in small if n * 96 > -(-n // 16) * 16 * 64}
        assert {n for n in vectorised if n <= 48}, f"no compact copy: {sorted(small)}"
        assert {n for n in vectorised if 48 < n < 64}, f"no own-table subset: {sorted(small)}"


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_program_on_2x2_maps(eps: float) -> None:
    """ResNet-20 on 8 x 8 images: its last stage runs on 2 x 2 maps, where the
    filter-vectorised tiles are sized for maps of fewer positions than a tile; kept
    subsets of filters there run on the compact copy or the site's own table."""
    x = _inputs(8)
    net = _net(_r20(), x[:1], eps=eps)
    kept: list[tuple[str, int]] = []
    skipped, dropped = _check_against_per_block(net, x, kept)
    assert skipped > 0
    assert dropped > 0
    assert any(b.startswith("layer3") for b, _ in kept), "a 2 x 2 block must run"
    if eps > 0:
        assert any(b.startswith("layer3") and n > 0 for b, n in kept), "and drop channels"


@pytest.mark.parametrize("which", [{"channel": False}, {"layer": False}])
def test_l_net_only_and_c_net_only(which: dict[str, bool]) -> None:
    net = _net(_r20(), **which)
    skipped, dropped = _check_against_per_block(net, _inputs())
    assert (skipped > 0) == which.get("layer", True)
    assert (dropped > 0) == which.get("channel", True)


@pytest.mark.parametrize("threshold", [0.9, 0.95])
def test_convnet_aig_gates_in_the_program(threshold: float) -> None:
    """The baseline runs in the same runtime: its gate decides whole blocks."""
    torch.manual_seed(0)
    net = equip(_r20().eval(), ConvNetAIG(threshold=threshold), backend="fast").eval()
    skipped, dropped = _check_against_per_block(net, _inputs())
    assert 0 < skipped < len(_inputs()) * len(net.units), "some blocks run, some are skipped"
    assert dropped == 0


def test_conv_shortcuts_and_a_shared_relu() -> None:
    """The toy's blocks: 1x1 -> 3x3 branch, conv+BN downsample, one ReLU module twice."""
    x = _inputs(16)
    net = _net(toy_bottleneck_net(), torch.zeros(1, 3, 16, 16))
    shortcuts = [u.module.downsample for u in net.units.values()]
    assert any(s is not None for s in shortcuts)
    assert any(s is None for s in shortcuts)
    skipped, dropped = _check_against_per_block(net, x)
    assert skipped + dropped > 0


def test_the_shipped_run_on_real_images() -> None:
    """The shipped LC-Net ResNet-56 on the embedded CIFAR-10 test sample."""
    from dyve.data.loader import Normalization
    from dyve.data.sample import load_sample
    from dyve.demo import runs_dir
    from dyve.report.subjects import load_run

    net = load_run(runs_dir() / "lcnet_resnet56").model.eval()
    net.backend = "fast"
    s = load_sample()
    norm = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    x = norm.apply(torch.from_numpy(s.images[:24]))
    skipped, dropped = _check_against_per_block(net, x)
    assert skipped > 0
    assert dropped > 0


def test_threads_split_the_batch_and_net_uses_the_program() -> None:
    net = _net(_r20())
    x = _inputs()
    prog = net.mechanisms[0].fast_runner(net, x)
    assert isinstance(prog, GatedProgram)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y2 = prog(x)
        torch.set_num_threads(1)
        y1 = torch.cat([prog(x[i : i + 1]) for i in range(len(x))])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2)
    with torch.no_grad():
        assert torch.equal(net(x), y2)


def test_program_is_rebuilt_on_knob_and_weight_changes_and_off_is_the_backbone() -> None:
    net = _net(_r20())
    mech = net.mechanisms[0]
    x = _inputs()
    first = mech.fast_runner(net, x)
    assert mech.fast_runner(net, x) is first
    net.set_knobs(eps=0.3)
    second = mech.fast_runner(net, x)
    assert second is not first
    assert _close(second(x), net.run(x).logits)
    gate = next(iter(net.units.values())).gates["lcnet"]
    with torch.no_grad():
        gate.l.bias.add_(0.5)  # in place: the program must notice
    third = mech.fast_runner(net, x)
    assert third is not second
    assert _close(third(x), net.run(x).logits)
    net.set_knobs(eps=None)
    assert mech.fast_runner(net, x) is None
    with torch.no_grad():
        assert torch.equal(net(x), net.detach().eval()(x))


class _PreActivation(nn.Module):
    """``conv2(relu(bn2(conv1(relu(bn1(x)))))) + x``: not the form the program lowers."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c), nn.ReLU()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(c), nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x)))))) + x


def test_a_block_of_another_form_is_refused_not_lowered_wrongly() -> None:
    """Discovery sees conv -> bn -> relu -> conv here too; the structure check refuses it."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1), _PreActivation(8), _PreActivation(8), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    net = _net(backbone, torch.zeros(1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        y = net(x)
    assert (net.mechanisms[0].program_unsupported or "").startswith("the lowered blocks")
    assert torch.equal(y, net.run(x).logits)


def test_a_block_that_keeps_no_channel_is_its_shortcut_plus_the_last_bias() -> None:
    """C-Net drops every channel of a running block: conv2 of nothing is its bias."""
    net = _net(_r20())
    for name in ("layer1.1", "layer2.0", "layer3.2"):  # identity and option-A shortcuts
        gate = net.units[name].gates["lcnet"]
        with torch.no_grad():
            gate.l.weight.zero_()
            gate.l.bias.fill_(0.7)  # runs, scaled
            gate.c.weight.zero_()
            gate.c.bias.fill_(-1.0)  # s_C = 0 everywhere
    _, dropped = _check_against_per_block(net, _inputs())
    assert dropped >= 3 * len(_inputs())


def test_a_block_the_gates_always_skip_may_be_degenerate() -> None:
    """Trained gates that never run a block leave its batch norm's statistics degenerate:
    the dense backbone overflows there, the gated network does not. Still lowered."""
    net = _net(_r20())
    gate = net.units["layer1.1"].gates["lcnet"]
    with torch.no_grad():
        gate.l.weight.zero_()
        gate.l.bias.fill_(-1.0)  # s_L = 0: always skipped
        net.units["layer1.1"].module.conv2.module.weight.fill_(float("inf"))  # under its tap
    x = _inputs()
    with torch.no_grad():
        assert not bool(torch.isfinite(net.detach()(x)).all())
        y = net(x)
    assert net.mechanisms[0].program_unsupported is None
    assert _close(y, net.run(x).logits)


def test_global_predictor_keeps_the_per_block_path_and_says_why() -> None:
    net = _net(_r20(), predictor="global")
    x = _inputs()
    with torch.no_grad():
        y = net(x)
    assert "global" in (net.mechanisms[0].program_unsupported or "")
    assert torch.equal(y, net.run(x).logits)
