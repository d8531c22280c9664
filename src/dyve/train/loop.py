"""The training loop every dyve trainer shares: schedule, progress, checkpoints, resume, DDP.

A trainer builds its model, optimiser and loss (``step``) and calls :func:`fit`, which runs
the epochs: SGD-style cosine learning rate (each parameter group's ``lr_scale`` multiplies
it), optionally bfloat16 autocast (``Schedule.bf16``: the weights, gradients and optimiser
stay float32; on CPUs with AMX 1.5-1.9x faster, ``benchmarks/train_step.py``), crop/flip
batches seeded from ``(seed, epoch)`` (so no RNG state has to be saved), a progress bar,
``validate`` after each epoch, and an atomic ``checkpoint.pt`` (model, optimiser, epoch;
read back with ``weights_only=True``) plus ``history.jsonl`` (per epoch: the means of the
loss, top-1 and step logs over its images, then ``validate``'s row). With ``resume`` it
continues after the last finished epoch, so a killed run loses at most the epoch in
progress. Under ``torchrun`` (:mod:`dyve.train.dist`) the model is wrapped in DDP, each
process takes its rows of each batch, and only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyve import data as dyve_data
from dyve._io import atomic_save, atomic_write, read_json, write_json
from dyve.errors import DyveError
from dyve.train.dist import Dist
from dyve.train.dist import init as init_dist

#: ``step(model, x, y, progress) -> (loss, logits, logs)``; ``progress`` in [0, 1); ``logs``:
#: floats of this batch, which the history keeps as ``train_<name>``, their epoch mean.
Step = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, float],
    tuple[torch.Tensor, torch.Tensor, dict[str, float]],
]


@dataclass(frozen=True)
class Schedule:
    """How long and how fast a trainer runs."""

    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float = 0.0
    seed: int = 0
    augment: bool = True
    channels_last: bool = True
    #: forward and loss under ``torch.autocast(dtype=torch.bfloat16)``
    bf16: bool = False


def device_for(name: str) -> torch.device:
    """``--device``: ``auto`` (a GPU when present), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DyveError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DyveError(f"--device {name!r}: no CUDA device is available (use cpu or auto)")
    return device


def check_run_dir(
    out: Path, config: dict[str, Any], resume: bool, defaults: dict[str, Any] | None = None
) -> None:
    """Refuse to overwrite a run, or to resume one made with another config. ``defaults``:
    the value a key had before it existed (a run saved without it ran as that default)."""
    if (out / "config.json").exists() and not resume:
        raise DyveError(
            f"{out} already holds a run; pass --resume to continue it or pick a new --out"
        )
    if resume:
        if not (out / "config.json").exists():
            raise DyveError(f"{out}: no run to resume (config.json missing)")
        held = read_json(out / "config.json")
        saved = {**(defaults or {}), **held.get("config", {})}
        only = sorted(set(saved) ^ set(config))
        if only:  # not a setting changed: settings one of them lacks (another kind of run)
            made = held.get("command", "another command")
            names = ", ".join(only[:5]) + (", ..." if len(only) > 5 else "")
            raise DyveError(
                f"{out} holds a run made by `{made}`, with settings that only one of the two "
                f"has ({names}); pick a new --out"
            )
        if saved != config:
            diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
            raise DyveError(f"--resume with a different config: {diff}")


def start(
    out: Path,
    config: dict[str, Any],
    resume: bool,
    threads: int | None,
    device: str,
    batch_size: int,
    seed: int,
    defaults: dict[str, Any] | None = None,
) -> tuple[torch.device, Dist]:
    """What every trainer does first: check the run directory (``defaults``: see
    :func:`check_run_dir`), set threads, pick the device, join the process group (under
    ``torchrun``) and seed."""
    check_run_dir(out, config, resume, defaults)
    if threads:
        torch.set_num_threads(threads)
    dev = device_for(device)
    ddp = init_dist(batch_size)
    torch.manual_seed(seed)
    return dev, ddp


def check_counts(**counts: int | None) -> None:
    """Refuse a setting that counts something and must be >= 1 (None: not set), naming it
    as its command-line option."""
    for name, n in counts.items():
        if n is not None and n < 1:
            raise DyveError(f"--{name.replace('_', '-')} must be >= 1, got {n}")


def check_batch(train_images: int, batch_size: int) -> None:
    """Refuse a training set too small for one batch (the loop drops the last short one)."""
    if train_images < batch_size:
        raise DyveError(
            f"{train_images} training images make no batch of {batch_size}; lower --batch-size"
        )


def write_config(
    out: Path, config: dict[str, Any], resume: bool, ddp: Dist, train_images: int, batch_size: int
) -> None:
    """``config.json`` (the config and the command line), written by rank 0 of a new run,
    once the settings are known to work: a run that cannot start leaves no folder behind
    that a corrected command would have to ``--resume``."""
    check_batch(train_images, batch_size)
    if ddp.main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"config": config, "command": command_line()})
    ddp.barrier()


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base`` to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * t))


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train_set: dyve_data.ImageSet,
    norm: dyve_data.Normalization,
    sched: Schedule,
    out: Path,
    step: Step,
    validate: Callable[[nn.Module, int], dict[str, Any]],
    *,
    device: torch.device,
    dist: Dist,
    resume: bool = False,
    progress: bool = True,
    ddp: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``sched.epochs`` epochs (see module docstring); the history.

    ``ddp=False``: under torchrun, ``step`` gets the bare model and the gradients are
    averaged after each backward (:meth:`Dist.average_gradients`) instead of by DDP.
    """
    from tqdm import tqdm

    check_batch(len(train_set), sched.batch_size)
    mem = torch.channels_last if sched.channels_last else torch.contiguous_format
    ckpt_path = out / "checkpoint.pt"
    start = 0
    if resume and ckpt_path.exists():  # else interrupted before the first checkpoint
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["epoch"]) + 1
    trained = dist.wrap(model, device) if ddp else model
    steps_per_epoch = len(train_set) // sched.batch_size
    total = steps_per_epoch * sched.epochs
    warmup = int(sched.warmup_epochs * steps_per_epoch)
    for g in opt.param_groups:
        g.setdefault("lr_scale", 1.0)
    history = _read_history(out)[:start]
    for epoch in range(start, sched.epochs):
        model.train()
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        it = dyve_data.batches(
            train_set,
            sched.batch_size,
            norm,
            shuffle=True,
            augment=sched.augment,
            seed=sched.seed * 1000 + epoch,
            drop_last=True,
        )
        bar = tqdm(
            it,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{sched.epochs}",
            disable=not (progress and dist.main),
        )
        lr = sched.lr
        logs: dict[str, float] = {}
        log_sums: dict[str, float] = {}  # the step's logs over the epoch's images
        for i, (x, y) in enumerate(bar):
            done = epoch * steps_per_epoch + i
            lr = cosine_lr(done, total, warmup, sched.lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            x, y = dist.shard(x, y)
            x = x.to(device, memory_format=mem)
            y = y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sched.bf16):
                loss, logits, logs = step(trained, x, y, done / total)
            if not torch.isfinite(loss):
                raise DyveError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {i}; lower --lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if not ddp:
                dist.average_gradients(model.parameters())
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + v * len(y)
            if i % 20 == 0:
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}",
                    acc=f"{100 * correct / seen:.1f}",
                    lr=f"{lr:.4f}",
                    **{k: f"{v:.3g}" for k, v in logs.items()},
                )
        if dist.main:
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "train_top1": 100.0 * correct / max(seen, 1),  # rank 0's rows
                "processes": dist.world,
                "images_per_process": seen,
                # the epoch's mean, as train_loss (histories before session 38: last batch)
                **{f"train_{k}": v / max(seen, 1) for k, v in log_sums.items()},
                **validate(model, epoch),
                "lr_end": lr,
                "seconds": round(time.time() - t0, 1),
            }
            ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
            atomic_save(ckpt_path, partial(_save_torch, ck))
            history = [*history[:epoch], row]
            with atomic_write(out / "history.jsonl", "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in history)
            print(json.dumps(row), file=sys.stderr, flush=True)
        dist.barrier()
    return history


def _save_torch(obj: dict[str, Any], path: str) -> None:
    torch.save(obj, path)


def _read_history(out: Path) -> list[dict[str, Any]]:
    path = out / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def command_line() -> str:
    """The command line, quoted so that it can be pasted into a shell."""
    argv = ["dyve", *sys.argv[1:]] if Path(sys.argv[0]).name == "dyve" else sys.argv
    return shlex.join(argv)
