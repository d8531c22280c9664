"""Distillation (:mod:`dyve.train.distill`): the loss, the teacher, and ``dyve train
--distill`` end to end (a static network trained with the recipe LC-Net runs use)."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dyve._io import read_json
from dyve.cli.commands import train_config
from dyve.cli.main import build_parser, main
from dyve.errors import DyveError
from dyve.eval.latency import num_threads
from dyve.models import create, model_info
from dyve.train.distill import Teacher, build_teacher, distillation, task_loss
from dyve.train.trainer import TrainConfig, train_command


def test_the_loss_is_hintons_soft_target_loss() -> None:
    z = torch.randn(5, 10)
    assert distillation(z, (z / 4).softmax(1), 4.0).abs() < 1e-6  # its own targets: zero
    t = torch.randn(5, 10)
    kl = (t.softmax(1) * (t.log_softmax(1) - z.log_softmax(1))).sum(1).mean()
    assert torch.allclose(distillation(z, t.softmax(1), 1.0), kl, atol=1e-6)
    assert torch.allclose(
        distillation(z, t.softmax(1), 2.0), 4 * distillation(z / 2, t.softmax(1), 1.0)
    )


def test_task_loss_mixes_cross_entropy_and_distillation() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    x, y, logits = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3]), torch.randn(4, 10)
    cfg = TrainConfig("resnet20_cifar", distill=0.25, temperature=2.0)
    loss, logs = task_loss(cfg, Teacher([net], 2.0, False), logits, x, y)
    ce = torch.nn.functional.cross_entropy(logits, y)
    kd = distillation(logits, (net(x) / 2.0).softmax(1), 2.0)
    assert torch.allclose(loss, 0.75 * ce + 0.25 * kd)
    assert logs == pytest.approx({"ce": ce.item(), "kd": kd.item()})
    alone, logs = task_loss(cfg, None, logits, x, y)  # no teacher: cross-entropy alone
    assert torch.equal(alone, ce)
    assert set(logs) == {"ce"}


def test_a_teacher_of_several_networks_and_mirror_images() -> None:
    # the soft targets: each network's softmax(z / t), averaged over networks and mirrors
    torch.manual_seed(0)
    a, b = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10)) for _ in "ab")
    x = torch.randn(3, 3, 4, 4)
    p = [torch.softmax(n(v) / 2.0, 1) for n in (a, b) for v in (x, x.flip(3))]
    assert torch.allclose(Teacher([a], 2.0, False)(x), p[0])
    assert torch.allclose(Teacher([a, b], 2.0, True)(x), sum(p) / 4)
    assert not torch.allclose(p[0], p[1])  # the mirror image is another view
    # the config names the networks; the default is the shipped student
    cfg = TrainConfig("resnet20_cifar", distill=0.5)
    info, cpu = model_info(create("resnet20_cifar")), torch.device("cpu")
    assert build_teacher(replace(cfg, distill=0.0), cfg.model, info, cpu) is None
    alone = build_teacher(cfg, cfg.model, info, cpu)
    assert alone is not None
    shipped = create("resnet20_cifar", pretrained=True)
    pairs = zip(alone.nets[0].parameters(), shipped.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    two = replace(cfg, teacher="resnet20_cifar, resnet56_cifar", teacher_flip=True)
    teacher = build_teacher(two, cfg.model, info, cpu)
    assert teacher is not None
    assert len(teacher.nets) == 2
    assert teacher.flip
    assert not any(q.requires_grad for n in teacher.nets for q in n.parameters())
    sizes = [sum(q.numel() for q in n.parameters()) for n in teacher.nets]
    assert sizes[1] > 2 * sizes[0]  # resnet56 after resnet20, in the order named
    # a teacher that reads its input otherwise than the student is refused
    other = replace(info, norm=replace(info.norm, std=(1.0, 1.0, 1.0)))
    with pytest.raises(DyveError, match="teacher resnet56_cifar does not read"):
        build_teacher(replace(cfg, teacher="resnet56_cifar"), cfg.model, other, cpu)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distill": 1.5}, r"distill must be in \[0, 1\]"),
        ({"distill": 0.5, "temperature": 0.0}, "temperature > 0"),
        ({"teacher": "resnet56_cifar"}, "set distill"),
        ({"teacher_flip": True}, "set distill"),
    ],
)
def test_settings_no_run_can_use_are_refused(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(DyveError, match=message):
        TrainConfig("resnet20_cifar", **kwargs)


def test_the_train_command_with_distillation_reproduces_the_config() -> None:
    cfg = TrainConfig(
        "resnet20_cifar",
        init="shipped",
        distill=0.5,
        temperature=3.0,
        teacher="resnet56_cifar,vgg16_bn_cifar_w025",
        teacher_flip=True,
    )
    argv = shlex.split(train_command(cfg))
    assert "--teacher-flip" in argv
    assert train_config(build_parser().parse_args(argv[1:])) == cfg


def _cli(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), num_threads(1):
        return main(list(argv))


def test_dyve_train_distils_from_the_named_teacher(
    prepared: Callable[[str], object], tmp_path: Path
) -> None:
    prepared("cifar10-jpeg")
    small = ("--model", "caffe_cifar10", "--epochs", "1", "--batch-size", "32",
             "--limit-train", "64", "--no-progress")  # fmt: skip
    run = tmp_path / "kd"
    assert _cli("train", "--out", str(run), *small, "--distill", "0.5",
                "--teacher", "vgg16_bn_cifar_w025", "--teacher-flip") == 0  # fmt: skip
    saved = read_json(run / "config.json")["config"]
    assert (saved["distill"], saved["teacher"], saved["teacher_flip"]) == (
        0.5, "vgg16_bn_cifar_w025", True)  # fmt: skip
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(h["train_kd"] > 0 for h in history)
    meta = read_json(run / "model.json")
    assert "--teacher vgg16_bn_cifar_w025" in meta["command"]
    # a teacher that is not in the zoo, or one without shipped weights, writes nothing
    for bad in ("nonexistent_net", "vgg16_bn_cifar"):
        out = tmp_path / bad
        assert _cli("train", "--out", str(out), *small, "--distill", "0.5", "--teacher", bad) == 2
        assert not out.exists()
