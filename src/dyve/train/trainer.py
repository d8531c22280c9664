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

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dyve import data as dyve_data
from dyve._io import atomic_save, atomic_write, file_digest, read_json, write_json
from dyve.errors import DyveError
from dyve.eval.evaluate import evaluate
from dyve.models import create, model_info
from dyve.models.weights import save_weights


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (dumped to ``config.json``)."""

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
    device: str = "auto"
    threads: int | None = None
    #: Use only the first N training images (smoke tests); None = the whole train split.
    limit_train: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DyveError("epochs, batch_size and lr must be positive")
        if self.weight_decay < 0 or self.momentum < 0 or self.warmup_epochs < 0:
            raise DyveError("weight_decay, momentum and warmup_epochs must be >= 0")
        if self.nesterov and self.momentum == 0:
            raise DyveError("Nesterov momentum needs momentum > 0 (or pass --no-nesterov)")
        if self.threads is not None and self.threads < 1:
            raise DyveError(f"threads must be >= 1, got {self.threads}")
        if self.limit_train is not None and self.limit_train < 1:
            raise DyveError(f"limit_train must be >= 1, got {self.limit_train}")
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DyveError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DyveError(f"--device {name!r}: no CUDA device is available (use cpu or auto)")
    return device


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base`` to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * t))


def train(
    cfg: TrainConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg.model`` on the train split; return the final metrics.

    Example:
        >>> cfg = TrainConfig("caffe_cifar10", epochs=1, limit_train=512)
        >>> train(cfg, Path("runs/smoke"))  # doctest: +SKIP
    """
    from tqdm import tqdm

    ckpt_path = out / "checkpoint.pt"
    if (out / "config.json").exists() and not resume:
        raise DyveError(
            f"{out} already holds a run; pass --resume to continue it or pick a new --out"
        )
    if resume:
        if not (out / "config.json").exists():
            raise DyveError(f"{out}: no run to resume (config.json missing)")
        saved = read_json(out / "config.json")["config"]
        if saved != asdict(cfg):
            diff = {k: (saved.get(k), v) for k, v in asdict(cfg).items() if saved.get(k) != v}
            raise DyveError(f"--resume with a different config: {diff}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)

    init = cfg.init
    model = create(cfg.model, pretrained=True if init == "shipped" else (init or False))
    info = model_info(model)
    mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=mem)  # type: ignore[call-overload]
    train_set = dyve_data.load_images(
        cfg.data, "train", limit=cfg.limit_train, shape=info.input_size
    )
    val_set = dyve_data.load_images(cfg.data, "val", shape=info.input_size)
    if len(train_set) < cfg.batch_size:
        raise DyveError(
            f"{len(train_set)} training images make no batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
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
    steps_per_epoch = len(train_set) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if not resume:  # written once everything the run needs exists
        write_json(out / "config.json", {"config": asdict(cfg), "command": _command()})
    start_epoch = 0
    if resume and ckpt_path.exists():  # else interrupted before the first checkpoint
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch = int(ck["epoch"]) + 1

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        it = dyve_data.batches(
            train_set,
            cfg.batch_size,
            info.norm,
            shuffle=True,
            augment=cfg.augment,
            seed=cfg.seed * 1000 + epoch,
            drop_last=True,
        )
        bar = tqdm(
            it, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress
        )
        for i, (x, y) in enumerate(bar):
            lr = cosine_lr(epoch * steps_per_epoch + i, total, warmup, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x = x.to(device, memory_format=mem)
            y = y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise DyveError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {i}; lower --lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if i % 20 == 0:
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", lr=f"{lr:.4f}"
                )
        val = evaluate(model, val_set, info.norm, device=device)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_top1": 100.0 * correct / max(seen, 1),
            "val_top1": val.top1,
            "lr_end": lr,
            "seconds": round(time.time() - t0, 1),
        }
        ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
        atomic_save(ckpt_path, partial(_save_torch, ck))
        history = [*_read_history(out)[:epoch], row]
        with atomic_write(out / "history.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in history)
        print(json.dumps(row), file=sys.stderr, flush=True)
    cpu_model = model.to(device="cpu", memory_format=torch.contiguous_format)
    return finalize(cfg, out, cpu_model)


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


def _save_torch(obj: dict[str, Any], path: str) -> None:
    torch.save(obj, path)


def train_command(cfg: TrainConfig, out: str = "RUN_DIR") -> str:
    """A shell-quoted ``dyve train`` command that reproduces ``cfg`` (non-default settings)."""
    default = TrainConfig(cfg.model)
    argv = ["dyve", "train", "--model", cfg.model, "--out", out]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "model" or value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):  # the CLI only has switches that turn a default off
            argv.append(f"--no-{f.name.replace('_', '-')}")
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)


def _read_history(out: Path) -> list[dict[str, Any]]:
    path = out / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _command() -> str:
    """The command line, quoted so that it can be pasted into a shell."""
    argv = ["dyve", *sys.argv[1:]] if Path(sys.argv[0]).name == "dyve" else sys.argv
    return shlex.join(argv)
