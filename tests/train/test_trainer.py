"""Training: a short real run, atomic checkpoints, resume after a crash, config checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dyve.data import ImageSet, Normalization
from dyve.errors import DyveError
from dyve.train import trainer
from dyve.train.dist import Dist
from dyve.train.loop import Schedule, cosine_lr, fit
from dyve.train.trainer import TrainConfig, train


def test_cosine_schedule() -> None:
    assert cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert all(cosine_lr(s, 100, 0, 1.0) >= cosine_lr(s + 1, 100, 0, 1.0) for s in range(99))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(DyveError):
        TrainConfig("caffe_cifar10", epochs=0)
    with pytest.raises(DyveError, match="unknown training settings"):
        TrainConfig.from_dict({"model": "caffe_cifar10", "epohcs": 3})


def test_train_crash_resume_and_outputs(  # type: ignore[no-untyped-def]
    tmp_path: Path, prepared, monkeypatch, crash_second_call
) -> None:
    prepared("cifar10-jpeg")
    cfg = TrainConfig("caffe_cifar10", epochs=2, batch_size=64, lr=0.01, limit_train=256, threads=1)
    out = tmp_path / "run"
    real_evaluate = crash_second_call(trainer, "evaluate")  # end of epoch 2 crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, out, progress=False)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 0
    assert not list(out.glob(".*.tmp")), "a temp file was left behind"
    with pytest.raises(DyveError, match="already holds a run"):
        train(cfg, out, progress=False)
    with pytest.raises(DyveError, match="different config"):
        train(
            TrainConfig(
                "caffe_cifar10", epochs=3, batch_size=64, lr=0.01, limit_train=256, threads=1
            ),
            out,
            resume=True,
            progress=False,
        )

    monkeypatch.setattr(trainer, "evaluate", real_evaluate)
    metrics = train(cfg, out, resume=True, progress=False)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert set(metrics) == {"model", "dataset", "val_top1", "test_top1"}
    meta = json.loads((out / "model.json").read_text())
    assert meta["model"] == "caffe_cifar10"
    assert meta["config"]["epochs"] == 2
    assert meta["test_top1"] == round(metrics["test_top1"], 2)
    from dyve import models

    net = models.create("caffe_cifar10", pretrained=out / "model.safetensors")
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)

    # resumed, not restarted: the same weights and history as a run that never crashed
    # (a restart would redo epoch 1 and train 3 epochs; a lost optimiser state or data
    # order would change epoch 2)
    straight = tmp_path / "straight"
    train(cfg, straight, progress=False)
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in lines] == [h["train_loss"] for h in history]


def test_resume_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(DyveError, match="no run to resume"):
        train(TrainConfig("caffe_cifar10"), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 0.0}, "Nesterov"),
        ({"weight_decay": -1.0}, ">= 0"),
        ({"threads": 0}, "threads"),
        ({"data": "sample"}, "test images"),
    ],
)
def test_config_checks(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(DyveError, match=message):
        TrainConfig("caffe_cifar10", **kwargs)


@pytest.mark.gpu
def test_train_step_on_gpu(tmp_path: Path, prepared) -> None:  # type: ignore[no-untyped-def]
    prepared("cifar10-jpeg")
    cfg = TrainConfig(
        "caffe_cifar10", epochs=1, batch_size=64, lr=0.01, limit_train=128, device="cuda"
    )
    metrics = train(cfg, tmp_path / "gpu", progress=False)
    assert 0 <= metrics["test_top1"] <= 100


def test_train_command_reproduces_the_config() -> None:
    """The command stored with shipped weights parses back into the same config."""
    import shlex

    from dyve.cli.commands import train_config
    from dyve.cli.main import build_parser
    from dyve.train.trainer import train_command

    cfg = TrainConfig(
        "resnet20_cifar",
        init="weights dir/r20.th",
        origin="someone's weights (BSD-2), fine-tuned",
        epochs=7,
        lr=0.02,
        weight_decay=1e-4,
        nesterov=False,
        augment=False,
        channels_last=False,
        bf16=True,
        warmup_epochs=0.5,
        limit_train=1000,
    )
    argv = shlex.split(train_command(cfg, out="runs/x y"))
    assert "--bf16" in argv
    assert argv[:2] == ["dyve", "train"]
    args = build_parser().parse_args(argv[1:])
    assert train_config(args) == cfg
    assert str(args.out) == "runs/x y"


def test_bf16_trains_under_autocast_and_older_runs_still_resume(
    tmp_path: Path, prepared, logit_dtypes: set[torch.dtype]
) -> None:  # type: ignore[no-untyped-def]
    prepared("cifar10-jpeg")
    cfg = TrainConfig("caffe_cifar10", epochs=1, batch_size=64, limit_train=128, threads=1)
    train(replace(cfg, bf16=True), tmp_path / "bf16", progress=False)
    assert logit_dtypes == {torch.bfloat16}
    # a run saved before the option existed (no "bf16" key) resumes as a float32 run
    old = tmp_path / "old"
    train(cfg, old, progress=False)
    saved = json.loads((old / "config.json").read_text())
    del saved["config"]["bf16"]
    (old / "config.json").write_text(json.dumps(saved))
    train(cfg, old, resume=True, progress=False)  # finished: nothing more to train
    with pytest.raises(DyveError, match="different config"):
        train(replace(cfg, bf16=True), old, resume=True, progress=False)


def test_the_history_keeps_the_epoch_mean_of_the_step_logs(tmp_path: Path) -> None:
    """A step's logs vary from batch to batch (an LC-Net's open share, its steered
    pressure); the history keeps their mean over the epoch's images, not the last batch's."""
    images = np.zeros((12, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(12, dtype=np.int64) % 2
    train_set = ImageSet(images, labels, ("a", "b"), "toy", "train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    values = iter([1.0, 2.0, 6.0, 10.0, 20.0, 60.0])  # 3 batches of 4 per epoch

    def step(m, x, y, frac):  # type: ignore[no-untyped-def]
        logits = m(x.float())
        return nn.functional.cross_entropy(logits, y), logits, {"open": next(values)}

    sched = Schedule(2, 4, 0.1, augment=False, channels_last=False)
    history = fit(model, opt, train_set, Normalization((0.5,) * 3, (0.25,) * 3), sched,
                  tmp_path, step, lambda m, e: {}, device=torch.device("cpu"), dist=Dist(),
                  progress=False)  # fmt: skip
    assert [r["train_open"] for r in history] == [pytest.approx(3.0), pytest.approx(30.0)]
