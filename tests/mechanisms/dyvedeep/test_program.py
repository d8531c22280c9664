"""The whole-network program (one native call per batch) against the per-site fast path.

On every zoo model at its calibrated point and on a random network that uses every op the
program knows: the same outputs (relative error <= 1e-5), the same decisions per site and the
same executed MACs; ``net(x)`` on the fast back-end runs the program and rebuilds it when
knobs or weights change; a network it cannot lower keeps the per-site path and says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dyve.data import batches, load_sample
from dyve.dynamic import equip, load
from dyve.dynamic.trace import APPROXIMATED
from dyve.mechanisms.dyvedeep import DyVEDeep, native
from dyve.mechanisms.dyvedeep.lower import ADD, ADD_RELU, RELU
from dyve.mechanisms.dyvedeep.program import Program, Unsupported
from dyve.models import create, list_models, model_info
from dyve.models.resnet_cifar import ShortcutA

RESULTS = Path(__file__).resolve().parents[3] / "docs" / "results" / "dyvedeep"
ZOO = ("caffe_cifar10", "vgg16_bn_cifar_w025", "resnet20_cifar", "resnet56_cifar")
RTOL = 1e-5

pytestmark = pytest.mark.skipif(
    not native.available(), reason="DyVEDeep's C++ kernels could not be built here (no g++?)"
)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA((cout - cin) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class _AllOps(nn.Module):
    """Every op the program lowers: plain and knobbed sites, pools, add (with the ReLU after
    it fused, and alone), ReLU, shortcut, flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn0 = nn.BatchNorm2d(8)
        self.relu0 = nn.ReLU()
        self.pool0 = nn.MaxPool2d(3, 2, 1)
        self.conv1 = nn.Conv2d(8, 8, 5, 1, 2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
        self.block = _Block(8, 16)
        self.pool2 = nn.MaxPool2d(2, ceil_mode=True)
        self.fc1 = nn.Linear(16 * 2 * 2, 24)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.relu0(self.bn0(self.conv0(x))))
        x = self.block(self.pool1(self.relu1(self.conv1(x))))
        x = self.pool2(x)
        x = torch.flatten(x + torch.relu(x), 1)  # an add whose user is not a ReLU
        return self.fc2(self.drop(self.relu2(self.fc1(x))))


def _random_net(**knobs: object):
    torch.manual_seed(0)
    model = _AllOps()
    for m in model.modules():  # BN statistics away from the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    net = equip(
        model, DyVEDeep(first_layer=True, **knobs), example_inputs=torch.zeros(1, 3, 27, 27)
    )
    return net.eval()


def _zoo_net(name: str):
    backbone = create(name, pretrained=True)
    net = load(RESULTS / name, backbone=backbone, weights=False)
    net.backend = "fast"
    return net.eval(), model_info(backbone)


def _assert_matches_per_site(net, x: torch.Tensor) -> Program:
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    with torch.no_grad():
        y, stats, changed = prog.run(x)
        ref = net.run(x)  # the per-site fast path, with its trace
    assert ref.trace.cost.cost_mode == "executed"
    assert (y - ref.logits).abs().max() <= RTOL * ref.logits.abs().max()
    assert torch.equal(y.argmax(1), ref.logits.argmax(1))
    # what ran: each site's decisions and the network's executed MACs
    for k, name in enumerate(prog.site_names):
        if name in ref.trace.units:
            assert torch.equal(changed[k], ref.trace.units[name] == APPROXIMATED), name
    # A neuron whose partial sum is within float rounding of its SPET threshold may stop on
    # one path and not the other (batch norms folded, sums in other orders): on R56's point
    # one neuron in each of two images of 24 (576 MACs in 110 M). Allowed: 1e-4 of the MACs.
    assert torch.allclose(stats[:, :, 0].sum(0), ref.macs, rtol=1e-4, atol=0.5)
    return prog


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_program_equals_per_site(name):
    net, info = _zoo_net(name)
    x, _ = next(batches(load_sample(), 24, info.norm))
    prog = _assert_matches_per_site(net, x)
    assert len(prog.site_names) == len(net.graph.sites)  # every layer runs in the program
    stats = prog.run(x)[1].sum(0)  # [N, STATS] over the sites
    col = {k: i for i, k in enumerate(native.STATS)}
    # what it skips is really not run; the check terms it recomputes (recomputed, wasted)
    # can outweigh it (VGG's fewest-ops point runs 1.02x the dense MACs in all)
    ran = stats[:, col["macs"]] - stats[:, col["recomputed"]] - stats[:, col["wasted"]]
    assert (ran < net.static_macs).all(), "it must skip work"


def test_random_network_with_every_op():
    net = _random_net(spet=0.0, sfma=0.02, sdss=0.05)
    x = torch.relu(torch.randn(6, 3, 27, 27, generator=torch.Generator().manual_seed(1)))
    prog = _assert_matches_per_site(net, x)
    kinds = [o["kind"] for o in prog._ops]
    assert kinds.count(ADD_RELU) == 1  # the residual join, add and ReLU in one op
    assert kinds.count(ADD) == kinds.count(RELU) == 1  # the add before flatten, its ReLU
    changed = prog.run(x)[2]
    assert changed.any(), "the knobs must act somewhere"
    # knobs off: the program computes the backbone (folded BN, another summation order)
    net.set_knobs(spet=None, sfma=None, sdss=None)
    with torch.no_grad():
        y, ref = Program(net.backbone, x, net.mechanisms[0].site_options)(x), net.detach().eval()(x)
    assert (y - ref).abs().max() <= RTOL * ref.abs().max()


def test_tiny_maps_and_odd_widths_match_pytorch_and_the_per_site_path():
    """Sites on 2 x 2 maps (whole vectors of filters: the filter-vectorised tiles sized for
    maps of fewer positions than a tile) and on a 1 x 1 map with a filter count that is
    not (the plane pass): knobs off, the program computes the backbone; with SFMA dropping
    input channels, it equals the per-site path."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),  # 4x4 -> 2x2
        nn.Conv2d(32, 48, 3, 1, 1), nn.BatchNorm2d(48), nn.ReLU(),  # 2x2
        nn.Conv2d(48, 40, 3, 2, 1), nn.ReLU(),  # 2x2 -> 1x1
        nn.Flatten(), nn.Linear(40, 10),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.relu(torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1)))
    net = equip(model, DyVEDeep(first_layer=True, sfma=0.05), example_inputs=x[:1]).eval()
    prog = _assert_matches_per_site(net, x)
    assert prog.run(x)[2].any(), "the knobs must act somewhere"
    net.set_knobs(spet=None, sfma=None, sdss=None)
    with torch.no_grad():
        y, ref = Program(net.backbone, x, net.mechanisms[0].site_options)(x), model(x)
    assert (y - ref).abs().max() <= RTOL * ref.abs().max()


def test_average_pooling_over_the_whole_map_lowers_as_the_mean():
    """A window over the whole map (an exit head's pooling) runs as the vectorised mean; a
    smaller one stays a window."""
    for window, kind in ((7, "mean"), (3, "avgpool")):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(window), nn.Flatten()).eval()
        x = torch.randn(3, 3, 9, 9, generator=torch.Generator().manual_seed(0))
        prog = Program(model, x)
        assert [o["kind"] for o in prog.ops][1] == kind
        with torch.no_grad():
            assert torch.allclose(prog(x), model(x), rtol=1e-5, atol=1e-6)


POOLS = (  # kernel, stride, padding, ceil_mode: the zoo's and odd ones
    (3, 2, 1, False),
    (3, 2, 0, True),  # the Caffe net's
    (2, 2, 0, False),  # the VGG's
    (2, 2, 0, True),
    (3, 1, 1, False),
    (5, 3, 2, True),
    ((3, 2), (2, 1), (1, 0), True),
)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("size", [(9, 9), (8, 7)])
def test_pooling_equals_pytorch_nan_included(pool, size):
    """Max pooling (separable in the kernels) and average pooling give PyTorch's values, and
    a NaN in a window makes its maximum NaN, as in PyTorch."""
    k, st, pad, ceil = pool
    for layer in (
        nn.MaxPool2d(k, st, pad, ceil_mode=ceil),
        nn.AvgPool2d(k, st, pad, ceil_mode=ceil),
        nn.AvgPool2d(k, st, pad, ceil_mode=ceil, count_include_pad=False),
    ):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer, nn.Flatten()).eval()
        x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(0))
        x[1, :, 2, 3] = float("nan")  # one pixel: NaN over a conv's neighbourhood
        prog = Program(model, x)
        assert [o["kind"] for o in prog.ops][1] == type(layer).__name__.lower()[:7]
        with torch.no_grad():
            y, ref = prog(x), model(x)
        assert ref.isnan().any(), "the NaN reaches the output"
        assert torch.equal(y.isnan(), ref.isnan()), layer
        ok = ~ref.isnan()
        assert torch.allclose(y[ok], ref[ok], rtol=1e-5, atol=1e-6), layer


def test_adaptive_average_pooling_lowers_where_its_windows_tile_the_map():
    """A D2NN controller's ``AdaptiveAvgPool2d(4)`` on an 8x8 map is 2x2 average pooling; on
    a 6x6 map to 4x4 the windows overlap and the network is refused."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(4), nn.Flatten())
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    prog = Program(model.eval(), x)
    assert [o["kind"] for o in prog.ops][1] == "avgpool"
    with torch.no_grad():
        assert torch.allclose(prog(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Unsupported, match="AdaptiveAvgPool2d"):
        Program(model, x[:, :, :6, :6])


def test_batch_split_over_threads_equals_batch_1():
    net, info = _zoo_net("resnet20_cifar")
    x, _ = next(batches(load_sample(), 8, info.norm))
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y, stats, _ = prog.run(x)
    finally:
        torch.set_num_threads(old)
    for i in range(len(x)):
        yi, si, _ = prog.run(x[i : i + 1])
        assert torch.equal(yi[0], y[i])
        assert torch.equal(si[:, 0], stats[:, i])


def test_calls_on_shrinking_batches_reuse_the_statistics_buffers():
    """``prog(x)`` keeps its statistics buffers for the largest batch so far: the samples
    left after an early exit (fewer each call) pay no allocation, and get the same logits."""
    net, info = _zoo_net("resnet20_cifar")
    x, _ = next(batches(load_sample(), 8, info.norm))
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    with torch.no_grad():
        assert torch.equal(prog(x), prog.run(x)[0])
        kept = prog._scratch
        for n in (5, 1, 3, 8):
            assert torch.equal(prog(x[:n]), prog.run(x[:n])[0])
            assert prog._scratch is kept, f"batch {n} reallocated the statistics"


def test_sample_groups_give_the_same_results():
    """A thread runs its samples in groups, op by op; each sample keeps its own buffers,
    so any group size gives the same outputs, statistics and decisions, bit for bit."""
    net, info = _zoo_net("resnet20_cifar")
    x, _ = next(batches(load_sample(), 11, info.norm))
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    runs = []
    for group in (1, 3, 8, 0):
        prog.group = group
        runs.append(prog.run(x))
    for y, stats, changed in runs[1:]:
        assert torch.equal(y, runs[0][0])
        assert torch.equal(stats, runs[0][1])
        assert torch.equal(changed, runs[0][2])
    assert runs[0][2].any(), "the knobs must act, so that samples differ in what they run"


def test_forward_runs_the_program_and_follows_knobs_and_weights():
    net = _random_net(spet=0.0, sfma=0.02)
    mech = net.mechanisms[0]
    x = torch.relu(torch.randn(4, 3, 27, 27, generator=torch.Generator().manual_seed(2)))

    def check() -> None:
        with torch.no_grad():
            y, ref = net(x), net.run(x).logits
        assert mech._program is not None
        assert mech._program.valid(x)
        assert (y - ref).abs().max() <= RTOL * ref.abs().max()

    check()
    first = mech._program
    with torch.no_grad():
        net(x)
    assert mech._program is first, "an unchanged network reuses its program"
    net.set_knobs(spet=0.0)  # set again to the same value (new knob objects, equal)
    with torch.no_grad():
        net(x)
    assert mech._program is first, "equal knobs keep the program"
    net.set_knobs(spet=None)
    check()
    assert mech._program is not first
    second = mech._program
    with torch.no_grad():
        net.backbone.conv1.module.weight.mul_(0.5)  # a site unit's layer, changed in place
    check()
    assert mech._program is not second
    third = mech._program
    conv = net.backbone.conv1.module
    conv.weight = nn.Parameter(conv.weight.detach() * 2)  # replaced, not changed in place
    check()
    assert mech._program is not third
    fourth = mech._program
    bn = next(m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var.mul_(2.0)  # a buffer folded into the weights, changed in place
    check()
    assert mech._program is not fourth
    fifth = mech._program
    with torch.no_grad():
        y1 = net(x[:1])  # another batch size: the same program, its buffers resized
    assert mech._program is fifth
    assert torch.equal(y1, mech._program.run(x[:1])[0])
    net.double()  # dtype moves in place: same tensors, same versions
    assert mech.fast_runner(net, x) is None, "float64 weights leave the program"
    with torch.no_grad():
        assert torch.allclose(net(x.double()), net.run(x.double()).logits)
    net.float()
    net.backend = "emulated"
    mech._program = None
    with torch.no_grad():
        net(x)
    assert mech._program is None, "the emulated back-end never runs the program"


def test_the_dense_reference_is_called_as_net_calls_its_program():
    """``dense_runner`` (what a bench times as "dense native") pays the same check as
    ``net(x)``, so the ratio of the two is the knobs' alone."""
    net = _random_net(spet=0.0, sfma=0.02)
    net.backend = "fast"
    x = torch.relu(torch.randn(2, 3, 27, 27, generator=torch.Generator().manual_seed(4)))
    dense = net.detach().eval()
    run = net.dense_runner(dense, x)
    assert run is not None
    with torch.no_grad():
        ref = dense(x)
        assert (run(x) - ref).abs().max() <= RTOL * ref.abs().max()
        next(dense.parameters()).mul_(2.0)  # the check sees it: no stale answer
    with pytest.raises(RuntimeError, match="changed"):
        run(x)


def test_a_network_moved_to_float64_leaves_the_program():
    """Without buffers, ``.double()`` keeps every tensor and its version: only the weights'
    dtype says the program no longer holds them."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    net = equip(model, DyVEDeep(first_layer=True, spet=0.0),
                example_inputs=torch.zeros(1, 3, 8, 8)).eval()  # fmt: skip
    net.backend = "fast"
    mech, x = net.mechanisms[0], torch.relu(torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        net(x)
    assert mech._program is not None
    net.double()
    assert mech.fast_runner(net, x) is None
    with pytest.raises(RuntimeError), torch.no_grad():  # PyTorch's answer to float32 inputs
        net(x)


def test_a_network_it_cannot_lower_keeps_the_per_site_path():
    class Doubling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.relu(self.conv(x)) * 2, 1))

    net = equip(Doubling().eval(), DyVEDeep(first_layer=True, spet=0.0),
                example_inputs=torch.zeros(1, 3, 8, 8)).eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(Unsupported, match="mul"):
        Program(net.backbone, x, net.mechanisms[0].site_options)
    with torch.no_grad():
        y = net(x)
    assert "mul" in (net.mechanisms[0].program_unsupported or "")
    assert torch.allclose(y, net.run(x).logits)


def test_profile_times_every_op_without_changing_the_result():
    net = _random_net(spet=0.0, sfma=0.02, sdss=0.05)
    x = torch.relu(torch.randn(3, 3, 27, 27, generator=torch.Generator().manual_seed(3)))
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    seconds = torch.zeros(len(prog.ops), dtype=torch.float64)
    y, stats, _ = prog.run(x, seconds)
    y0, stats0, _ = prog.run(x)
    assert torch.equal(y, y0)
    assert torch.equal(stats, stats0)
    assert (seconds > 0).all()
    kinds = [op["kind"] for op in prog.ops]
    assert {"site", "add", "relu", "add+relu", "maxpool", "avgpool", "shortcut"} <= set(kinds)
    assert "spet+sdss+sfma" in {op.get("knobs") for op in prog.ops}
    with pytest.raises(ValueError, match="float64"):
        prog.run(x, torch.zeros(len(prog.ops)))


@pytest.mark.parametrize(
    "name", [n for n in list_models() if not n.startswith("d2nn")]
)  # D2NN's graphs route per sample: torch.fx cannot trace them (they keep the per-site path)
def test_every_zoo_architecture_lowers(name):
    torch.manual_seed(0)
    backbone = create(name, pretrained=False).eval()
    x = torch.randn(2, *model_info(backbone).input_size)
    net = equip(backbone, DyVEDeep(sfma=0.01)).eval()
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    with torch.no_grad():
        y, ref = prog(x), net.run(x).logits
    assert y.shape == ref.shape
    assert (y - ref).abs().max() <= RTOL * ref.abs().max()


def test_a_graph_torch_fx_cannot_trace_is_unsupported():
    net = equip(create("d2nn_cascade_cifar").eval(), DyVEDeep(sfma=0.01)).eval()
    with pytest.raises(Unsupported, match=r"torch\.fx"):
        Program(net.backbone, torch.zeros(1, 3, 32, 32), net.mechanisms[0].site_options)


def test_threads_split_the_batch_on_pytorchs_openmp_pool():
    """Two threads give the one-thread results, sample for sample; where the kernels were
    built with OpenMP, they run on the OpenMP runtime PyTorch loaded (one libgomp in the
    process: a second pool would compete with PyTorch's spinning workers)."""
    net = _random_net(spet=0.0, sfma=0.02, sdss=0.05)
    x = torch.relu(torch.randn(7, 3, 27, 27, generator=torch.Generator().manual_seed(4)))
    prog = Program(net.backbone, x, net.mechanisms[0].site_options)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y2, stats2, changed2 = prog.run(x)
        torch.set_num_threads(1)
        y1, stats1, changed1 = prog.run(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2)
    assert torch.equal(stats1, stats2)
    assert torch.equal(changed1, changed2)
    dll = native.kernels()
    assert dll is not None
    if dll.dyve_openmp() == 0:
        pytest.skip("the compiler here builds without OpenMP: the kernels start their threads")
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps: cannot list the loaded libraries here")
    libs = {line.split()[-1] for line in maps.read_text().splitlines() if "gomp" in line}
    assert len(libs) <= 1, libs  # one OpenMP runtime: PyTorch's
