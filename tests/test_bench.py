"""``dyve.bench`` and ``dyve bench``: keys of bench.json, consistency of ratios and costs.

Timings are never asserted (see benchmarks/NOTES.md); only their structure and the ratios
derived from them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

import dyve.bench
from dyve import data, models
from dyve.bench import bench
from dyve.cli.main import main
from dyve.dynamic import DynamicNet, Unit, equip, load, save
from dyve.errors import DyveError
from dyve.mechanisms import BlockSkip, LCNet
from dyve.mechanisms.dyvedeep import native

TIMING = (
    "dense_eager",
    "dense_eager_tuned",
    "dense_compiled",
    "dense_native",
    "dynamic",
    "exported",
)
SETTING_KEYS = {
    "batch",
    "threads",
    "repeats",
    "images",
    "speedup_vs_eager",
    "speedup_vs_eager_tuned",
    "speedup_vs_eager_best",
    "dense_eager_best",
    "speedup_vs_compiled",
    "speedup_vs_dense_native",
    "static_macs",
    "mean_macs",
    "cost_reduction",
    "cost_mode",
} | {f"{t}{s}_ms" for t in TIMING for s in ("", "_median", "_p10", "_p90")}
TOP_KEYS = {
    "format",
    "dyve_version",
    "torch",
    "machine",
    "backbone",
    "backbone_kwargs",
    "mechanisms",
    "knobs",
    "backend",
    "compile",
    "compile_options",
    "dense_native_call",
    "frozen",
    "kernels",
    "eager",
    "compiled_memory_format",
    "exported",
    "static_macs",
    "b1",
    "b64",
}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """The first 8 sample images, normalised for the CIFAR ResNets."""
    sample = data.load_sample()
    return models.CIFAR_NORM.apply(torch.from_numpy(sample.images[:8]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved resnet20 + block_skip whose threshold skips some samples but not all."""
    torch.manual_seed(0)
    net = equip(models.create("resnet20_cifar"), BlockSkip(threshold=0.5))
    return save(net, tmp_path_factory.mktemp("bench") / "run")


@pytest.fixture
def net(run_dir: Path) -> DynamicNet:
    return load(run_dir)


def _check_setting(s: dict, net: DynamicNet, x: torch.Tensor, *, compiled: bool) -> None:
    assert set(s) == SETTING_KEYS
    for t in ("dense_eager", "dense_eager_tuned", "dynamic"):
        assert s[f"{t}_ms"] > 0
    assert s["speedup_vs_eager"] == pytest.approx(s["dense_eager_ms"] / s["dynamic_ms"], rel=1e-3)
    assert s["speedup_vs_eager_tuned"] == pytest.approx(
        s["dense_eager_tuned_ms"] / s["dynamic_ms"], rel=1e-3
    )
    # the eager figure to quote is against the faster eager variant, and names it
    faster = min(("dense_eager", "dense_eager_tuned"), key=lambda k: s[f"{k}_ms"])
    assert s["dense_eager_best"] == faster
    assert s["speedup_vs_eager_best"] == pytest.approx(
        s[f"{faster}_ms"] / s["dynamic_ms"], rel=1e-3
    )
    assert s["speedup_vs_eager_best"] <= s["speedup_vs_eager"] + 1e-3
    if compiled:
        assert s["dense_compiled_ms"] > 0
        assert s["speedup_vs_compiled"] == pytest.approx(
            s["dense_compiled_ms"] / s["dynamic_ms"], rel=1e-3
        )
    else:
        assert s["speedup_vs_compiled"] is None
        assert all(s[f"dense_compiled{p}_ms"] is None for p in ("", "_median", "_p10", "_p90"))
    net.backend = "fast"
    mean = float(net.run(x).macs.mean())
    assert s["mean_macs"] == pytest.approx(mean)
    assert s["static_macs"] == net.static_macs
    assert s["cost_reduction"] == pytest.approx(net.static_macs / mean, rel=1e-12)
    assert s["cost_mode"] == "executed"
    assert s["images"] == len(x)


def test_a_native_network_is_also_timed_against_its_dense_program(images: torch.Tensor) -> None:
    """LC-Net runs as one native program: the dense backbone in that runtime is timed too."""
    if not native.available():
        pytest.skip("the native kernels are unavailable")
    torch.manual_seed(0)
    net = equip(models.create("resnet20_cifar"), LCNet(init_bias=0.3, init_std=0.5, eps=0.0))
    r = bench(net, images[:2], images, repeats=2, repeats_b64=1, compile=False, threads_b64=1)
    for key in ("b1", "b64"):
        s = r[key]
        assert s["dense_native_ms"] > 0
        assert s["speedup_vs_dense_native"] == pytest.approx(
            s["dense_native_ms"] / s["dynamic_ms"], rel=1e-3
        )
    assert "dense native b=1" in dyve.bench.format_table(r)
    # which kernels were timed: the loaded library's build (a hash of what it was built from)
    assert r["kernels"] == native.build()
    assert r["kernels"].startswith("dyvedeep-")
    assert r["frozen"] is False
    assert "frozen" not in dyve.bench.format_table(r)
    # as deployed: the network and its dense reference frozen, the network restored after
    r = bench(net, images[:2], images[:4], repeats=2, repeats_b64=1, compile=False, frozen=True)
    assert r["frozen"] is True
    assert "frozen" in dyve.bench.format_table(r)
    assert r["b1"]["dense_native_ms"] > 0
    assert not net.frozen


def test_detach_unwraps_every_unit(net: DynamicNet, images: torch.Tensor) -> None:
    dense = net.detach()
    assert net.units, "the fixture should have gated units"
    assert not any(isinstance(m, Unit) for m in dense.modules())
    assert any(isinstance(m, Unit) for m in net.modules()), "the net itself is unchanged"
    reference = models.create("resnet20_cifar")
    reference.load_state_dict(dense.state_dict())
    with torch.no_grad():
        assert torch.equal(dense(images), reference(images))


def test_bench_keys_ratios_and_costs(net: DynamicNet, images: torch.Tensor) -> None:
    net.backend = "emulated"
    r = bench(net, images[:3], images, repeats=2, repeats_b64=1, compile=False, threads_b64=1)
    assert net.backend == "emulated", "the back-end is restored"
    assert set(r) == TOP_KEYS
    assert r["backbone"] == "resnet20_cifar"
    assert [m["name"] for m in r["mechanisms"]] == ["block_skip"]
    assert r["knobs"] == {"block_skip.threshold": 0.5, "block_skip.always": []}
    assert r["torch"] == torch.__version__
    assert r["machine"]["cores"] >= 1
    assert r["compile"] is False
    assert r["compile_options"] is None
    assert r["eager"]["as_given"] == {"memory_format": "contiguous", "bn_folded": False}
    assert r["eager"]["tuned"] == {"memory_format": "channels_last", "bn_folded": True}
    assert r["compiled_memory_format"] == "channels_last"
    assert r["exported"] is False  # a plain run: no exported variant, its timings null
    assert r["b1"]["exported_ms"] is None
    assert (r["b1"]["batch"], r["b1"]["threads"], r["b1"]["repeats"]) == (1, 1, 2)
    assert (r["b64"]["batch"], r["b64"]["threads"], r["b64"]["repeats"]) == (8, 1, 1)
    _check_setting(r["b1"], net, images[:3], compiled=False)
    _check_setting(r["b64"], net, images, compiled=False)
    assert 1.0 < r["b64"]["cost_reduction"] < 10.0, "threshold 0.5 skips some samples"
    json.dumps(r)  # JSON-ready


def test_bench_rejects_bad_arguments(net: DynamicNet, images: torch.Tensor) -> None:
    with pytest.raises(DyveError, match="repeats"):
        bench(net, images[:1], images, repeats=0, compile=False)
    with pytest.raises(DyveError, match="at least one image"):
        bench(net, images[:0], images, repeats=1, compile=False)
    dense = net.detach()
    with pytest.raises(DyveError, match="no native programs to freeze"):
        bench(
            dense, images[:1], images, repeats=1, compile=False, reference=(dense, {}), frozen=True
        )


def test_cli_writes_bench_json(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    small = data.load_sample().subset(slice(0, 4))  # keeps the "b64" setting at 4 images
    monkeypatch.setattr(dyve.data.sample, "load_sample", lambda: small)
    # one thread for the large batch: 2 threads crawl when the CPU is shared (OpenMP spin)
    monkeypatch.setattr(dyve.bench, "bench", functools.partial(bench, threads_b64=1))
    assert main(["bench", str(run_dir), "--no-compile", "--repeats", "6"]) == 0
    out = capsys.readouterr().out
    assert "mean ms per image" in out
    assert "MACs" in out
    assert "executed" in out
    r = json.loads((run_dir / "bench.json").read_text())
    assert set(r) == TOP_KEYS | {"data", "run_dir"}
    assert r["data"] == {
        "dataset": "sample",
        "split": "test-sample",
        "images_b1": 2,
        "images_b64": 4,
    }
    net = load(run_dir)
    x = models.CIFAR_NORM.apply(torch.from_numpy(small.images))
    _check_setting(r["b1"], net, x[:2], compiled=False)
    _check_setting(r["b64"], net, x, compiled=False)
    assert r["b1"]["repeats"] == 6  # 2 images, each timed 3 times (VISITS)
    assert r["b64"]["repeats"] == 3


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt"])
def test_cli_errors_are_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    if case == "corrupt":
        (target / "dynamic.json").write_text("{not json")
    assert main(["bench", str(target), "--no-compile", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dyve: error:")
    assert len(err.splitlines()) == 1
    assert str(target) in err
    assert not (target / "bench.json").exists()


def test_cli_benches_a_run_over_shipped_weights_and_a_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from dyve.demo import runs_dir

    run = tmp_path / "dd"  # DyVEDeep's calibrated knobs only: the shipped weights are used
    shutil.copytree(runs_dir() / "dyvedeep_resnet56", run)
    assert (run / "dynamic.safetensors").stat().st_size < 1000  # no backbone tensors in it
    assert main(["bench", str(run), "--no-compile", "--repeats", "2"]) == 0
    r = json.loads((run / "bench.json").read_text())
    assert r["mechanisms"][0]["name"] == "dyvedeep"
    assert r["b1"]["cost_reduction"] > 1.0
    assert (r["b1"]["dense_native_ms"] is not None) == native.available()
    # a network selection, against its most accurate network (the run's reference)
    sel = tmp_path / "sel"
    shutil.copytree(runs_dir() / "select_caffe_r20_r56", sel)
    capsys.readouterr()
    assert main(["bench", str(sel), "--no-compile", "--repeats", "6"]) == 0
    assert "resnet56_cifar + network_selection" in capsys.readouterr().out
    s = json.loads((sel / "bench.json").read_text())
    assert s["backbone"] == "resnet56_cifar"
    assert s["mechanisms"] == [
        {
            "name": "network_selection",
            "networks": ["caffe_cifar10", "resnet20_cifar", "resnet56_cifar"],
        }
    ]
    assert s["static_macs"] == 125485696
    from dyve.mechanisms.adaptive.select_job import load_selection

    norm = models.create("resnet56_cifar").dyve_info.norm
    x, _ = next(data.batches(data.load_sample().subset(slice(0, 64)), 64, norm))
    executed = float(load_selection(sel).run(x).macs.mean())
    assert s["b1"]["repeats"] == 6  # each of 2 images timed three times (VISITS)
    for key, n in (("b1", 2), ("b64", 64)):
        assert s[key]["images"] == n
        assert s[key]["dynamic_ms"] > 0
        assert s[key]["dense_eager_ms"] > 0
        # its networks run as native programs: the reference is timed in that runtime too
        assert (s[key]["dense_native_ms"] is not None) == native.available()
    assert s["b64"]["mean_macs"] == pytest.approx(executed)
    assert s["b64"]["cost_reduction"] == pytest.approx(125485696 / executed)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_bench_with_compile(net: DynamicNet, images: torch.Tensor) -> None:
    r = bench(net, images[:2], images, repeats=2, repeats_b64=1, compile=True)
    assert r["compile"] is True
    assert r["compile_options"] == {"freezing": True}
    _check_setting(r["b1"], net, images[:2], compiled=True)
    _check_setting(r["b64"], net, images, compiled=True)


def test_pages_quote_the_faster_eager_and_flag_older_benches() -> None:
    """Results pages quote the speedup against the faster eager variant; a bench.json from
    before the tuned baseline falls back to eager as given, and the page says so."""
    from dyve.bench import eager_caveat, eager_speedup

    new = {"b1": {"speedup_vs_eager": 3.0, "speedup_vs_eager_best": 2.2}}
    old = {"b1": {"speedup_vs_eager": 3.0}}
    assert eager_speedup(new["b1"]) == 2.2
    assert eager_speedup(old["b1"]) == 3.0
    assert eager_caveat([new, new]) is None
    caveat = eager_caveat([new, old, old])
    assert caveat is not None
    assert caveat.startswith("2 of 3 benches")
    assert "as given" in caveat
