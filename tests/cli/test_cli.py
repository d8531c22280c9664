"""The ``dyve`` command line, run in-process: help, listings, cost, eval, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dyve.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("demo", "data", "zoo", "cost", "eval", "train"):
        assert cmd in text


def test_console_script_is_installed() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dyve"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("dyve ")


def test_zoo_list(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "zoo", "list")
    assert rc == 0
    assert "resnet56_cifar" in out
    assert "125.5 M" in out  # ResNet-56 static MACs


def test_cost_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "cost", "--model", "caffe_cifar10")
    assert rc == 0
    assert "MACs = multiply-accumulates" in out
    assert "12,354,176" in out
    rc, out, _ = run(capsys, "cost", "--model", "caffe_cifar10", "--json")
    d = json.loads(out)
    assert d["total_macs"] == 12_354_176
    assert [layer["name"] for layer in d["layers"] if layer["macs"]] == [
        "conv1",
        "conv2",
        "conv3",
        "fc1",
        "fc2",
    ]


def test_unknown_model_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "cost", "--model", "resnet21_cifar")
    assert rc == 2
    assert err.startswith("dyve: error: unknown model 'resnet21_cifar'")
    assert "Traceback" not in err


def test_data_prepare_bad_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(
        capsys,
        "data",
        "prepare",
        "cifar10-jpeg",
        "--source",
        str(tmp_path / "nope"),
        "--data-dir",
        str(tmp_path),
    )
    assert rc == 2
    assert "source path does not exist" in err
    rc, _, err = run(
        capsys,
        "data",
        "prepare",
        "cifar10-jpeg",
        "--source",
        str(tmp_path),
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert rc == 2
    assert "could not find cifar10_jpeg.tar.gz" in err


def test_data_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "data", "list", "--data-dir", str(tmp_path))
    assert rc == 0
    for name in ("cifar10", "cifar10-jpeg", "cifar10-exact", "mnist", "folder:PATH"):
        assert name in out
    assert "prepared " not in out.replace("not prepared", "")


def test_data_prepare_and_eval(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path
) -> None:
    rc, out, _ = run(
        capsys,
        "data",
        "prepare",
        "cifar10-exact",
        "--source",
        str(shared_data),
        "--data-dir",
        str(tmp_path),
    )
    assert rc == 0
    assert "test        1017 images" in out
    weights = shared_data / "weights/akamaster-resnet-cifar10/resnet20-12fca82f.th"
    rc, out, _ = run(
        capsys,
        "eval",
        "--model",
        "resnet20_cifar",
        "--weights",
        str(weights),
        "--data",
        "cifar10-exact",
        "--split",
        "test",
        "--out",
        str(tmp_path / "run"),
        "--data-dir",
        str(tmp_path),
        "--no-progress",
    )
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n"] == 1017
    assert m["top1"] == pytest.approx(91.64, abs=0.01)
    assert json.loads(out)["top1"] == m["top1"]


def test_eval_missing_split_is_clear(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path
) -> None:
    rc, _, err = run(
        capsys,
        "eval",
        "--model",
        "resnet20_cifar",
        "--weights",
        str(shared_data / "weights/akamaster-resnet-cifar10/resnet20-12fca82f.th"),
        "--data",
        "cifar10-exact",
        "--split",
        "val",
        "--data-dir",
        str(tmp_path),
        "--no-progress",
    )
    assert rc == 2
    assert "split 'val' is not available" in err


def test_demo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from dyve import models
    from dyve.demo import DEMO_RUNS

    rc, out, _ = run(capsys, "demo", "--repeats", "3", "--out", str(tmp_path), "--no-progress")
    assert rc == 0
    shipped = models.shipped_models()
    assert shipped, "dyve ships no weights"
    for name in shipped:
        assert name in out
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert {r["model"] for r in result["models"]} == set(shipped)
    assert all(r["latency_ms_b1"] > 0 and r["macs"] > 0 for r in result["models"])
    # every method, each against a dense row of its reference, executed cost, timed
    methods = {r["method"]: r for r in result["methods"]}
    assert [label for label, _ in DEMO_RUNS] == [m for m in methods if not m.startswith("dense")]
    assert {m for m in methods if m.startswith("dense")} == {
        "dense resnet56_cifar",
        "dense (D2NN's weights)",
    }
    for label, _ in DEMO_RUNS:
        r = methods[label]
        assert r["cost_mode"] == "executed"
        assert r["reduction"] > 1.0  # each shipped run really saves work on the sample
        assert r["speedup_b1"] > 0
        assert abs(r["delta_pp"]) < 5.0  # and keeps its accuracy
    assert methods["network selection"]["reference"] == "resnet56_cifar"
    # every method runs as native programs, and is also timed against its reference in
    # that runtime
    from dyve.mechanisms.dyvedeep import native

    natives = {m for m, r in methods.items() if r["speedup_b1_vs_native"] is not None}
    want = {"DyVEDeep", "network selection", "LC-Net", "early exit", "D2NN"}
    want = want if native.available() else set()
    assert natives == want
    assert all(methods[m]["speedup_b1_vs_native"] > 0 for m in natives)
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "report.md").is_file()


def test_discover(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "discover", "--model", "resnet20_cifar")
    assert rc == 0
    assert "9 blocks, 3 stages" in out
    assert "block layer2.0" in out
    assert "shortcut=layer2.0.shortcut" in out
