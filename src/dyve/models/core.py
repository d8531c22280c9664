"""The model zoo: a registry of builders, each with its metadata, and ``create``.

Every model carries a :class:`ModelInfo` as ``model.dyve_info`` (metadata on the model,
not in the caller's head): input size, normalisation, class count, and the names of its
stem, stages and classifier, which later mechanisms use to find sites.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from dyve.data.loader import Normalization
from dyve.errors import DyveError
from dyve.registry import Registry

#: Normalisation of the akamaster CIFAR ResNets, kept for every CIFAR model in the zoo.
CIFAR_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ModelInfo:
    """What a user or a mechanism needs to know about a zoo model."""

    name: str
    family: str
    description: str
    input_size: tuple[int, int, int]
    num_classes: int
    norm: Normalization
    #: Module names whose outputs end a stage (where an exit head or a gate fits).
    stages: tuple[str, ...]
    classifier: str
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    kwargs: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(info: ModelInfo) -> None:
    """Add a model to the zoo."""
    MODELS.add(info.name, info)


def list_models() -> list[str]:
    """Names of all registered models."""
    return MODELS.names()


def create(
    name: str,
    pretrained: bool | str | os.PathLike[str] = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a zoo model, optionally with weights, in eval mode.

    Args:
        name: a registered name (``dyve zoo list``).
        pretrained: ``False`` for random init; ``True`` for the weights shipped with dyve;
            or a path to a ``.safetensors`` file or a torch checkpoint (``.th``/``.pt``),
            loaded with ``weights_only=True`` and a strict key match.
        **kwargs: architecture overrides (e.g. ``num_classes``).

    Example:
        >>> import dyve
        >>> m = dyve.models.create("resnet20_cifar", pretrained=True)  # doctest: +SKIP
        >>> m.dyve_info.input_size
        (3, 32, 32)
    """
    from dyve.models import weights

    info = MODELS.get(name)
    merged = {**info.kwargs, **{k: v for k, v in kwargs.items() if v is not None}}
    model = info.builder(**merged)
    info = replace(
        info, kwargs=merged, num_classes=int(merged.get("num_classes", info.num_classes))
    )
    model.dyve_info = info  # type: ignore[assignment]
    if pretrained is True:
        path = weights.shipped_path(name)
        if path is None:
            have = ", ".join(weights.shipped_models()) or "none"
            raise DyveError(f"{name}: no weights ship with dyve (models with weights: {have})")
        weights.load_into(model, path)
    elif pretrained:
        weights.load_into(model, Path(pretrained))
    return model.eval()


def model_info(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` attached by :func:`create` (error for foreign models)."""
    info = getattr(model, "dyve_info", None)
    if not isinstance(info, ModelInfo):
        raise DyveError(f"{type(model).__name__} was not built by dyve.models.create")
    return info
