"""DyVEDeep's fast back-end (C++ kernels) against the emulated one.

Per site, on random layers: same outputs (relative error <= 1e-5), the same decisions
(neurons stopped, positions interpolated, channels approximated), and an executed cost
that is the simulated cost plus exactly the extra work the kernels report. Per network, on
every zoo model at its calibrated operating point (committed in docs/results/dyvedeep) and
the embedded CIFAR-10 sample; the same for the kernels built for narrower vectors (AVX2,
SSE) than this machine's. And the fallback: without kernels dyve says so once and runs the
emulation.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dyve.data import batches, load_sample
from dyve.dynamic import load
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import Geometry, SiteKnobs, make_plan, run_site
from dyve.models import create, model_info

RESULTS = Path(__file__).resolve().parents[3] / "docs" / "results" / "dyvedeep"
ZOO = ("caffe_cifar10", "vgg16_bn_cifar_w025", "resnet20_cifar", "resnet56_cifar")
RTOL = 1e-5

#: every test but the no-kernels one needs the kernels (that one is for where they are missing)
needs_kernels = pytest.mark.skipif(
    not native.available(), reason="DyVEDeep's C++ kernels could not be built here (no g++?)"
)

# (cin, cout, size, kernel, stride, padding)
GEOMETRIES = [
    (16, 16, 8, 3, 1, 1),
    (16, 32, 9, 3, 2, 1),
    (20, 24, 7, 1, 1, 0),
    (8, 12, 10, 5, 1, 2),
    (12, 10, 7, 3, 2, 0),
    (16, 16, 20, 3, 1, 1),  # a long check pass: SFMA's drops are compacted away
    # small maps, whose filter-vectorised tiles skip the taps that read padding: rows of
    # 8 and of 4 positions (stride 1 and 2), a whole 2 x 2 map; 1 to 4 vectors of filters
    (16, 64, 8, 3, 1, 1),
    (16, 128, 4, 3, 1, 1),
    (16, 48, 2, 3, 1, 1),
    (16, 40, 16, 3, 2, 1),
    (8, 64, 8, 3, 2, 1),
]
KNOBS = [
    SiteKnobs(),
    SiteKnobs(spet=0.0),
    SiteKnobs(spet=1e9),  # stops every neuron
    SiteKnobs(sfma=0.05),
    SiteKnobs(sfma=1e9),  # approximates every channel
    SiteKnobs(sdss=0.3),
    SiteKnobs(spet=0.05, sfma=0.05),  # small maps: dropped channels kept as zeros
    SiteKnobs(spet=0.05, sdss=0.3, sfma=0.05),
]


def _layer(cin, cout, size, k, stride, pad, gen):
    x = torch.relu(torch.randn(3, cin, size, size, generator=gen))
    x[:, : cin // 3] = 0.3 + 0.01 * x[:, : cin // 3]  # near-uniform channels for SFMA
    w = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
    b = 0.1 * torch.randn(cout, generator=gen)
    geom = Geometry(False, (stride, stride), (pad, pad), (1, 1))
    return x, make_plan(w, b, 0.25), geom


def _assert_same(x, plan, geom, knobs, *, relu=True, statistic="variance"):
    emu = run_site(x, plan, geom, knobs, relu=relu, statistic=statistic)
    fast = native.FastSite(plan, geom).run(x, knobs, relu=relu, statistic=statistic)
    scale = emu.out.abs().max().clamp(min=1e-12)
    assert (fast.out - emu.out).abs().max() <= RTOL * scale, "outputs differ"
    for part in ("stopped", "interpolated", "channels_approximated"):
        assert torch.equal(fast.parts[part], emu.parts[part]), f"{part} differs"
    assert torch.equal(fast.changed, emu.changed)
    extra = fast.parts["recomputed"] + fast.parts["wasted"]
    assert torch.equal(fast.macs, emu.macs + extra), "executed != simulated + reported extra"
    assert torch.equal(fast.parts["overhead"], emu.parts["overhead"])
    assert torch.equal(fast.scalar_ops, 2 * fast.macs + fast.parts["overhead"])
    return emu, fast


@needs_kernels
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: str(k)[9:-1].replace(" ", ""))
def test_site_matches_emulation(geometry, knobs):
    x, plan, geom = _layer(*geometry, torch.Generator().manual_seed(1))
    _assert_same(x, plan, geom, knobs)


@needs_kernels
@pytest.mark.parametrize("statistic", ["variance", "range"])
def test_sfma_statistics_and_sites_without_relu(statistic):
    x, plan, geom = _layer(16, 16, 8, 3, 1, 1, torch.Generator().manual_seed(2))
    _assert_same(x, plan, geom, SiteKnobs(sdss=0.3, sfma=0.05), relu=False, statistic=statistic)


@needs_kernels
def test_linear_site_and_two_threads():
    gen = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(5, 64, generator=gen))
    plan = make_plan(torch.randn(40, 64, generator=gen) / 8, torch.zeros(40), 0.25)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        emu, fast = _assert_same(x, plan, Geometry(True), SiteKnobs(spet=0.0))
    finally:
        torch.set_num_threads(old)
    assert fast.out.shape == (5, 40)
    assert emu.parts["stopped"].sum() > 0


@needs_kernels
def test_real_skipping_costs_less_than_dense():
    x, plan, geom = _layer(32, 32, 8, 3, 1, 1, torch.Generator().manual_seed(4))
    dense = native.FastSite(plan, geom).run(x, SiteKnobs(), relu=True)
    stop_all = native.FastSite(plan, geom).run(x, SiteKnobs(spet=1e9), relu=True)
    assert torch.all(stop_all.macs < dense.macs / 3)  # only the check terms ran
    assert torch.all(stop_all.out == 0)


def _zoo_net(name: str):
    backbone = create(name, pretrained=True)
    net = load(RESULTS / name, backbone=backbone, weights=False)
    net.backend = "fast"
    return net, model_info(backbone)


@needs_kernels
@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_fast_equals_emulated(name):
    fast, info = _zoo_net(name)
    x, _ = next(batches(load_sample(), 24, info.norm))
    emu = _zoo_net(name)[0]
    emu.backend = "emulated"
    emu.mechanisms[0].set_knob("spet_exact", False)  # the fast back-end ignores it
    a, b = fast.run(x), emu.run(x)
    assert a.trace.cost.cost_mode == "executed"
    assert b.trace.cost.cost_mode == "simulated"
    scale = b.logits.abs().max()
    assert (a.logits - b.logits).abs().max() <= RTOL * scale
    assert torch.equal(a.logits.argmax(1), b.logits.argmax(1))
    for unit, status in b.trace.units.items():
        assert torch.equal(a.trace.units[unit], status), f"{unit}: decisions differ"
    extra = sum(
        a.trace.detail[u][p] for u in a.trace.detail for p in ("recomputed", "wasted")
        if p in a.trace.detail[u]
    )  # fmt: skip
    # Executed = what the emulation counts + the check terms the kernel recomputes. A
    # neuron whose partial sum is within float rounding of its SPET threshold may stop in
    # one back-end and not the other (the sums run in other orders): on VGG's point one
    # neuron of 4096 in one layer of one image (432 MACs in 20 M). Allowed: 1e-4 of the MACs.
    assert torch.allclose(a.macs, b.macs + extra, rtol=1e-4, atol=0.5)
    # the work the emulation counts as skipped is really not run; the recomputed check
    # terms can outweigh it (VGG's fewest-ops point runs 1.02x the dense MACs in all)
    assert ((a.macs - extra) < fast.static_macs).all(), "the calibrated point must skip work"


def test_without_kernels_dyve_says_so_once_and_emulates(tmp_path):
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from dyve.dynamic import equip\n"
        "from dyve.mechanisms.dyvedeep import DyVEDeep\n"
        "from dyve.models import create\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    net = equip(create('resnet20_cifar'), DyVEDeep(spet=0.0))\n"
        "    for _ in range(3): res = net.run(torch.randn(2, 3, 32, 32))\n"
        "msgs = [str(m.message) for m in w if 'fast C++ kernels' in str(m.message)]\n"
        "print(len(msgs), res.trace.cost.cost_mode, msgs[0] if msgs else '')\n"
    )
    env = {"DYVE_NO_NATIVE": "1", "DYVE_KERNELS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    count, mode, message = out.strip().split(" ", 2)
    assert count == "1"
    assert mode == "simulated"
    assert "DYVE_NO_NATIVE" in message
    assert "emulated" in message
    assert not list(tmp_path.iterdir()), "nothing should be built when disabled"


@needs_kernels
def test_kernels_are_cached_and_rebuilt_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("DYVE_KERNELS", str(tmp_path))
    native.kernels.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert native.kernels() is not None
        built = list(tmp_path.iterdir())
        assert len(built) == 1
        assert built[0].suffix == ".so"
        # a new process (a cleared cache) loads the built library instead of compiling
        stamp = built[0].stat().st_mtime_ns

        def no_build(*a: object) -> str:
            raise AssertionError("the cached kernels were compiled again")

        monkeypatch.setattr(native, "_build", no_build)
        native.kernels.cache_clear()
        assert native.kernels() is not None
        assert list(tmp_path.iterdir()) == built
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        native.kernels.cache_clear()


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@needs_kernels
@pytest.mark.parametrize(("march", "flag"), [("x86-64-v3", "avx2"), ("x86-64", "sse2")])
def test_other_vector_widths_match_emulation(march, flag, tmp_path):
    """The kernels built for a narrower target (AVX2: 8-float vectors, SSE: 4; this machine
    may build for AVX-512) pass the site and zoo tests above, and a whole-network program
    and an LC-Net program against their per-site paths, in a fresh process."""
    if flag not in _cpu_flags():
        pytest.skip(f"this CPU cannot run {march} code (no {flag}), or is not x86")
    env = {
        "DYVE_MARCH": march,
        "DYVE_KERNELS": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            str(Path(__file__).with_name("test_program.py")),
            str(Path(__file__).parents[1] / "lcnet" / "test_lcnet_program.py"),
            "-k",
            "site_matches_emulation or zoo_models_fast_equals_emulated or sfma_statistics"
            " or random_network_with_every_op or program_is_the_per_block_path",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary
    assert "skipped" not in summary, "the kernels did not build for the narrower target"
    assert len(list(tmp_path.glob("*.so"))) == 1, "the narrower build was not made"
