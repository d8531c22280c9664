"""Data-parallel training under torchrun (gloo, 2 CPU processes) follows the 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _dyve(args: list[str], cwd: Path, procs: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "dyve.cli.main"]
    if procs > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "dyve.cli.main",
        ]
    proc = subprocess.run(
        [*launch, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_train_the_same_weights_as_one(tmp_path: Path, prepared) -> None:  # type: ignore[no-untyped-def]
    """Each process takes half of every batch; DDP averages gradients: same SGD steps."""
    prepared("cifar10-jpeg")
    common = ["train", "--model", "caffe_cifar10", "--epochs", "1", "--batch-size", "32",
              "--limit-train", "96", "--lr", "0.01", "--threads", "1", "--no-progress"]  # fmt: skip
    _dyve([*common, "--out", str(tmp_path / "one")], tmp_path)
    _dyve([*common, "--out", str(tmp_path / "two")], tmp_path, procs=2)
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), f"{k} differs between 1 and 2 processes"
    # and training moved them (equal untrained weights would pass the check above): the
    # trainer's random initialisation is create() after manual_seed(seed=0)
    from dyve.models import create

    torch.manual_seed(0)
    init = create("caffe_cifar10").state_dict()
    for k in one:
        moved = float((one[k] - init[k]).abs().max())
        apart = float((one[k] - two[k]).abs().max())
        assert moved > 0, f"{k} did not train"
        assert apart <= 1e-3 * moved, f"{k}: 1 vs 2 processes {apart:.2g}, moved {moved:.2g}"
    rows = [json.loads(r) for r in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # written once, by rank 0
    assert (rows[0]["processes"], rows[0]["images_per_process"]) == (2, 48)  # half each


def test_lcnet_trains_under_torchrun(tmp_path: Path, prepared) -> None:  # type: ignore[no-untyped-def]
    prepared("cifar10-jpeg")
    out = tmp_path / "lc"
    _dyve(
        ["lcnet", "train", "--out", str(out), "--model", "resnet20_cifar", "--epochs", "1",
         "--batch-size", "32", "--limit-train", "64", "--limit-eval", "32", "--threads", "1",
         "--no-progress"],
        tmp_path,
        procs=2,
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test-b"
    assert metrics["n"] == 32
    assert (out / "dynamic.safetensors").is_file()


def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyve.errors import DyveError
    from dyve.train import dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DyveError, match="multiple of the 2 processes"):
        dist.init(33)


def test_d2nn_trains_under_torchrun(tmp_path: Path, prepared) -> None:  # type: ignore[no-untyped-def]
    """D2NN's step routes through execute(), not forward: gradients averaged by hand."""
    prepared("cifar10-jpeg")
    out = tmp_path / "d2"
    _dyve(
        ["d2nn", "train", "--arch", "highlow", "--out", str(out), "--route", "learned",
         "--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-eval", "32",
         "--threads", "1", "--no-progress"],
        tmp_path,
        procs=2,
    )  # fmt: skip
    rows = [json.loads(r) for r in (out / "history.jsonl").read_text().splitlines()]
    assert (rows[0]["processes"], rows[0]["images_per_process"]) == (2, 32)
    assert "train_q_loss" in rows[0]
    assert json.loads((out / "metrics.json").read_text())["route"] == "learned"
    assert (out / "dynamic.safetensors").is_file()


def _average_worker(rank: int, store: str, result: str) -> None:
    import torch.distributed as tdist

    from dyve.train.dist import Dist

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.full((2,), 2.0 + 2 * rank)  # both ranks: 2 and 4 -> mean 3
    if rank == 1:
        b.grad = torch.full((2,), 6.0)  # one rank only -> (0 + 6) / 2
    Dist(rank, 2).average_gradients([a, b, c])
    if rank == 0:
        torch.save({"a": a.grad, "b": b.grad, "c": c.grad}, result)
    tdist.destroy_process_group()


def test_average_gradients_matches_one_process_over_the_whole_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    result = tmp_path / "grads.pt"
    mp.spawn(_average_worker, args=(str(tmp_path / "store"), str(result)), nprocs=2)
    grads = torch.load(result, weights_only=True)
    assert torch.equal(grads["a"], torch.full((2,), 3.0))
    assert torch.equal(grads["b"], torch.full((2,), 3.0))
    assert grads["c"] is None  # no process computed it: left alone, as one process would


@pytest.mark.parametrize("job", ["exits", "select"])
def test_adaptive_jobs_shard_their_caches_under_torchrun(
    tmp_path: Path,
    prepared,  # type: ignore[no-untyped-def]
    job: str,
) -> None:
    """Each process computes every other row (91: uneven shards); the gathered cache equals
    one process's."""
    prepared("cifar10-jpeg")
    what = (
        ["exits", "fit", "--model", "resnet20_cifar"]
        if job == "exits"
        else ["select", "fit", "--models", "caffe_cifar10,resnet20_cifar"]
    )
    small = ["--limit", "91", "--latency-images", "2", "--lams", "0,0.1", "--no-progress"]
    _dyve([*what, *small, "--out", str(tmp_path / "one")], tmp_path)
    _dyve([*what, *small, "--out", str(tmp_path / "two")], tmp_path, procs=2)
    caches = sorted((tmp_path / "one" / "cache").glob("*.safetensors"))
    assert caches
    for path in caches:
        one, two = load_file(str(path)), load_file(str(tmp_path / "two" / "cache" / path.name))
        assert one.keys() == two.keys()
        for k in one:
            assert one[k].shape == two[k].shape
            assert torch.allclose(one[k], two[k], atol=1e-4), f"{path.name}:{k}"
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["n"] == m1["n"]
    assert m2["top1"] == pytest.approx(m1["top1"])


def test_eval_shards_the_split_and_equals_one_process(tmp_path: Path) -> None:
    """dyve eval under torchrun: every other image per process, the same run as one."""
    import numpy as np

    args = ["eval", "--model", "caffe_cifar10", "--data", "sample", "--no-progress"]
    _dyve([*args, "--out", str(tmp_path / "one")], tmp_path)
    _dyve([*args, "--out", str(tmp_path / "two")], tmp_path, procs=2)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two == one
    assert one["n"] == 1000
    for name in ("predictions.npy", "correct.npy"):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name))


def test_dyvedeep_calibration_shards_its_evaluations(tmp_path: Path, prepared) -> None:  # type: ignore[no-untyped-def]
    """Every evaluation split over 2 processes: the same search, points and choice as one."""
    prepared("cifar10-jpeg")
    args = ["dyvedeep", "calibrate", "--model", "caffe_cifar10", "--data", "cifar10-jpeg",
            "--budget", "1.0", "--limit", "201", "--test-limit", "201", "--profile-images",
            "32", "--batch-size", "64", "--no-progress"]  # fmt: skip
    _dyve([*args, "--out", str(tmp_path / "one")], tmp_path)
    _dyve([*args, "--out", str(tmp_path / "two")], tmp_path, procs=2)
    one = json.loads((tmp_path / "one" / "calibration.json").read_text())
    two = json.loads((tmp_path / "two" / "calibration.json").read_text())
    assert len(one["trajectory"]) > 10
    assert len(one["evaluations"]) >= 3
    assert two["trajectory"] == one["trajectory"]
    assert two["chosen"] == one["chosen"]
    assert two["dense_predictions"] == one["dense_predictions"]
    assert two["evaluations"].keys() == one["evaluations"].keys()
    for step, e in one["evaluations"].items():
        assert two["evaluations"][step]["top1"] == e["top1"]
        assert (two["evaluations"][step]["worse"], two["evaluations"][step]["better"]) == (
            e["worse"],
            e["better"],
        )
        assert two["evaluations"][step]["macs_mean"] == pytest.approx(e["macs_mean"], rel=1e-9)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (m2["top1"], m2["n"]) == (m1["top1"], m1["n"])
