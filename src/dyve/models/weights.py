"""Loading and saving model weights: shipped safetensors, foreign torch checkpoints.

Shipped weights live in ``dyve/models/weights/NAME.safetensors`` with ``NAME.json``
beside them: architecture, data, normalisation, val/test top-1, the exact command that
produced them, and the origin and licence of the starting weights. Torch checkpoints are
read with ``torch.load(weights_only=True)`` only; a ``module.`` prefix (DataParallel) and a
``state_dict`` wrapper are accepted, and keys must match exactly.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyve._io import atomic_save, write_json
from dyve.errors import DataError, DyveError


def weights_dir() -> Path:
    """Folder of the weights shipped inside the package."""
    return Path(str(resources.files("dyve.models") / "weights"))


def shipped_models() -> list[str]:
    """Models that have shipped weights."""
    return sorted(p.stem for p in weights_dir().glob("*.safetensors"))


def shipped_path(name: str) -> Path | None:
    """Path of the shipped weights of ``name``, or None."""
    p = weights_dir() / f"{name}.safetensors"
    return p if p.exists() else None


def shipped_meta(name: str) -> dict[str, Any]:
    """The JSON metadata beside a shipped weight file."""
    p = weights_dir() / f"{name}.json"
    if not p.exists():
        raise DyveError(f"{name}: no shipped weights metadata at {p}")
    return dict(json.loads(p.read_text()))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch checkpoint (weights only)."""
    if not path.exists():
        raise DataError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/pickle raise many types for broken files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"{path}: cannot read weights ({type(exc).__name__}: {first})") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, path: Path) -> None:
    """Load weights into ``model`` with a strict key and shape match."""
    sd = read_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError:
        # torch's message lists every key; name the counts and a few examples instead
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        extra = sorted(set(sd) - set(own))
        shape = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
        parts = [
            f"{len(v)} {what} (e.g. {', '.join(v[:3])})"
            for what, v in (
                ("missing", missing),
                ("unexpected", extra),
                ("of another shape", shape),
            )
            if v
        ]
        name = type(model).__name__
        raise DyveError(f"{path}: weights do not fit {name}: {'; '.join(parts)}") from None


def save_weights(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and its ``.json`` metadata atomically."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save(path, lambda p: save_file(sd, p, metadata={"dyve": json.dumps(meta)}))
    write_json(path.with_suffix(".json"), meta)
