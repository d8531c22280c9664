"""Saving and loading dynamic networks: safetensors weights + a JSON description.

``save(net, folder)`` writes ``dynamic.safetensors`` (every tensor of the network: backbone
and added modules) and ``dynamic.json`` (format version, dyve version, backbone id and its
kwargs, each mechanism's registry name and config, knob values, back-end), each atomically.
``load(folder)`` rebuilds the backbone from the zoo (or takes ``backbone=`` for models
that are not in the zoo), re-attaches the mechanisms from the registry, sets the knobs and
loads the tensors with a strict key and shape match. Nothing is unpickled: a hostile or
mismatched file is refused with a :class:`~dyve.errors.DyveError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyve._io import atomic_save, jsonable, read_json, write_json
from dyve.dynamic.net import BACKENDS, DynamicNet
from dyve.errors import DyveError
from dyve.version import __version__

FORMAT = "dyve.dynamic/1"
WEIGHTS, DESCRIPTION = "dynamic.safetensors", "dynamic.json"
#: ``backbone_weights`` value of a description whose backbone tensors are the zoo's shipped ones
SHIPPED = "shipped"
BACKBONE = "backbone."


def describe(net: DynamicNet) -> dict[str, Any]:
    """The JSON description of ``net`` (what :func:`save` writes)."""
    return {
        "format": FORMAT,
        "dyve_version": __version__,
        "backbone": net.backbone_id,
        "backbone_kwargs": net.backbone_kwargs,
        "backend": net.backend,
        "input_shape": list(net.graph.input_shape),
        "mechanisms": [{"name": m.name, "config": m.config_dict()} for m in net.mechanisms],
        "knobs": {m.name: m.knob_values() for m in net.mechanisms},
    }


def save(net: DynamicNet, folder: str | os.PathLike[str], *, backbone_weights: bool = True) -> Path:
    """Write ``dynamic.safetensors`` and ``dynamic.json`` into ``folder``; return the folder.

    ``backbone_weights=False`` leaves out the backbone's tensors and records that they are
    the zoo model's shipped weights (``load`` takes them from there): a few kB instead of
    the whole network for a mechanism that trains only its own modules on a frozen zoo
    model, such as exit heads. Refused unless the backbone really holds those weights.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    desc = describe(net)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    if not backbone_weights:
        shipped = _build(desc, None, shipped=True).state_dict()
        for k in [k for k in tensors if k.startswith(BACKBONE)]:
            if k not in shipped or not torch.equal(tensors.pop(k), shipped[k]):
                raise DyveError(
                    f"backbone_weights=False: {k} differs from {net.backbone_id}'s shipped "
                    "weights; save the whole network instead"
                )
        desc["backbone_weights"] = SHIPPED
    atomic_save(folder / WEIGHTS, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    write_json(folder / DESCRIPTION, jsonable(desc))
    return folder


def load(
    folder: str | os.PathLike[str], backbone: nn.Module | None = None, *, weights: bool = True
) -> DynamicNet:
    """Rebuild a saved dynamic network (see module docstring).

    ``weights=False`` rebuilds it from its description alone and keeps ``backbone``'s own
    weights (required then): for results that record mechanisms and knobs without tensors,
    such as a training-free mechanism on a pretrained zoo model.

    Example:
        >>> net = dyve.dynamic.load("runs/skip")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not weights and backbone is None:
        raise DyveError("load(weights=False) needs the backbone whose weights to keep")
    where = folder / DESCRIPTION
    if not where.is_file():
        raise DyveError(
            f"{folder}: no saved dynamic network ({DESCRIPTION} is missing): not a folder that "
            "holds one, or a training run that has not kept its network yet"
        )
    desc = _read_description(where)
    shipped = desc.get("backbone_weights") == SHIPPED
    try:
        net = _build(desc, backbone, shipped=shipped and backbone is None)
    except DyveError as exc:
        raise DyveError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise DyveError(f"{where}: cannot rebuild the network it describes: {exc}") from None
    if not weights:
        return net.eval()
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise DyveError(f"{folder / WEIGHTS}: not a readable safetensors file ({exc})") from None
    try:
        missing, unexpected = net.load_state_dict(tensors, strict=not shipped)
    except RuntimeError as exc:
        raise DyveError(
            f"{folder / WEIGHTS}: tensors do not fit the described network: {exc}"
        ) from None
    own = [k for k in missing if not k.startswith(BACKBONE)]
    if own or unexpected:
        raise DyveError(
            f"{folder / WEIGHTS}: tensors do not fit the described network "
            f"(missing {own[:3]}, unexpected {unexpected[:3]})"
        )
    return net.eval()


def _build(desc: dict[str, Any], backbone: nn.Module | None, *, shipped: bool) -> DynamicNet:
    """The network ``desc`` describes, mechanisms attached and knobs set, before tensors."""
    from dyve.mechanisms import MECHANISMS
    from dyve.models import create

    if backbone is None:
        if not desc["backbone"]:
            raise DyveError("the backbone is not a zoo model; pass backbone=")
        backbone = create(desc["backbone"], pretrained=shipped, **desc["backbone_kwargs"])
    example = torch.zeros(1, *desc["input_shape"])
    net = DynamicNet(
        backbone, example_inputs=example, backend=desc["backend"], backbone_id=desc["backbone"]
    )
    for m in desc["mechanisms"]:
        if m["name"] not in MECHANISMS:
            raise DyveError(f"unknown mechanism {m['name']!r}")
        mech = MECHANISMS.get(m["name"]).from_config_dict(m["config"])
        net.attach(mech)
        knobs = desc["knobs"].get(m["name"], {})
        if not isinstance(knobs, dict):
            raise DyveError(f"knobs of {m['name']} must be an object")
        for knob, value in knobs.items():
            mech.set_knob(knob, value)
    return net


def _read_description(path: Path) -> dict[str, Any]:
    desc = read_json(path)
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise DyveError(f"{path}: not a {FORMAT} description")
    checks: dict[str, type | tuple[type, ...]] = {
        "backbone": (str, type(None)),
        "backbone_kwargs": dict,
        "backend": str,
        "mechanisms": list,
        "knobs": dict,
        "input_shape": list,
    }
    for key, typ in checks.items():
        if not isinstance(desc.get(key), typ):
            raise DyveError(f"{path}: field {key!r} missing or of the wrong type")
    if desc["backend"] not in BACKENDS:
        raise DyveError(f"{path}: unknown backend {desc['backend']!r}")
    for m in desc["mechanisms"]:
        if not (
            isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and isinstance(m.get("config"), dict)
        ):
            raise DyveError(f"{path}: each mechanism needs a 'name' and a 'config' object")
    return desc
