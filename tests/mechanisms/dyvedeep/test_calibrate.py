"""Calibration works on any conv/linear + ReLU CNN, here one defined in this file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dyve.mechanisms.dyvedeep.calibrate as calibrate_mod
from dyve.data.core import ImageSet
from dyve.data.loader import Normalization, batches
from dyve.dynamic import equip
from dyve.errors import DyveError
from dyve.eval.measure import measure
from dyve.mechanisms import DyVEDeep
from dyve.mechanisms.dyvedeep.calibrate import CalibrationConfig, calibrate

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
    monkeypatch.setattr(calibrate_mod, "_greedy", lambda *a, **k: calls.append(1))
    again = calibrate(fresh(), data, NORM, cfg, state_dir=tmp_path, progress=False)
    assert not calls, "a finished calibration must be reused, not recomputed"
    assert again.chosen == first.chosen
    assert again.trajectory == first.trajectory
    with pytest.raises(DyveError, match="other settings"):
        calibrate(fresh(), data, NORM, CalibrationConfig(budget_pp=1.0), state_dir=tmp_path)


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
