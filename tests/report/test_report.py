"""``dyve report``: subjects from runs, the same measurement as ``measure``, the page files,
and the page rendered in headless Chromium."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import dyve
from dyve import data
from dyve.demo import runs_dir
from dyve.errors import DyveError
from dyve.eval.measure import measure
from dyve.mechanisms import BlockSkip
from dyve.models import create
from dyve.report import collect, load_run, with_dense, write
from dyve.report.collect import difficulty_bins


@pytest.fixture(scope="module")
def sample() -> data.ImageSet:
    return data.load_images("sample", "test", limit=48)


@pytest.fixture(scope="module")
def report(skip_run: Path, sample: data.ImageSet, tmp_path_factory: pytest.TempPathFactory):
    subjects = with_dense([load_run(skip_run), load_run(runs_dir() / "select_caffe_r20_r56")])
    col = collect(subjects, sample, latency_images=4, repeats=2, progress=False, log=lambda m: None)
    out = tmp_path_factory.mktemp("report")
    return col, write(col, out, title="test report"), out


def test_dense_rows_come_first_one_per_reference(report) -> None:
    col, _, _ = report
    labels = [(r.subject.label, r.subject.method) for r in col.results]
    assert labels == [
        ("dense resnet20_cifar", "dense"),
        ("dense resnet56_cifar", "dense"),
        ("skip_r20", "block skip"),
        ("select_caffe_r20_r56", "network selection"),
    ]
    assert col.difficulty_reference == "resnet20_cifar"


def test_measurement_is_the_shared_measure(report, skip_run: Path, sample) -> None:
    col, _, _ = report
    r = col.results[2]
    net = dyve.dynamic.load(skip_run)
    ref = measure(net, sample, dyve.models.model_info(net.backbone).norm)
    assert r.m.top1 == ref.top1
    assert np.array_equal(r.m.cost.macs.numpy(), ref.cost.macs.numpy())
    assert r.reduction == pytest.approx(net.static_macs / ref.macs_mean)
    # the per-sample unit record covers the same units and adds up to the breakdown
    assert r.m.unit_macs.keys() == ref.breakdown.keys()
    assert r.m.unit_macs
    for unit, per_sample in r.m.unit_macs.items():
        assert per_sample.mean() == pytest.approx(ref.breakdown[unit]["macs"])
    assert r.reduction > 1.0  # the threshold really skips blocks on these images


def test_lcnet_is_measured_one_sample_at_a_time(sample) -> None:
    """LC-Net's fast back-end computes the union of a batch's kept channels, so a batch
    costs its samples more than they cost alone; a report measures it at batch 1, and each
    sample's MACs are what it executes alone (as the latency column times it)."""
    s = load_run(runs_dir() / "lcnet_resnet56")
    col = collect([s], sample, repeats=0, progress=False, log=lambda m: None)
    alone = measure(s.model, sample, s.norm, batch_size=1)
    batched = measure(s.model, sample, s.norm)
    assert batched.macs_mean > alone.macs_mean  # the union: what the rule is for
    assert torch.equal(col.results[0].m.cost.macs, alone.cost.macs)
    assert col.results[0].m.top1 == batched.top1


def test_dense_rows_cost_their_static_macs_and_time_against_the_faster_eager(report) -> None:
    """A dense row is timed as given; the reference is the faster of that and its tuned
    copy (channels_last, BN folded), so its speedup is at most 1."""
    col, _, _ = report
    for r in col.results[:2]:
        assert r.reduction == pytest.approx(1.0)
        assert r.reference_latency is not None
        assert r.latency is not None
        assert r.reference_latency.mean_ms <= r.latency.mean_ms
        assert r.speedup == pytest.approx(r.reference_latency.mean_ms / r.latency.mean_ms)
        assert r.speedup <= 1.0
    for r in col.results[2:]:  # every subject of a reference is timed against the same one
        dense = next(
            d for d in col.results[:2] if d.subject.reference_name == r.subject.reference_name
        )
        assert r.reference_latency is dense.reference_latency
    for r in col.results[2:]:
        assert r.latency is not None
        assert r.latency.median_ms > 0
    # a selection's reference is its most expensive network
    assert col.results[3].subject.reference_name == "resnet56_cifar"


def test_files_hold_every_subject(report) -> None:
    col, paths, out = report
    doc = json.loads(paths["json"].read_text())
    assert [s["label"] for s in doc["subjects"]] == [r.subject.label for r in col.results]
    assert doc["subjects"][2]["macs_mean"] == pytest.approx(col.results[2].m.macs_mean)
    md = paths["md"].read_text()
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (out / link).is_file()
    assert md.count("figures/") == 5
    html = paths["html"].read_text()
    assert html.count("<tr>") == 1 + len(col.results)
    assert html.count("data:image/png;base64,") == 5
    assert "cost mode: executed" in md


def test_difficulty_bins_are_equal_fifths_easiest_first() -> None:
    prob = np.linspace(1.0, 0.0, 10)
    assert difficulty_bins(prob).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert difficulty_bins(prob[::-1]).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_load_run_refuses_a_folder_without_a_network(tmp_path: Path) -> None:
    with pytest.raises(DyveError, match=r"neither dynamic\.json"):
        load_run(tmp_path)
    with pytest.raises(DyveError, match="no such run directory"):
        load_run(tmp_path / "missing")


def test_reference_without_shipped_weights_is_the_runs_own(tmp_path: Path) -> None:
    net = dyve.equip(create("d2nn_highlow_cifar"), dyve.mechanisms.MECHANISMS.get("d2nn")())
    dyve.dynamic.save(net, tmp_path / "d2")
    subjects = with_dense([load_run(tmp_path / "d2")])
    assert subjects[0].label == "dense (d2's weights)"
    assert subjects[0].reference_name == "d2nn_highlow_cifar"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(subjects[0].reference(x), subjects[1].reference(x))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian packages chromium and chromium-driver; "
    "`make env` installs them when it can)",
)
def test_page_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    col, paths, _ = report
    url = paths["html"].resolve().as_uri()
    flags = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    rendered = re.search(r'data-rendered="figures=(\d+);tables=(\d+)"', dom)
    assert rendered, "the page's load script did not run"
    assert int(rendered.group(1)) == 5  # every embedded figure decoded
    assert int(rendered.group(2)) == 1 + len(col.results)
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2400", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 50_000  # a page with figures, not a blank one (about 3 kB)


def test_a_run_with_another_label_set_is_refused(tmp_path: Path, sample) -> None:
    net = dyve.equip(create("resnet20_cifar", num_classes=2), BlockSkip(threshold=0.5))
    dyve.dynamic.save(net, tmp_path / "binary")
    with pytest.raises(DyveError, match="predicts 2 classes but cifar10-jpeg/test-sample has 10"):
        collect([load_run(tmp_path / "binary")], sample, repeats=0, log=lambda m: None)


def test_dynamic_subjects_are_timed_frozen_then_restored(sample, monkeypatch) -> None:
    collect_mod = importlib.import_module("dyve.report.collect")  # (the package's `collect`
    # attribute is the function)
    subjects = with_dense([load_run(runs_dir() / "select_caffe_r20_r56")])
    dynamic = [s.model for s in subjects if not s.is_dense]
    seen: list[bool] = []
    timed = collect_mod.interleaved

    def spy(fns, **kwargs):
        seen.extend(m.frozen for m in dynamic)
        return timed(fns, **kwargs)

    monkeypatch.setattr(collect_mod, "interleaved", spy)
    collect(subjects, sample, latency_images=2, repeats=1, progress=False, log=lambda m: None)
    assert seen == [True], "timed as deployed"
    assert not any(m.frozen for m in dynamic), "and left as it was"


def test_dyvedeep_examples_carry_a_layer_map(sample) -> None:
    from dyve.report import figures

    # the point calibrated for the fewest ops: SPET and SDSS leave positions not computed
    # in full (the shipped point, calibrated for time, uses SFMA alone: checked below)
    ops_point = Path(__file__).resolve().parents[2] / "docs/results/dyvedeep/resnet56_cifar"
    col = collect(
        with_dense([load_run(ops_point), load_run(runs_dir() / "dyvedeep_resnet56")]),
        sample,
        repeats=0,
        progress=False,
        log=lambda m: None,
    )
    picks = figures.pick_examples(col)
    _, shipped_grid, shipped_approx = figures.layer_maps(col.results[2], col, picks)
    assert shipped_approx.mean() > 0  # SFMA approximated channels on these images
    assert shipped_grid.mean() == 1.0  # and it computes every neuron
    site, grid, approx = figures.layer_maps(col.results[1], col, picks)
    assert site in col.results[1].subject.model.mechanisms[0].ops
    assert grid.shape[0] == len(picks)
    assert grid.ndim == 3
    assert grid.min() >= 0.0
    assert grid.max() <= 1.0
    assert grid.mean() < 1.0  # the chosen layer really skipped work on these images
    assert approx.shape == (len(picks),)
    assert figures.layer_maps(col.results[0], col, picks) is None  # dense: no maps
    assert figures.examples(col, picks)[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_the_report_with_labels(
    skip_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyve.cli.main import main

    common = [str(skip_run), "--limit", "16", "--repeats", "0", "--no-progress"]
    assert main(["report", *common, "--out", str(tmp_path / "r"), "--labels", "skip"]) == 0
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [s["label"] for s in doc["subjects"]] == ["dense resnet20_cifar", "skip"]
    assert doc["subjects"][1]["latency_ms"] is None  # --repeats 0: not timed
    assert "| skip | block skip |" in capsys.readouterr().out
    assert main(["report", *common, "--out", str(tmp_path / "x"), "--labels", "a,b"]) == 2
    assert "--labels needs 1 non-empty labels" in capsys.readouterr().err
