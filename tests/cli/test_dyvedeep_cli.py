"""``dyve dyvedeep calibrate`` and ``results`` end to end on real CIFAR-10 images (small limits)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import dyve.dynamic
from dyve._io import jsonable, read_json
from dyve.cli.main import main
from dyve.data import batches, load_images
from dyve.eval.latency import num_threads
from dyve.eval.paired import choose
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.calibrate import Calibration
from dyve.models import CIFAR_NORM

REQUIRED = (
    "baseline_top1",
    "top1",
    "accuracy_loss_pp",
    "scalar_ops_per_sample",
    "baseline_scalar_ops_per_sample",
    "op_reduction",
    "macs_per_sample",
    "split",
)


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), num_threads(1):
        rc = main(list(argv))
    return rc, out.getvalue()


@pytest.mark.slow
def test_calibrate_writes_a_complete_run(prepared, tmp_path: Path) -> None:
    prepared("cifar10-jpeg")
    run = tmp_path / "run"
    args = (
        "dyvedeep",
        "calibrate",
        "--model",
        "caffe_cifar10",
        "--data",
        "cifar10-jpeg",
        "--out",
        str(run),
        "--budget",
        "1.0",
        "--limit",
        "300",
        "--test-limit",
        "300",
        "--profile-images",
        "48",
        "--batch-size",
        "150",
        "--no-progress",
    )
    rc, text = _cli(*args)
    assert rc == 0, text
    assert "fewer scalar ops" in text
    assert "  step " in text  # the calibration's steps (a rerun must not print them)
    for f in (
        "config.json",
        "calibration.json",
        "test.json",
        "curve.json",
        "curve.png",
        "metrics.json",
        "dynamic.json",
        "dynamic.safetensors",
    ):
        assert (run / f).exists(), f
    m = read_json(run / "metrics.json")
    assert set(REQUIRED) <= set(m)
    assert m["split"] == "test"
    assert m["cost_mode"] == "simulated"
    assert m["op_reduction"] > 1.0
    assert m["baseline_scalar_ops_per_sample"] == 2 * m["baseline_macs_per_sample"]
    assert set(m["ops_saved_fraction"]) == {"spet_saved", "exact_saved", "sdss_saved", "sfma_saved"}
    # each knob the calibration turned on is also measured alone
    on = {k.removeprefix("dyvedeep.") for k, v in m["knobs"].items() if v}
    assert on
    assert set(m["knob_alone"]) == on
    layers = m["per_layer"]
    assert set(layers) == {"conv2", "conv3", "fc1"}
    # the saved network is the calibrated one: its test cost is the reported cost
    net = dyve.dynamic.load(run)
    net.backend = "emulated"
    test = load_images("cifar10-jpeg", "test", limit=300)
    ops = []
    for x, _ in batches(test, 150, CIFAR_NORM):
        ops.append(net.run(x).trace.cost.scalar_ops)
    assert float(torch.cat(ops).mean()) == pytest.approx(m["scalar_ops_per_sample"])
    # rerunning the finished run recomputes nothing and reports the same numbers
    rc, again = _cli(*args)
    assert rc == 0
    assert "  step " not in again, "verified points must be reused from calibration.json"
    assert read_json(run / "metrics.json")["top1"] == m["top1"]
    # a stricter budget keeps the search, chooses again, and tests the new point
    trajectory = read_json(run / "calibration.json")["trajectory"]
    strict = [a if a != "1.0" else "0.2" for a in args]
    strict += ["--confidence", "0.95", "--rule", "monotone"]
    assert strict.count("0.2") == 1
    rc, text = _cli(*strict)
    assert rc == 0, text
    state = read_json(run / "calibration.json")
    assert state["trajectory"] == trajectory
    cal = Calibration(**state)
    k = read_json(run / "metrics.json")["calibration"]
    assert (k["confidence"], k["budget_pp"], k["chosen_step"]) == (0.95, 0.2, cal.chosen)
    assert k["rule"] == "monotone"
    assert cal.chosen == choose(
        cal.curve(), cal.config["n"], 0.2, 0.95, "scalar_ops_mean", "monotone"
    )
    if cal.chosen is not None:
        assert k["loss_bound_pp"] <= 0.2
    assert read_json(run / "test.json")["dyvedeep"]["knobs"] == jsonable(
        cal.knob_values(cal.chosen) if cal.chosen is not None else {}
    )
    rc, _ = _cli(*args, "--profile-images", "64")
    assert rc == 2, "another search must be refused"
    # the results page lists the run
    page = tmp_path / "results.md"
    rc, _ = _cli("dyvedeep", "results", str(run), "--out", str(page))
    assert rc == 0
    text = page.read_text()
    assert "| caffe_cifar10 |" in text
    assert f"{read_json(run / 'metrics.json')['op_reduction']:.2f}x" in text
    assert "| 0.2 pp (95% bound, monotone rule) |" in text


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "dyvedeep",
            "calibrate",
            "--model",
            "caffe_cifar10",
            "--data",
            "cifar10-jpeg",
            "--out",
            str(tmp_path),
            "--knobs",
            "spet,warp",
        ]
    )
    assert rc == 2
    assert "unknown knobs" in capsys.readouterr().err
    base = ["dyvedeep", "calibrate", "--model", "caffe_cifar10", "--data", "cifar10-jpeg"]
    assert main([*base, "--out", str(tmp_path), "--knobs", ",,"]) == 2
    assert "names no knob" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path), "--split", "test", "--confidence", "2"]) == 2
    assert "warning: calibrating and testing on test" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path), "--sdss-stride", "0"]) == 2
    assert "sdss_stride must be >= 2, got 0" in capsys.readouterr().err
    rc = main([*base, "--out", str(tmp_path), "--confidence", "1.5"])
    assert rc == 2
    assert "confidence must be in [0.5, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path), "--confidence", "maybe"])
    assert "a probability or 'none'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path), "--rule", "cheapest"])
    assert "invalid choice: 'cheapest'" in capsys.readouterr().err
    rc = main(["dyvedeep", "results", str(tmp_path / "missing"), "--out", str(tmp_path / "r.md")])
    assert rc == 2
    assert "no config.json; not a finished run" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(native.kernels() is None, reason="the native kernels are unavailable")
def test_calibrate_for_time_records_the_search_and_the_machine(
    prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dyve.mechanisms.dyvedeep.clock import ProgramClock
    from dyve.mechanisms.dyvedeep.kernel import SiteKnobs
    from dyve.mechanisms.dyvedeep.profile import TIME_IMAGES, SiteProfile

    def site_macs(self: ProgramClock, site: str) -> float:
        """A deterministic stand-in for the site's measured time (and, summed, the sites'
        total): the MACs it ran per image, in thousands. On a loaded machine the real clocks
        can reject every step (CI beside four training runs did, session 39), and this
        test checks what the search records, not speed."""
        _, stats, _ = self.prog.run(self.x)
        return float(stats[self.prog.site_names.index(site), :, 0].mean()) / 1e3

    def knob_macs(self: SiteProfile, mech: Any, unit: Any, knobs: SiteKnobs) -> float:
        """The same stand-in for a site's time alone (the search's first filter): the MACs
        the site's kernel runs per image with ``knobs``, in thousands."""
        knobs = replace(knobs, exact=False)
        if knobs not in self.times:
            fast = native.FastSite(mech.ops[self.name].plan(unit), mech.ops[self.name].geom)
            cfg = mech.config
            ran = fast.run(self.inputs[:TIME_IMAGES], knobs, relu=unit.relu,
                           sdss_stride=cfg.sdss_stride, statistic=cfg.sfma_statistic)  # fmt: skip
            self.times[knobs] = float(ran.macs.mean()) / 1e3
        return self.times[knobs]

    monkeypatch.setattr(ProgramClock, "_site_us", site_macs)
    monkeypatch.setattr(SiteProfile, "time_knobs", knob_macs)
    monkeypatch.setattr(
        ProgramClock, "total_us", lambda self: sum(site_macs(self, s) for s in self._at)
    )
    prepared("cifar10-jpeg")
    run = tmp_path / "run"
    rc, text = _cli(
        "dyvedeep", "calibrate", "--model", "caffe_cifar10", "--data", "cifar10-jpeg",
        "--out", str(run), "--budget", "1.0", "--cost", "time", "--limit", "200",
        "--test-limit", "200", "--profile-images", "32", "--batch-size", "100",
        "--confidence", "none", "--no-ablations", "--no-progress",
    )  # fmt: skip
    assert rc == 0, text
    assert "sites' time est." in text
    m = read_json(run / "metrics.json")
    cal = m["calibration"]
    assert cal["cost"] == "time"
    assert cal["machine"]["cores"] >= 1
    assert cal["est_time_reduction"] > 1.0
    assert cal["confidence"] is None  # 200 images: the budget holds the plain loss
    state = read_json(run / "calibration.json")
    assert state["config"]["cost"] == "time"
    assert all("est_us" in s for s in state["trajectory"])
    page = tmp_path / "results.md"
    assert _cli("dyvedeep", "results", str(run), "--out", str(page))[0] == 0
    assert f"time ({cal['est_time_reduction']:.2f}x)" in page.read_text()
