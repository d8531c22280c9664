"""Structure discovery: find a model's sites, residual blocks and stages from one eager pass.

Works on any ``nn.Module``: forward hooks on every module record the call order and which
tensor each module consumed and produced, and a dispatch mode sees the additions that a
module performs itself (not inside a child), which is how residual merges are found:

* a **site** is a conv or linear layer, with the BN that consumes its output and the ReLU
  that follows (if they are modules);
* a **block** is a module that adds two tensors of its output's shape at its own level
  (a residual merge). Its *shortcut* is the child that also consumed the block's input
  (none: identity); a block whose output shape differs from its input downsamples;
* a **stage** is a run of blocks under one parent (or the model's declared stages);
* **exit points** are block and stage outputs, where an exit head or a gate fits.

Hooks are removed when the pass ends, also when it raises. Models whose forward takes
something other than one tensor get ``example_inputs`` as a tuple (positional) or a dict
(keywords).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dyve.cost.counter import CostCounter
from dyve.graph.blocks import Block, BlockGraph, Site, Stage

ExampleInputs = torch.Tensor | tuple[Any, ...] | dict[str, Any]
_ADD_OPS = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}


@dataclass
class _Call:
    name: str
    module: nn.Module
    parent: str | None
    inp: torch.Tensor | None
    out: torch.Tensor | None = None
    #: ids of the operands and results of residual merges done at this module's own level
    merge_operands: set[int] = field(default_factory=set)
    merge_outputs: set[int] = field(default_factory=set)
    #: ids of the inputs of every call (a module such as a shared ReLU may run twice)
    inputs_seen: set[int] = field(default_factory=set)
    children_on_input: list[str] = field(default_factory=list)


class _AddWatcher(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, on_add: Callable[[tuple[Any, ...], Any], None]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.on_add = on_add

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func in _ADD_OPS:
            self.on_add(args, out)
        return out


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a tensor, list/tuple or dict of inputs (None if there is none)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, list | tuple):
        for o in obj:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return first_tensor(list(obj.values()))
    return None


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` with a tensor, a tuple of positional args, or a dict of keyword args."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, tuple):
        return model(*example_inputs)
    return model(example_inputs)


@torch.no_grad()
def discover(
    model: nn.Module,
    example_inputs: ExampleInputs | None = None,
    *,
    stages: tuple[str, ...] | None = None,
) -> BlockGraph:
    """Find sites, blocks, stages and exit points of ``model`` from one eager pass.

    Args:
        model: any module (zoo models know their input size and stages).
        example_inputs: a batch (tensor, tuple or dict); default a zero batch of one of
            ``model.dyve_info.input_size``.
        stages: module names that end stages; default the model's declared stages, else
            the parents of consecutive blocks.

    Example:
        >>> g = discover(dyve.models.create("resnet20_cifar"))  # doctest: +SKIP
        >>> [b.name for b in g.blocks][:2]
        ['layer1.0', 'layer1.1']
    """
    info = getattr(model, "dyve_info", None)
    if example_inputs is None:
        if info is None:
            raise ValueError("discover() needs example_inputs for a model not from the zoo")
        p = next(model.parameters(), None)
        example_inputs = torch.zeros(
            1, *info.input_size, device=p.device if p is not None else None
        )
    if stages is None and info is not None:
        stages = tuple(info.stages)
    first = first_tensor(example_inputs)
    n = first.shape[0] if first is not None else 1

    calls: dict[str, _Call] = {}
    order: list[str] = []
    stack: list[str] = []
    keep: list[torch.Tensor] = []  # keep tensors alive so id() stays unique during the pass

    def pre(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inp = first_tensor(args) if args else first_tensor(kwargs)
            if inp is not None:
                keep.append(inp)
            parent = stack[-1] if stack else None
            if name not in calls:
                calls[name] = _Call(name, mod, parent, inp)
                order.append(name)
            if inp is not None:
                calls[name].inputs_seen.add(id(inp))
                if parent is not None and parent in calls:
                    p = calls[parent]
                    if inp is not None and p.inp is not None and inp is p.inp:
                        p.children_on_input.append(name)
            stack.append(name)

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            if stack and stack[-1] == name:
                stack.pop()
            t = first_tensor(out)
            if t is not None and calls[name].out is None:
                keep.append(t)
                calls[name].out = t

        return hook

    def on_add(args: tuple[Any, ...], out: Any) -> None:
        if stack and all(isinstance(a, torch.Tensor) for a in args[:2]):
            a, b = args[0], args[1]
            if a is not b and a.shape == b.shape == out.shape and a.dim() >= 2:
                keep.append(out)
                calls[stack[-1]].merge_operands.update((id(a), id(b)))
                calls[stack[-1]].merge_outputs.add(id(out))

    handles = []
    was_training = model.training
    try:
        for name, mod in model.named_modules():
            if not name:
                continue
            handles.append(mod.register_forward_pre_hook(pre(name), with_kwargs=True))
            handles.append(
                mod.register_forward_hook(post(name), with_kwargs=True, always_call=True)
            )
        model.eval()
        with CostCounter(model) as cc, _AddWatcher(on_add):
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    macs = {k: v // n for k, v in cc.macs.items()}
    return _build(model, example_inputs, order, calls, macs, cc.total_macs // n, stages)


def subtree_macs(name: str, macs: dict[str, int]) -> int:
    """MACs of module ``name`` and everything inside it, from per-module counts."""
    return sum(v for k, v in macs.items() if k == name or k.startswith(name + "."))


def _shape(t: torch.Tensor | None) -> tuple[int, ...]:
    return tuple(t.shape[1:]) if t is not None else ()


def _build(
    model: nn.Module,
    example_inputs: ExampleInputs,
    order: list[str],
    calls: dict[str, _Call],
    macs: dict[str, int],
    total: int,
    declared_stages: tuple[str, ...] | None,
) -> BlockGraph:
    # residual blocks: modules that merged two tensors at their own level
    blocks: list[Block] = []
    for name in order:
        c = calls[name]
        if not c.merge_operands or c.inp is None or c.out is None:
            continue
        # the shortcut: the input itself when it is merged, else the cheapest child that
        # read the block's input and whose output is merged (e.g. option A, conv+BN)
        candidates = [
            ch
            for ch in c.children_on_input
            if calls[ch].out is not None and id(calls[ch].out) in c.merge_operands
        ]
        if id(c.inp) in c.merge_operands:
            shortcut = None
        elif candidates:
            shortcut = min(candidates, key=lambda ch: subtree_macs(ch, macs))
        else:
            continue  # neither a shortcut module nor the input itself is merged: not residual
        if shortcut is not None and isinstance(calls[shortcut].module, nn.Identity):
            shortcut = None
        post_act = next(
            (
                ch
                for ch in order
                if calls[ch].parent == name
                and calls[ch].inputs_seen & c.merge_outputs
                and isinstance(calls[ch].module, nn.ReLU | nn.ReLU6 | nn.Hardtanh)
            ),
            None,
        )
        blocks.append(
            Block(
                name,
                _shape(c.inp),
                _shape(c.out),
                subtree_macs(name, macs),
                (),
                shortcut,
                shortcut_macs=subtree_macs(shortcut, macs) if shortcut else 0,
                post_act=post_act,
            )
        )
    block_names = [b.name for b in blocks]

    def enclosing_block(name: str) -> str | None:
        best = None
        for b in block_names:
            if name.startswith(b + ".") and (best is None or len(b) > len(best)):
                best = b
        return best

    # sites: conv/linear with the BN consuming their output and the ReLU after that
    consumers: dict[int, str] = {}
    for name in order:
        inp = calls[name].inp
        if inp is not None and not any(True for _ in calls[name].module.children()):
            consumers.setdefault(id(inp), name)
    sites: list[Site] = []
    for name in order:
        c = calls[name]
        if not isinstance(c.module, nn.Conv2d | nn.Linear) or c.out is None:
            continue
        nxt = consumers.get(id(c.out))
        bn = act = None
        last: torch.Tensor | None = c.out
        if nxt and isinstance(calls[nxt].module, nn.BatchNorm2d | nn.BatchNorm1d):
            bn, last = nxt, calls[nxt].out
            nxt = consumers.get(id(last)) if last is not None else None
        if nxt and isinstance(calls[nxt].module, nn.ReLU | nn.ReLU6 | nn.Hardtanh):
            act = nxt
        kind = "conv" if isinstance(c.module, nn.Conv2d) else "linear"
        sites.append(
            Site(
                name,
                kind,
                _shape(c.inp),
                _shape(c.out),
                macs.get(name, 0),
                bn,
                act,
                enclosing_block(name),
            )
        )

    # stages: declared, else the parents of consecutive blocks
    stage_names: list[str] = list(declared_stages or [])
    if not stage_names:
        for b in blocks:
            parent = b.name.rsplit(".", 1)[0] if "." in b.name else ""
            if parent and parent not in stage_names and parent in calls:  # not a ModuleDict
                stage_names.append(parent)
    stages = []
    for st in stage_names:
        if st not in calls:
            raise ValueError(f"declared stage {st!r} did not run in the example pass")
        members = tuple(b for b in block_names if b.startswith(st + "."))
        stages.append(Stage(st, members, _shape(calls[st].out)))
    stage_of = {b: st.name for st in stages for b in st.blocks}
    blocks = [
        replace(
            b, sites=tuple(s.name for s in sites if s.block == b.name), stage=stage_of.get(b.name)
        )
        for b in blocks
    ]
    exits = list(dict.fromkeys([*block_names, *stage_names]))
    exits.sort(key=order.index)
    first = first_tensor(example_inputs)
    return BlockGraph(
        type(model).__name__,
        _shape(first),
        total,
        tuple(sites),
        tuple(blocks),
        tuple(stages),
        tuple(exits),
        macs,
        tuple(order),
    )
