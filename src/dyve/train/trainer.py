"""Supervised training of zoo models: SGD + cosine schedule, crop/flip, atomic checkpoints, resume.

A training run is a directory:

* ``config.json``  the resolved :class:`TrainConfig` and the command line;
* ``checkpoint.pt`` model and optimiser state after the last finished epoch, written
  atomically (temp file + rename) and read back with ``weights_only=True``; no RNG state
  is needed because every epoch's shuffling and augmentation are seeded from
  ``(seed, epoch)``;
* ``history.jsonl`` one line of metrics per epoch (rewritten atomically each epoch);
* at the end ``model.safetensors`` + ``model.json`` (the shippable weights and their
  metadata) and ``metrics.json`` (final val and test top-1).

``--resume`` continues from ``checkpoint.pt`` at the next epoch with the same config, so
killing a run loses at most the epoch in progress.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from dyve import data as dyve_data
from dyve._io import file_digest, write_json
from dyve.errors import DyveError
from dyve.eval.evaluate import evaluate
from dyve.models import create, model_info
from dyve.models.weights import save_weights
from dyve.train.distill import DISTILL_ADDED, DistillSettings, build_teacher, task_loss
from dyve.train.loop import Schedule, check_counts, fit, start, write_config

#: keys added to the config after runs were made, with the value those runs had
ADDED = {"bf16": False, **DISTILL_ADDED}


@dataclass(frozen=True)
class TrainConfig(DistillSettings):
    """Everything that defines a training run (dumped to ``config.json``); the
    distillation settings come from :class:`~dyve.train.distill.DistillSettings`."""

    model: str
    data: str = "cifar10-jpeg"
    #: Starting weights: a path, ``"shipped"`` for dyve's weights, or None (random init).
    init: str | None = None
    #: Where the starting weights come from and under which licence (goes to model.json).
    origin: str = "random initialisation"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    warmup_epochs: float = 0.0
    augment: bool = True
    seed: int = 0
    channels_last: bool = True
    #: train under bfloat16 autocast (:class:`dyve.train.loop.Schedule`)
    bf16: bool = False
    device: str = "auto"
    threads: int | None = None
    #: Use only the first N training images (smoke tests); None = the whole train split.
    limit_train: int | None = None

    def __post_init__(self) -> None:
        check_counts(
            epochs=self.epochs,
            batch_size=self.batch_size,
            threads=self.threads,
            limit_train=self.limit_train,
        )
        if not self.lr > 0:
            raise DyveError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0 or self.warmup_epochs < 0:
            raise DyveError("weight_decay, momentum and warmup_epochs must be >= 0")
        if self.nesterov and self.momentum == 0:
            raise DyveError("Nesterov momentum needs momentum > 0 (or pass --no-nesterov)")
        super().__post_init__()
        if self.data == "sample":
            raise DyveError(
                "the embedded sample holds test images; train on a dataset's train split"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DyveError(f"unknown training settings: {sorted(unknown)}")
        return cls(**d)


def train(
    cfg: TrainConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg.model`` on the train split; return the final metrics.

    Runs data-parallel under ``torchrun`` (see :mod:`dyve.train.dist`).

    Example:
        >>> cfg = TrainConfig("caffe_cifar10", epochs=1, limit_train=512)
        >>> train(cfg, Path("runs/smoke"))  # doctest: +SKIP
    """
    config = asdict(cfg)
    device, ddp = start(
        out, config, resume, cfg.threads, cfg.device, cfg.batch_size, cfg.seed, ADDED
    )

    init = cfg.init
    model = create(cfg.model, pretrained=True if init == "shipped" else (init or False))
    info = model_info(model)
    teacher = build_teacher(cfg, cfg.model, info, device)  # before any file is written
    mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=mem)  # type: ignore[call-overload]
    train_set = dyve_data.load_images(
        cfg.data, "train", limit=cfg.limit_train, shape=info.input_size
    )
    val_set = dyve_data.load_images(cfg.data, "val", shape=info.input_size)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    write_config(
        out, config, resume, ddp, len(train_set), cfg.batch_size
    )  # once everything the run needs exists

    def step(
        m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, frac: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        logits = m(x)
        loss, logs = task_loss(cfg, teacher, logits, x, y)
        return loss, logits, logs

    def validate(m: torch.nn.Module, epoch: int) -> dict[str, Any]:
        return {"val_top1": evaluate(m, val_set, info.norm, device=device).top1}

    sched = Schedule(
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.warmup_epochs,
        cfg.seed,
        cfg.augment,
        cfg.channels_last,
        cfg.bf16,
    )
    fit(
        model,
        opt,
        train_set,
        info.norm,
        sched,
        out,
        step,
        validate,
        device=device,
        dist=ddp,
        resume=resume,
        progress=progress,
    )
    metrics: dict[str, Any] = {}
    if ddp.main:
        cpu_model = model.to(device="cpu", memory_format=torch.contiguous_format)
        metrics = finalize(cfg, out, cpu_model)
    ddp.close()
    return metrics


def finalize(cfg: TrainConfig, out: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Evaluate on val and test, then write ``model.safetensors``/``.json`` and ``metrics.json``."""
    info = model_info(model)
    val = evaluate(model, dyve_data.load(cfg.data, "val"), info.norm)
    test = evaluate(model, dyve_data.load(cfg.data, "test"), info.norm)
    init_sha = None
    if cfg.init and cfg.init != "shipped" and Path(cfg.init).exists():
        init_sha = file_digest(cfg.init)
    meta = {
        "model": cfg.model,
        "architecture": info.description,
        "kwargs": info.kwargs,
        "data": cfg.data,
        "train_split": "train" + (f" (first {cfg.limit_train} images)" if cfg.limit_train else ""),
        "normalization": {"mean": list(info.norm.mean), "std": list(info.norm.std)},
        "val_top1": round(val.top1, 2),
        "test_top1": round(test.top1, 2),
        "command": train_command(cfg),
        "config": asdict(cfg),
        "init_sha256": init_sha,
        "origin": cfg.origin,
    }
    save_weights(model, out / "model.safetensors", meta)
    metrics = {
        "model": cfg.model,
        "dataset": cfg.data,
        "val_top1": val.top1,
        "test_top1": test.top1,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def train_command(cfg: TrainConfig, out: str = "RUN_DIR") -> str:
    """A shell-quoted ``dyve train`` command that reproduces ``cfg`` (non-default settings)."""
    default = TrainConfig(cfg.model)
    argv = ["dyve", "train", "--model", cfg.model, "--out", out]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "model" or value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):  # a switch: --bf16 turns on, the others turn a default off
            argv.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)
