"""Knowledge distillation from frozen zoo networks, for every trainer that fine-tunes.

A distilled run trains on ``(1 - a) * CE + a * T^2 * KL(p || softmax(logits / T))``
(Hinton et al.), ``p`` being the teacher's soft targets on the same batch. The teacher is
the shipped network of the student's own name, or the shipped networks a config names
(their ``softmax(z / T)`` averaged), optionally each over the batch and its mirror image:
a teacher more accurate than the student, paid for in training only. ``dyve train`` and
``dyve lcnet train`` both take it from here, so a static network and a dynamic one can be
trained with the same recipe and compared.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from dyve.errors import DyveError
from dyve.models import ModelInfo, create, model_info


@dataclass(frozen=True, kw_only=True)
class DistillSettings:
    """The distillation settings a training config inherits (its dataclass fields, keyword
    only), checked when the config is made."""

    #: weight in [0, 1] of distillation (0: cross-entropy alone)
    distill: float = 0.0
    temperature: float = 4.0
    #: distil from these shipped networks (comma-separated; None: the trainer's default)
    teacher: str | None = None
    #: average the teacher over each image and its mirror image
    teacher_flip: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.distill <= 1 or not self.temperature > 0:
            raise DyveError("distill must be in [0, 1] and temperature > 0")
        if (self.teacher or self.teacher_flip) and not self.distill > 0:
            raise DyveError("teacher and teacher_flip choose the distillation teacher: set distill")


#: the distillation keys of a config, with the value of a run made before they existed
DISTILL_ADDED = {f.name: f.default for f in fields(DistillSettings)}


class Teacher:
    """Soft targets at temperature ``t``: ``softmax(z / t)`` of each frozen network's logits
    ``z``, averaged over the networks (and, with ``flip``, over the batch and its mirror)."""

    def __init__(self, nets: list[nn.Module], t: float, flip: bool) -> None:
        self.nets, self.t, self.flip = nets, t, flip

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        views = [x, x.flip(3)] if self.flip else [x]
        probs = [F.softmax(net(v).float() / self.t, 1) for net in self.nets for v in views]
        return torch.stack(probs).mean(0)


def build_teacher(
    cfg: DistillSettings, student: str, info: ModelInfo, device: torch.device
) -> Teacher | None:
    """The frozen teacher of a distilled run (``distill`` > 0; else None): the shipped
    weights of the ``student`` model, or the shipped networks ``cfg.teacher`` names. An
    unknown name, one without weights or one that reads its input otherwise than the
    student (``info``) fails here, so a trainer calls this before it writes any file."""
    if cfg.distill == 0:
        return None
    names = [n.strip() for n in cfg.teacher.split(",")] if cfg.teacher else [student]
    nets = []
    for name in names:
        net = create(name, pretrained=True).to(device).eval()
        theirs = model_info(net)
        if (theirs.input_size, theirs.norm) != (info.input_size, info.norm):
            raise DyveError(f"teacher {name} does not read {student}'s input (size, norm)")
        net.requires_grad_(False)
        nets.append(net)
    return Teacher(nets, cfg.temperature, cfg.teacher_flip)


def distillation(logits: torch.Tensor, soft: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``t^2 * KL(soft || softmax(logits / t))`` over the
    batch, ``soft`` being the teacher's probabilities at temperature ``t`` (the ``t^2``
    keeps its gradients on the cross-entropy's scale)."""
    return F.kl_div(F.log_softmax(logits / t, 1), soft.detach(), reduction="batchmean") * t * t


def task_loss(
    cfg: DistillSettings,
    teach: Teacher | None,
    logits: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The task loss of one batch (cross-entropy, mixed with distillation when ``teach``
    is given) and what the history logs of it (``ce``, and ``kd``)."""
    ce = F.cross_entropy(logits, y)
    if teach is None:
        return ce, {"ce": ce.item()}
    kd = distillation(logits, teach(x), cfg.temperature)
    return (1 - cfg.distill) * ce + cfg.distill * kd, {"ce": ce.item(), "kd": kd.item()}
