"""``dyve sweep`` end to end, in-process: the run directory, the saved net, one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import dyve.dynamic
from dyve.cli.main import main
from dyve.cli.sweep_cmd import parse_values
from dyve.cost import CONVENTION
from dyve.data import batches, load_sample
from dyve.eval.curve import TradeoffCurve
from dyve.eval.latency import num_threads
from dyve.mechanisms import BlockSkip
from dyve.models import CIFAR_NORM, create

FILES = ("config.json", "curve.json", "curve.png", "curve.svg", "metrics.json")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # small CPU batches: two threads are much slower when another job holds the cores
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init ResNet-20 weights (no shipped weights or network needed)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "r20.safetensors"
    sd = create("resnet20_cifar").state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def base_argv(weights: Path, out: Path) -> list[str]:
    return [
        "sweep",
        "--model",
        "resnet20_cifar",
        "--weights",
        str(weights),
        "--mechanism",
        "block_skip",
        "--data",
        "sample",
        "--limit",
        "64",
        "--out",
        str(out),
        "--latency-repeats",
        "1",
        "--batch-size",
        "32",
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def run_dir(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "sweep"
    argv = [*base_argv(weights, out), "--knob", "threshold", "--values", "0.4,0.7,1.0,1.5"]
    argv += ["--set", "threshold=0.05", "--budget", "100"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(argv)
    assert rc == 0
    return out, printed.getvalue()


def test_sweep_writes_every_file(run_dir: tuple[Path, str]) -> None:
    out, printed = run_dir
    for name in (*FILES, "dynamic.json", "dynamic.safetensors"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    assert (out / "curve.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (out / "curve.svg").read_text()
    assert "cost mode: executed" in printed
    assert "operating point" in printed

    config = json.loads((out / "config.json").read_text())
    assert config["command"].startswith("dyve sweep --model resnet20_cifar")
    assert "--values=0.4,0.7,1.0,1.5" in config["command"]
    assert config["values"] == [0.4, 0.7, 1.0, 1.5]
    assert config["knob_key"] == "block_skip.threshold"
    assert config["mechanism_config"]["threshold"] == 0.05
    assert config["n"] == 64


def test_metrics_hold_the_operating_point(run_dir: tuple[Path, str]) -> None:
    out, _ = run_dir
    curve = TradeoffCurve.from_json(out / "curve.json")
    assert len(curve.points) == 5
    assert curve.n == 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cost_convention"] == CONVENTION
    assert metrics["cost_mode"] == "executed"
    assert metrics["budget_pp"] == 100
    # a 100-point budget accepts every point: the operating point is the cheapest one
    op = metrics["operating_point"]
    assert op["value"] == 1.5
    assert op["macs_mean"] == min(p.macs_mean for p in curve.points)
    assert metrics["reference"]["reference"] is True
    assert metrics["reference"]["macs_mean"] == curve.static_macs
    assert [p["value"] for p in metrics["pareto"]] == [p.value for p in curve.pareto()]
    assert op == json.loads(json.dumps(curve.operating_point(100).__dict__))


def test_saved_net_matches_a_fresh_one_at_the_operating_point(
    run_dir: tuple[Path, str], weights: Path
) -> None:
    out, _ = run_dir
    loaded = dyve.dynamic.load(out)
    assert loaded.knobs() == {"block_skip.threshold": 1.5, "block_skip.always": ()}
    fresh = dyve.dynamic.equip(create("resnet20_cifar", pretrained=weights), BlockSkip())
    fresh.set_knobs(threshold=1.5)
    x, _ = next(batches(load_sample().subset(slice(0, 64)), 64, CIFAR_NORM))
    a, b = loaded.run(x), fresh.run(x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.macs, b.macs)
    assert a.macs.mean() < loaded.static_macs  # the operating point really skips


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--knob", "speed", "--values", "1"], "knob 'speed' matches no mechanisms"),
        (["--knob", "threshold", "--values", "0.1,abc"], 'threshold="abc" is not valid'),
        (
            ["--knob", "threshold", "--values", "0.1", "--set", "colour=1"],
            "block_skip has no config key 'colour'",
        ),
        (
            ["--knob", "threshold", "--values", "0.1", "--mechanism", "nope"],
            "unknown mechanism 'nope'",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    rc = main([*base_argv(weights, tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("dyve: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_parse_values() -> None:
    assert parse_values("0.2,0.5,1") == [0.2, 0.5, 1]
    assert parse_values('[],["layer1.0"]') == [[], ["layer1.0"]]
    assert parse_values("a,b") == ["a", "b"]
