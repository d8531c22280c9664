"""Calibration works on any conv/linear + ReLU CNN, here one defined in this file."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dyve.mechanisms.dyvedeep.calibrate as calibrate_mod
import dyve.mechanisms.dyvedeep.search as search
from dyve._io import read_json, write_json
from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.dynamic import equip
from dyve.errors import DyveError
from dyve.eval.measure import measure
from dyve.mechanisms import DyVEDeep
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.calibrate import CalibrationConfig, calibrate
from dyve.mechanisms.dyvedeep.kernel import SiteKnobs
from dyve.mechanisms.dyvedeep.profile import SiteProfile, capture, site_profile

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class PlainNet(nn.Module):
    """Not a zoo model: conv/BN/ReLU, a conv without BN, pooling, and a hidden FC layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(12, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _model_and_data(n: int = 160) -> tuple[nn.Module, ImageSet]:
    torch.manual_seed(0)
    model = PlainNet().eval()
    with torch.no_grad():
        bn = model.features[3]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    rng = np.random.default_rng(0)
    # smooth images: blocks of constant colour, so SDSS and SFMA have something to find
    small = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images = np.ascontiguousarray(small.repeat(4, 1).repeat(4, 2))
    data = ImageSet(images, np.zeros(n, np.int64), ("a", "b", "c", "d"), "synthetic", "val")
    x, _ = next(batches(data, n, NORM))
    with torch.no_grad():
        labels = model(x).argmax(1).numpy()  # the dense model is right by construction
    return model, ImageSet(images, labels, data.classes, "synthetic", "val")


def test_calibration_meets_the_budget_and_saves_ops(tmp_path: Path) -> None:
    model, data = _model_and_data()
    net = equip(model, DyVEDeep(), example_inputs=torch.zeros(1, 3, 16, 16), backend="emulated")
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=48, batch_size=80)
    cal = calibrate(net, data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert cal.dense["top1"] == 100.0
    assert len(cal.trajectory) > 10
    assert {s["knob"] for s in cal.trajectory} >= {"spet", "sdss", "sfma"}
    assert cal.chosen is not None
    # the network is left at the chosen point, and it keeps the budget on the same data
    m = measure(net, data, NORM, batch_size=80)
    assert 100.0 - m.top1 <= cfg.budget_pp
    assert m.scalar_ops_mean < 0.9 * cal.dense["scalar_ops_mean"]
    chosen = next(p for p in cal.curve() if p["step"] == cal.chosen)
    assert m.scalar_ops_mean == pytest.approx(chosen["scalar_ops_mean"])
    # the estimate of the greedy search orders the trajectory: ops fall along it
    est = [s["est_ops"] for s in cal.trajectory]
    assert est == sorted(est, reverse=True)
    assert (tmp_path / "calibration.json").exists()


def test_calibration_resumes_without_recomputing(tmp_path: Path, monkeypatch) -> None:
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=32, batch_size=80, curve_points=2)

    def fresh():
        return equip(model, DyVEDeep(), example_inputs=torch.zeros(1, 3, 16, 16))

    first = calibrate(fresh(), data, NORM, cfg, state_dir=tmp_path, progress=False)
    calls = []
    monkeypatch.setattr(calibrate_mod, "measure_sharded", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(calibrate_mod, "greedy", lambda *a, **k: calls.append(1))
    again = calibrate(fresh(), data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert not calls, "a finished calibration must be reused, not recomputed"
    assert again.chosen == first.chosen
    assert again.trajectory == first.trajectory
    with pytest.raises(DyveError, match=r"another search \(profile_images\)"):
        calibrate(fresh(), data, NORM, CalibrationConfig(budget_pp=1.0), state_dir=tmp_path)


def test_resumed_calibration_with_another_budget_keeps_search_and_points(
    tmp_path: Path, monkeypatch
) -> None:
    """Verification settings may change on resume: the search and the verified points are
    kept (every point already has its paired counts), the operating point is chosen again."""
    model, data = _model_and_data(80)
    base = dict(profile_images=32, batch_size=80, curve_points=2)
    cfg = CalibrationConfig(budget_pp=5.0, confidence=None, **base)

    def fresh():
        return equip(model, DyVEDeep(), example_inputs=torch.zeros(1, 3, 16, 16))

    first = calibrate(fresh(), data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert all({"worse", "better"} <= set(e) for e in first.evaluations.values())
    calls = []
    monkeypatch.setattr(calibrate_mod, "greedy", lambda *a, **k: calls.append("search"))
    strict = CalibrationConfig(budget_pp=0.0, confidence=0.99, **base)
    again = calibrate(fresh(), data, NORM, strict, state_dir=tmp_path, progress=False)
    assert not calls
    assert again.trajectory == first.trajectory
    assert set(again.evaluations) >= set(first.evaluations)
    assert again.chosen is not None  # at least step 0, the lossless exact check
    for p in again.curve():
        if p["step"] == again.chosen:
            assert p["bound_pp"] <= 0.0
    assert read_json(tmp_path / "calibration.json")["config"]["confidence"] == 0.99


def test_states_without_paired_counts_measure_them_again(tmp_path: Path) -> None:
    """A state from before the confidence bound has no dense predictions: the dense run and
    the verified points are measured again (the search is kept) and get their counts."""
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=32, batch_size=80, curve_points=2)
    first = calibrate(fresh_net(model), data, NORM, cfg, state_dir=tmp_path, progress=False)
    state = read_json(tmp_path / "calibration.json")
    del state["config"]["confidence"], state["dense_predictions"]
    for e in state["evaluations"].values():
        del e["worse"], e["better"]
    # a point the verification will not visit again, measured lossless without counts:
    # it is no evidence for the bound and must not be chosen
    spare = next(
        str(i) for i in range(1, len(first.trajectory)) if str(i) not in state["evaluations"]
    )
    state["evaluations"][spare] = {**state["evaluations"]["0"], "scalar_ops_mean": 1.0}
    write_json(tmp_path / "calibration.json", state)
    again = calibrate(fresh_net(model), data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert again.trajectory == first.trajectory
    assert again.dense_predictions == first.dense_predictions
    assert again.evaluations == first.evaluations
    assert again.chosen == first.chosen


def _calibration_with(points: dict[int, tuple[float, int, int, float]], conf: float | None):
    """A finished calibration over 1000 images (dense 90 % at 100 ops) with ``points``:
    step -> (top1, worse, better, ops)."""
    cal = calibrate_mod.Calibration(
        {"n": 1000, "confidence": conf},
        {"top1": 90.0, "scalar_ops_mean": 100.0, "macs_mean": 50.0},
        trajectory=[{"knob": "sfma", "site": "a", "threshold": 0.1}] * 10,
    )
    for step, (top1, worse, better, ops) in points.items():
        cal.evaluations[str(step)] = {
            "top1": top1,
            "scalar_ops_mean": ops,
            "macs_mean": ops / 2,
            "worse": worse,
            "better": better,
        }
    return cal


def test_the_budget_holds_the_loss_bound_not_the_loss() -> None:
    """Step 5 loses 0.2 pp through 58 discordant images: its bound (about 1.2 pp) is out of
    a 0.5 pp budget, so the costlier step 3 (0.1 pp through 3 images) is chosen; without a
    confidence the plain losses decide and step 5 is."""
    points = {3: (89.9, 2, 1, 80.0), 5: (89.8, 30, 28, 60.0)}
    cfg = CalibrationConfig(budget_pp=0.5)
    cal = _calibration_with(points, 0.9)
    bounds = {p["step"]: p["bound_pp"] for p in cal.curve()}
    assert bounds[5] == pytest.approx(
        0.2 + 1.2816 * np.sqrt((0.058 - 0.002**2) / 1000) * 100, rel=1e-3
    )
    assert bounds[3] < 0.5 < bounds[5]
    assert calibrate_mod._choose(cal, cfg) == 3
    plain = _calibration_with(points, None)
    assert calibrate_mod._choose(plain, CalibrationConfig(budget_pp=0.5, confidence=None)) == 5


def test_bad_confidence_is_refused() -> None:
    for bad in (0.3, 1.0, -1.0):
        with pytest.raises(ValueError, match="confidence"):
            CalibrationConfig(confidence=bad)


def test_target_reduction_picks_the_first_point_reaching_it() -> None:
    model, data = _model_and_data(80)
    net = equip(model, DyVEDeep(), example_inputs=torch.zeros(1, 3, 16, 16))
    cfg = CalibrationConfig(target_reduction=1.5, profile_images=32, batch_size=80)
    cal = calibrate(net, data, NORM, cfg, progress=False)
    pts = {p["step"]: p for p in cal.curve()}
    assert cal.chosen is not None
    assert pts[cal.chosen]["op_reduction"] >= 1.5
    assert all(p["op_reduction"] < 1.5 for s, p in pts.items() if s < cal.chosen)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown knobs"):
        CalibrationConfig(knobs=("spet", "nope"))
    with pytest.raises(ValueError, match="target_reduction"):
        CalibrationConfig(target_reduction=0.5)


def _fake_clocks(monkeypatch, alone, in_program=None) -> list[SiteKnobs]:
    """Site times (µs) as functions of the site's grids and its knobs: ``alone`` (what the
    search ranks by) and ``in_program`` (what accepts a step; default ``alone``). Returns the
    settings timed alone, in order."""
    in_program = in_program or alone
    timed: list[SiteKnobs] = []
    grids: dict[str, dict[str, list[float]]] = {}

    def time_knobs(self, mech, unit, knobs):
        timed.append(knobs)
        grids[self.name] = self.grids
        return alone(self.grids, knobs)

    class FakeProgramClock:
        def __init__(self, net, mech, x) -> None:
            self.sites = list(mech.ops)

        def compare(self, site, current, candidate):
            g = grids[site]
            return in_program(g, current), in_program(g, candidate)

        def set(self, site, knobs) -> None:
            pass

        def total_us(self) -> float:
            return 100.0 * len(self.sites)

    monkeypatch.setattr(SiteProfile, "time_knobs", time_knobs)
    monkeypatch.setattr(search, "ProgramClock", FakeProgramClock)
    return timed


def _sfma_saves(share: float):
    """A clock where SPET and SDSS cost time and SFMA saves ``share`` x 50 % at its top level."""

    def clock(grids: dict[str, list[float]], knobs: SiteKnobs) -> float:
        t = 100.0 * (1.3 if knobs.spet is not None else 1.0) * (1.2 if knobs.sdss else 1.0)
        if knobs.sfma is not None:
            g = grids["sfma"]
            t *= 1.0 - share * 0.5 * (g.index(knobs.sfma) + 1) / len(g)
        return t

    return clock


def test_time_search_takes_only_steps_that_save_time(tmp_path: Path, monkeypatch) -> None:
    timed = _fake_clocks(monkeypatch, _sfma_saves(1.0))
    model, data = _model_and_data()
    net = equip(model, DyVEDeep(), example_inputs=torch.zeros(1, 3, 16, 16), backend="emulated")
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=48, batch_size=80, cost="time")
    cal = calibrate(net, data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert any(k.spet is not None for k in timed), "SPET was tried, and refused"
    assert {s["knob"] for s in cal.trajectory} == {"sfma"}
    est = [s["est_us"] for s in cal.trajectory]
    assert all(b < a for a, b in itertools.pairwise(est))
    assert cal.machine is not None
    assert cal.machine["cores"] >= 1
    # the operating point: the least estimated time among the points within the budget
    ok = [p for p in cal.curve() if p["loss_pp"] <= cfg.budget_pp]
    assert cal.chosen == min(ok, key=lambda p: p["est_us"])["step"]
    assert net.mechanism("dyvedeep").knob_values()["spet"] is None
    # an op search on the same data does take SPET: the two searches differ
    op = calibrate(fresh_net(model), data, NORM, replace(cfg, cost="ops"), progress=False)
    assert "spet" in {s["knob"] for s in op.trajectory}


def fresh_net(model: nn.Module):
    return equip(model, DyVEDeep(), example_inputs=torch.zeros(1, 3, 16, 16), backend="emulated")


def test_time_search_without_a_saving_says_so(monkeypatch) -> None:
    _fake_clocks(monkeypatch, lambda grids, knobs: 100.0)
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(profile_images=32, batch_size=80, cost="time")
    with pytest.raises(DyveError, match="saves time"):
        calibrate(fresh_net(model), data, NORM, cfg, progress=False)


def test_time_search_refuses_steps_that_save_time_only_alone(monkeypatch) -> None:
    _fake_clocks(monkeypatch, _sfma_saves(1.0), _sfma_saves(0.0))  # alone only
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=32, batch_size=80, cost="time")
    with pytest.raises(DyveError, match="saves time"):
        calibrate(fresh_net(model), data, NORM, cfg, progress=False)


def test_time_search_without_a_program_falls_back_to_the_sites_alone(monkeypatch) -> None:
    from dyve.mechanisms.dyvedeep.lower import Unsupported

    _fake_clocks(monkeypatch, _sfma_saves(1.0))

    class NoProgram:
        def __init__(self, net, mech, x) -> None:
            raise Unsupported("mul: an op the program cannot run")

    monkeypatch.setattr(search, "ProgramClock", NoProgram)
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=32, batch_size=80, cost="time")
    with pytest.warns(RuntimeWarning, match="does not run as one native program"):
        cal = calibrate(fresh_net(model), data, NORM, cfg, progress=False)
    est = [s["est_us"] for s in cal.trajectory]
    assert est
    assert all(b < a for a, b in itertools.pairwise(est))


def _small_net():
    """The test model, its DyVEDeep network, the mechanism and 32 normalised images."""
    model, data = _model_and_data(32)
    net = fresh_net(model)
    x, _ = next(batches(data, 32, NORM))
    return model, net, net.mechanism("dyvedeep"), x


@pytest.mark.skipif(native.kernels() is None, reason="the native kernels are unavailable")
def test_program_clock_times_a_site_inside_the_program_and_sets_its_knobs() -> None:
    from dyve.mechanisms.dyvedeep.clock import ProgramClock
    from dyve.mechanisms.dyvedeep.program import Program

    model, net, mech, x = _small_net()
    clock = ProgramClock(net, mech, x)
    site = list(mech.ops)[1]
    heavy = SiteKnobs(sfma=1e9)  # drops every channel
    off_us, heavy_us = clock.compare(site, SiteKnobs(), heavy)
    assert 0 < off_us < 1e5  # microseconds per image (no order asserted: a timing)
    assert 0 < heavy_us < 1e5
    assert clock.knobs(site) == SiteKnobs(), "compare leaves the site as it was"
    spet_us = clock.compare(site, SiteKnobs(), SiteKnobs(spet=0.0, exact=True))[1]
    assert 0 < spet_us < 1e5  # SPET's table is prepared on the program's site
    assert clock.knobs(site) == SiteKnobs()
    assert clock.total_us() > off_us
    clock.set(site, heavy)  # the program now runs it: as a program built with the knob on
    mech.set_knob("sfma", {site: 1e9})
    ref = Program(net.backbone, x[:1], mech.site_options)
    assert torch.equal(clock.prog.run(x[:4])[0], ref.run(x[:4])[0])
    dense = Program(fresh_net(model).backbone, x[:1])
    assert not torch.equal(ref.run(x[:4])[0], dense.run(x[:4])[0])


@pytest.mark.skipif(native.kernels() is None, reason="the native kernels are unavailable")
def test_site_time_is_measured_in_the_native_kernel_and_cached() -> None:
    _, net, mech, x = _small_net()
    site = next(iter(mech.ops))
    prof = site_profile(mech, net.sites[site], capture(net, x, [site])[site], (0.5,))
    off = prof.time_knobs(mech, net.sites[site], SiteKnobs())
    assert 0 < off < 1e5
    # cached per setting; SPET's exact check is dropped, as the fast back-end drops it
    assert prof.time_knobs(mech, net.sites[site], SiteKnobs(exact=True)) == off
    assert list(prof.times) == [SiteKnobs()]


def test_states_from_before_the_time_search_resume(tmp_path: Path) -> None:
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(budget_pp=5.0, profile_images=32, batch_size=80, curve_points=2)
    first = calibrate(fresh_net(model), data, NORM, cfg, state_dir=tmp_path, progress=False)
    state = read_json(tmp_path / "calibration.json")
    del state["config"]["cost"]
    write_json(tmp_path / "calibration.json", state)
    again = calibrate(fresh_net(model), data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert again.chosen == first.chosen


def test_bad_cost_is_refused() -> None:
    with pytest.raises(ValueError, match="cost"):
        CalibrationConfig(cost="seconds")


def test_time_search_jumps_over_levels_that_cost_time(monkeypatch) -> None:
    """A check pass costs time until enough neurons stop: SPET's first levels run slower
    than off, later ones faster. The time search must reach those in one step."""

    def clock(grids: dict[str, list[float]], knobs: SiteKnobs) -> float:
        if knobs.spet is None:
            return 100.0
        return 130.0 if grids["spet"].index(knobs.spet) < 3 else 80.0

    _fake_clocks(monkeypatch, clock)
    model, data = _model_and_data(80)
    cfg = CalibrationConfig(budget_pp=100.0, profile_images=32, batch_size=80, cost="time")
    cal = calibrate(fresh_net(model), data, NORM, cfg, progress=False)
    spet = [s for s in cal.trajectory if s["knob"] == "spet"]
    assert spet, "SPET pays from level 3 and must be taken"
    assert all(s["level"] >= 3 for s in spet)
    assert {s["knob"] for s in cal.trajectory} == {"spet"}


def test_the_rule_chooses_among_the_verified_points() -> None:
    """Step 5 (loss 0.2 pp through 2 discordant images) passes on its bound after step 4
    (0.6 pp) failed: ``bound`` takes it, ``monotone`` stops before step 4; an unknown rule is
    refused."""
    points = {3: (89.9, 1, 0, 80.0), 4: (89.4, 6, 0, 70.0), 5: (89.8, 2, 0, 60.0)}
    cal = _calibration_with(points, 0.9)
    assert calibrate_mod._choose(cal, CalibrationConfig(budget_pp=0.5, rule="bound")) == 5
    assert calibrate_mod._choose(cal, CalibrationConfig(budget_pp=0.5, rule="monotone")) == 3
    with pytest.raises(ValueError, match="rule"):
        CalibrationConfig(rule="cheapest")


def test_bonferroni_holds_every_point_to_the_planned_family() -> None:
    """With the Bonferroni rule a point's bound (the one the bisection and the choice hold)
    is at 1 - 0.1 / k, k fixed by the trajectory: 2 ends + log2(10 steps) rounded up + 6
    curve points = 12."""
    from dyve.eval.paired import PairedLoss

    cal = _calibration_with({3: (89.9, 2, 1, 80.0)}, 0.9)
    plain = cal.bound_pp(cal.evaluations["3"])
    cal.config.update(rule="bonferroni", curve_points=6)
    assert cal.family() == 12
    wide = PairedLoss(1000, 2, 1).bound_pp(1 - 0.1 / 12)
    assert cal.bound_pp(cal.evaluations["3"]) == pytest.approx(wide)
    assert wide > plain
