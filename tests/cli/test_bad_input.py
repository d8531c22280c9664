"""Bad input across the commands: one line (exit 2), given before any work, no files left
behind, and no run overwritten by a command that did not make it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from dyve.cli.main import main
from dyve.errors import DyveError

ROOT = Path(__file__).resolve().parents[2]
LCNET_RUN = ROOT / "docs/results/lcnet/runs/lcnet_l04_c002"
D2NN_RUN = ROOT / "docs/results/d2nn/runs/chain/alone_half"


def _err(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one-line error of a refused command."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("dyve: error: ")
    return err


@pytest.fixture
def lc_run(tmp_path: Path) -> Path:
    """A copy of a kept LC-Net run (its config and metrics)."""
    run = tmp_path / "lc"
    shutil.copytree(LCNET_RUN, run)
    return run


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--model", "resnet20_cifar", "--data", "sample"],
        [
            "sweep",
            "--model",
            "resnet20_cifar",
            "--mechanism",
            "dyvedeep",
            "--knob",
            "sdss",
            "--values",
            "0.1",
            "--data",
            "sample",
        ],
        ["report", str(LCNET_RUN)],
        ["demo"],
    ],
)
def test_out_holding_another_run_is_refused_untouched(
    capsys: pytest.CaptureFixture[str], lc_run: Path, argv: list[str]
) -> None:
    before = _files(lc_run)
    err = _err(capsys, *argv, "--out", str(lc_run), "--no-progress")
    assert "already holds another run" in err
    assert _files(lc_run) == before


def test_export_refuses_another_run(lc_run: Path) -> None:
    from dyve.export import export

    before = _files(lc_run)
    with pytest.raises(DyveError, match="already holds another run"):
        export(ROOT / "docs/results/lcnet/runs/lcnet_r315_kd05_e22", lc_run, None)  # type: ignore[arg-type]
    assert _files(lc_run) == before


def test_out_that_is_a_file_is_refused_before_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = tmp_path / "afile.txt"
    f.write_text("keep me")
    for argv in (
        ["eval", "--model", "resnet20_cifar", "--data", "sample"],
        ["demo"],
        ["report", str(LCNET_RUN)],
    ):
        assert "is a file, not a folder" in _err(capsys, *argv, "--out", str(f), "--no-progress")
    assert f.read_text() == "keep me"


def test_eval_batch_size_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    err = _err(capsys, "eval", "--model", "resnet20_cifar", "--data", "sample", "--batch-size", "0")
    assert "--batch-size must be >= 1, got 0" in err


@pytest.mark.parametrize(
    ("command", "run", "message"),
    [
        ("lcnet", D2NN_RUN, "not a run of `dyve lcnet train`"),
        ("d2nn", LCNET_RUN, "not a run of `dyve d2nn train`"),
        ("dyvedeep", LCNET_RUN, "not a run of `dyve dyvedeep calibrate`"),
    ],
)
def test_results_of_another_method_run_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, run: Path, message: str
) -> None:
    page = tmp_path / "page.md"
    assert message in _err(capsys, command, "results", str(run), "--out", str(page))
    assert not page.exists()


def test_results_out_must_be_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _err(capsys, "lcnet", "results", str(LCNET_RUN), "--out", str(tmp_path))
    assert "is a folder; name the Markdown file" in err


def test_training_counts_are_checked_by_name() -> None:
    from dyve.mechanisms.d2nn.train import D2NNTrainConfig
    from dyve.mechanisms.lcnet.train import GateTrainConfig
    from dyve.train.trainer import TrainConfig

    with pytest.raises(DyveError, match="--limit-eval must be >= 1, got 0"):
        GateTrainConfig(limit_eval=0)
    with pytest.raises(DyveError, match="--limit-eval must be >= 1, got -5"):
        D2NNTrainConfig(limit_eval=-5)
    with pytest.raises(DyveError, match="--epochs must be >= 1, got 0"):
        D2NNTrainConfig(epochs=0)
    with pytest.raises(DyveError, match="--bag must be >= 1, got 0"):
        D2NNTrainConfig(arch="cascade", bag=0)
    with pytest.raises(DyveError, match="--batch-size must be >= 1, got 0"):
        TrainConfig("caffe_cifar10", batch_size=0)
    with pytest.raises(DyveError, match="--lr must be > 0"):
        GateTrainConfig(lr=0.0)
    with pytest.raises(DyveError, match="enable layer and/or channel"):
        GateTrainConfig(layer=False, channel=False)
    GateTrainConfig(method="aig", layer=False, channel=False)  # AIG has no L-/C-Net


def test_mechanism_settings_are_checked_with_the_config() -> None:
    from dyve.mechanisms.adaptive.evaluate_job import EvalConfig
    from dyve.mechanisms.dyvedeep.job import JobConfig

    with pytest.raises(ValueError, match="sdss_stride must be >= 2, got 0"):
        JobConfig("resnet20_cifar", "cifar10-jpeg", sdss_stride=0)
    with pytest.raises(DyveError, match="batch_size must be >= 1"):
        EvalConfig(run="r", batch_size=0)


def test_a_run_that_cannot_start_leaves_no_folder(
    prepared: Callable[[str], str], tmp_path: Path
) -> None:
    from dyve.mechanisms.lcnet.train import GateTrainConfig, train_gates

    out = tmp_path / "run"
    cfg = GateTrainConfig(model="resnet20_cifar", data=prepared("cifar10-jpeg"), limit_train=64)
    with pytest.raises(DyveError, match="64 training images make no batch of 128"):
        train_gates(cfg, out, progress=False)
    assert not (out / "config.json").exists()  # so the corrected command needs no --resume


def test_resume_of_another_kind_of_run_names_it(tmp_path: Path) -> None:
    from dyve.mechanisms.lcnet.train import ADDED, GateTrainConfig
    from dyve.train.loop import check_run_dir

    run = tmp_path / "d2"
    shutil.copytree(D2NN_RUN, run)
    with pytest.raises(DyveError, match="holds a run made by `dyve d2nn train"):
        check_run_dir(run, asdict(GateTrainConfig()), True, ADDED)


def test_d2nn_positive_class_must_exist(prepared: Callable[[str], str]) -> None:
    from dyve.mechanisms.d2nn.train import D2NNTrainConfig, task_data

    cfg = D2NNTrainConfig(arch="cascade", positive=12, data=prepared("cifar10-jpeg"))
    with pytest.raises(DyveError, match="--positive must name a class, 0 to 9"):
        task_data(cfg, "val")


def test_loading_an_unprepared_dataset_says_so(
    capsys: pytest.CaptureFixture[str], shared_data: Path, tmp_path: Path
) -> None:
    from dyve import data

    images = data.load("cifar10-exact", "test", tmp_path, source=shared_data)
    assert len(images) == 1017
    assert f"not prepared in {tmp_path}" in capsys.readouterr().err
    data.load("cifar10-exact", "test", tmp_path)  # prepared now: quiet
    assert capsys.readouterr().err == ""


def test_options_that_exclude_each_other_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = ("--out", str(tmp_path / "r"))
    err = _err(capsys, "exits", "fit", "--model", "resnet20_cifar", "--exits", "layer1",
               "--every", "2", *out)  # fmt: skip
    assert "give --exits or --every, not both" in err
    assert "--data-dir is for --full" in _err(capsys, "demo", "--data-dir", str(tmp_path), *out)
    assert not (tmp_path / "r").exists()
