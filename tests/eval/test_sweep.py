"""Sweeps and trade-off curves: cost monotonicity, the reference, Pareto, operating point, I/O."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch

from dyve.cost import CONVENTION
from dyve.data import ImageSet, load_sample
from dyve.dynamic import DynamicNet, equip
from dyve.errors import DyveError
from dyve.eval.curve import CurvePoint, TradeoffCurve
from dyve.eval.latency import num_threads
from dyve.eval.sweep import apply_point, sweep
from dyve.mechanisms import BlockSkip
from dyve.models import CIFAR_NORM, create

THRESHOLDS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.4]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # small CPU batches: two threads are much slower when another job holds the cores
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def net() -> DynamicNet:
    torch.manual_seed(0)
    return equip(create("resnet20_cifar"), BlockSkip())


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return load_sample().subset(slice(0, 32))


@pytest.fixture(scope="module")
def curve(net: DynamicNet, images: ImageSet) -> TradeoffCurve:
    return sweep(
        net, images, "threshold", THRESHOLDS, norm=CIFAR_NORM, batch_size=12, latency_repeats=0
    )


def test_mean_macs_fall_as_threshold_rises(curve: TradeoffCurve) -> None:
    swept = [p for p in curve.points if not p.reference]
    assert [p.value for p in swept] == THRESHOLDS
    macs = [p.macs_mean for p in swept]
    assert all(a >= b for a, b in pairwise(macs))
    assert macs[-1] < macs[0]  # the range really skips something
    assert all(p.cost_mode == "executed" for p in curve.points)
    for p in swept:
        assert p.macs_p50 <= p.macs_p95 <= curve.static_macs
        assert p.cost_reduction == pytest.approx(curve.static_macs / p.macs_mean)


def test_reference_point_is_the_dense_cost(curve: TradeoffCurve, net: DynamicNet) -> None:
    refs = [p for p in curve.points if p.reference]
    assert len(refs) == 1
    ref = curve.reference
    assert ref is curve.points[0]
    assert ref.value == 0.0
    assert ref.macs_mean == ref.macs_p50 == ref.macs_p95 == net.static_macs
    assert ref.cost_reduction == 1.0
    assert set(ref.ran_fraction) == set(net.units)
    assert all(f == 1.0 for f in ref.ran_fraction.values())
    assert ref.knobs == {"block_skip.threshold": 0.0, "block_skip.always": []}
    assert ref.n == curve.n == 32
    # the highest threshold skipped every block for some samples
    assert min(curve.points[-1].ran_fraction.values()) < 1.0


def test_reference_turns_every_knob_off(net: DynamicNet, images: ImageSet) -> None:
    net.set_knobs(threshold=0.8, always=("layer1.0",))
    try:
        c = sweep(net, images, "threshold", [0.9], norm=CIFAR_NORM, latency_repeats=0)
    finally:
        net.set_knobs(threshold=0.0, always=())
    assert c.reference.macs_mean == net.static_macs
    # the swept point keeps the other knob's value: layer1.0 is skipped for everyone
    assert c.points[1].ran_fraction["layer1.0"] == 0.0
    assert c.points[1].knobs["block_skip.always"] == ["layer1.0"]


def test_knobs_restored_after_sweep(net: DynamicNet, images: ImageSet) -> None:
    net.set_knobs(threshold=0.37, always=("layer2.1",))
    net.train()
    try:
        sweep(net, images, "block_skip__threshold", [1.0], norm=CIFAR_NORM, latency_repeats=0)
        assert net.knobs() == {"block_skip.threshold": 0.37, "block_skip.always": ("layer2.1",)}
        assert net.training
    finally:
        net.set_knobs(threshold=0.0, always=())
        net.eval()


def test_knobs_restored_after_a_bad_value(net: DynamicNet, images: ImageSet) -> None:
    net.set_knobs(threshold=0.25)
    try:
        with pytest.raises(ValueError, match="could not convert"):
            sweep(net, images, "threshold", [1.0, "abc"], norm=CIFAR_NORM, latency_repeats=0)
        assert net.knobs()["block_skip.threshold"] == 0.25
    finally:
        net.set_knobs(threshold=0.0)


def test_knobs_restored_when_run_raises(
    net: DynamicNet, images: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_run = net.run

    def failing_run(x: torch.Tensor) -> Any:
        calls.append(net.knobs()["block_skip.threshold"])
        if len(calls) > 1:
            raise RuntimeError("boom")
        return real_run(x)

    monkeypatch.setattr(net, "run", failing_run)
    with pytest.raises(RuntimeError, match="boom"):
        sweep(net, images, "threshold", [1.2], norm=CIFAR_NORM, batch_size=64, latency_repeats=0)
    assert calls == [0.0, 1.2]  # reference, then the swept value when it failed
    assert net.knobs()["block_skip.threshold"] == 0.0


def test_unknown_knob(net: DynamicNet, images: ImageSet) -> None:
    with pytest.raises(KeyError, match=r"known knobs: block_skip\.threshold"):
        sweep(net, images, "speed", [1], norm=CIFAR_NORM)
    with pytest.raises(KeyError):
        net.resolve_knob("other__threshold")
    with pytest.raises(ValueError, match="at least one"):
        sweep(net, images, "threshold", [], norm=CIFAR_NORM)


def test_emulated_backend_is_simulated_with_the_same_cost(
    net: DynamicNet, images: ImageSet, curve: TradeoffCurve
) -> None:
    net.backend = "emulated"
    try:
        c = sweep(net, images, "threshold", [0.6], norm=CIFAR_NORM, latency_repeats=0)
    finally:
        net.backend = "fast"
    assert c.cost_mode == "simulated"
    assert all(p.cost_mode == "simulated" for p in c.points)
    fast = next(p for p in curve.points if p.value == 0.6)
    assert c.points[1].macs_mean == fast.macs_mean
    assert c.points[1].top1 == fast.top1
    assert "simulated (computed for every sample, then masked)" in c.table()


def test_latency_is_measured_against_the_dense_backbone(net: DynamicNet, images: ImageSet) -> None:
    c = sweep(net, images, "threshold", [1.4], norm=CIFAR_NORM, latency_repeats=2)
    for p in c.points:
        assert p.latency_ms is not None
        assert p.dense_latency_ms is not None
        assert p.latency_ms > 0
        assert p.dense_latency_ms > 0
        assert p.speedup_b1 == p.dense_latency_ms / p.latency_ms
    assert c.machine["cores"] >= 1


def test_apply_point_sets_every_knob(net: DynamicNet, curve: TradeoffCurve) -> None:
    try:
        apply_point(net, curve.points[3])
        assert net.knobs()["block_skip.threshold"] == THRESHOLDS[2]
    finally:
        net.set_knobs(threshold=0.0)


def test_apply_point_sets_several_knobs_of_a_mechanism() -> None:
    """A calibrated point sets several knobs at once (DyVEDeep's four)."""
    from dataclasses import replace

    from dyve.mechanisms.dyvedeep import DyVEDeep
    from dyve.testing.toy import toy_bottleneck_net

    dv = equip(toy_bottleneck_net().eval(), DyVEDeep(), example_inputs=torch.zeros(1, 3, 32, 32))
    knobs = {
        "dyvedeep.spet": 0.1,
        "dyvedeep.spet_exact": True,
        "dyvedeep.sdss": 0.2,
        "dyvedeep.sfma": 0.05,
    }
    apply_point(dv, replace(point(0.1, 90.0, 50.0), knobs=knobs))
    assert dv.knobs() == knobs


# ------------------------------------------------------------------ hand-made curves
def point(value: Any, top1: float, macs: float, *, reference: bool = False) -> CurvePoint:
    return CurvePoint(
        knob="threshold",
        value=value,
        top1=top1,
        top5=99.0,
        macs_mean=macs,
        macs_p50=macs,
        macs_p95=macs,
        cost_mode="executed",
        latency_ms=None,
        dense_latency_ms=None,
        speedup_b1=None,
        cost_reduction=100.0 / macs,
        n=100,
        dataset="toy",
        split="val",
        reference=reference,
        knobs={"m.threshold": value},
    )


def hand_curve(*points: CurvePoint) -> TradeoffCurve:
    return TradeoffCurve("threshold", tuple(points), 100.0, "toy", "val", 100)


def test_pareto_filter() -> None:
    ref = point(0.0, 90.0, 100.0, reference=True)
    a = point(0.1, 90.0, 100.0)  # equal to the reference: both kept
    b = point(0.2, 91.0, 120.0)  # more accurate and dearer: kept
    c = point(0.3, 85.0, 50.0)
    d = point(0.4, 84.0, 60.0)  # dominated by c
    e = point(0.5, 85.0, 70.0)  # dominated by c (same top-1, dearer)
    f = point(0.6, 60.0, 10.0)
    front = hand_curve(ref, a, b, c, d, e, f).pareto()
    assert [p.value for p in front] == [0.6, 0.3, 0.0, 0.1, 0.2]


def test_operating_point() -> None:
    ref = point(0.0, 90.0, 100.0, reference=True)
    a = point(0.1, 89.5, 40.0)
    b = point(0.2, 88.0, 20.0)
    c = point(0.3, 89.2, 40.0)  # as cheap as a, less accurate
    d = point(0.4, 90.0, 70.0)  # as accurate as the reference, cheaper
    curve = hand_curve(ref, a, b, c, d)
    assert curve.operating_point(1.0) is a
    assert curve.operating_point(2.0) is b
    assert curve.operating_point(0.0) is d
    assert curve.operating_point(0.3) is d
    # nothing within budget but the reference, and equal cost goes to the reference
    e = point(0.5, 90.0, 100.0)
    assert hand_curve(e, ref, point(0.6, 50.0, 1.0)).operating_point(0.5) is ref
    with pytest.raises(ValueError, match="budget_pp"):
        curve.operating_point(-1.0)
    with pytest.raises(ValueError, match="no reference"):
        hand_curve(a, b).operating_point(1.0)


def test_json_round_trip(curve: TradeoffCurve, tmp_path: Path) -> None:
    path = curve.to_json(tmp_path / "c" / "curve.json")
    back = TradeoffCurve.from_json(path)
    assert back == curve
    raw = json.loads(path.read_text())
    assert raw["format"] == "dyve.curve/1"
    assert raw["convention"] == CONVENTION
    odd = hand_curve(point(["layer1.0"], 70.0, 30.0), point(0.0, 80.0, 100.0, reference=True))
    assert TradeoffCurve.from_json(odd.to_json(tmp_path / "odd.json")) == odd
    assert not list(tmp_path.glob("**/.*.tmp"))  # atomic writes leave no temp files


def test_from_json_refuses_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DyveError, match="not valid JSON"):
        TradeoffCurve.from_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "dyve.curve/1", "points": [{}]}))
    with pytest.raises(DyveError, match="malformed"):
        TradeoffCurve.from_json(tmp_path / "b.json")
    with pytest.raises(DyveError, match="not found"):
        TradeoffCurve.from_json(tmp_path / "missing.json")


def test_table_states_convention_and_mode(curve: TradeoffCurve) -> None:
    text = curve.table()
    lines = text.splitlines()
    assert CONVENTION in lines[1]
    assert lines[2].startswith("cost mode: executed")
    assert "dense (off)" in text
    rows = [ln for ln in lines if ln.split() and ln.split()[0] in {"0.2", "1.4"}]
    assert len(rows) == 2


@pytest.mark.parametrize("with_latency", [False, True])
def test_plot_writes_png_and_svg(tmp_path: Path, with_latency: bool) -> None:
    pts = [point(0.0, 90.0, 100.0, reference=True), point(0.5, 85.0, 50.0)]
    if with_latency:
        pts = [
            CurvePoint(**{**p.__dict__, "latency_ms": 2.0, "dense_latency_ms": 2.5}) for p in pts
        ]
    png, svg = hand_curve(*pts).plot(tmp_path / "out" / "curve")
    assert png == tmp_path / "out" / "curve.png"
    assert svg == tmp_path / "out" / "curve.svg"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.stat().st_size > 1000
    text = svg.read_text()
    assert "<svg" in text
    assert text.rstrip().endswith("</svg>")


def test_sweep_latency_is_against_the_faster_eager_backbone(
    net: DynamicNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dense time of a point is the faster of the backbone as given and its tuned copy
    (BN folded, channels_last, fed channels_last inputs)."""
    import dyve.eval.sweep as sw
    from dyve.eval.latency import Timing

    seen: dict[str, Any] = {}

    def fake(fns: dict, **_: Any) -> dict[str, Timing]:
        seen.update({k: fn() for k, fn in fns.items()})
        ms = {"dynamic": 1.0, "dense": 3.0, "tuned": 2.0}
        return {k: Timing(ms[k], ms[k], ms[k], 1, ms[k]) for k in fns}

    monkeypatch.setattr(sw, "interleaved", fake)
    timer = sw._Timer(net, load_sample().subset(slice(0, 4)), CIFAR_NORM, repeats=1)
    assert timer.time() == (1.0, 2.0)
    assert set(seen) == {"dynamic", "dense", "tuned"}
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in timer.laid)
    assert torch.allclose(seen["tuned"], seen["dense"], atol=1e-4)  # the same network
