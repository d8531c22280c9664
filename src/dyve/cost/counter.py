"""An eager cost counter: every aten op that runs, attributed to the module that ran it.

It is a ``TorchDispatchMode`` (it sees the ops that really execute, data-dependent
branches included, unlike a jit trace) plus forward hooks that keep a stack of module
names. Hooks are removed when the counter exits, also when the forward pass raised.

Example:
    >>> with CostCounter(model) as cc:  # doctest: +SKIP
    ...     model(x)
    >>> cc.total_macs, cc.by_module()["layer1.0.conv1"]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dyve.cost.handles import FREE_OPS, get_handle


class _Mode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, record: Callable[[Any, tuple[Any, ...], Any], None]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self._record(func, args, out)
        return out


class CostCounter:
    """Count MACs and other ops of everything run inside the ``with`` block.

    Counts are totals over the batch; divide by the batch size for per-sample figures
    (:func:`dyve.cost.static_cost` does this).
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self.macs: dict[str, int] = defaultdict(int)
        self.other: dict[str, int] = defaultdict(int)
        self.ops: dict[str, int] = defaultdict(int)
        self.unsupported: dict[str, int] = defaultdict(int)
        self.called: set[str] = set()
        #: Module names in the order they were first called, and their first output shape.
        self.order: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._stack: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mode: _Mode | None = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> CostCounter:
        if self.model is not None:
            for name, mod in self.model.named_modules():
                self._handles.append(mod.register_forward_pre_hook(self._push(name)))
                self._handles.append(mod.register_forward_hook(self._pop(name), always_call=True))
        self._mode = _Mode(self._record)
        try:
            self._mode.__enter__()  # type: ignore[no-untyped-call]
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._mode is not None:
                self._mode.__exit__(*exc)  # type: ignore[no-untyped-call]
        finally:
            self._mode = None
            self._remove_hooks()
            self._stack.clear()

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append(name)
            if name not in self.called:
                self.called.add(name)
                self.order.append(name)

        return hook

    def _pop(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
            if isinstance(out, torch.Tensor) and name not in self.shapes:
                self.shapes[name] = tuple(out.shape)

        return hook

    def _record(self, func: Any, args: tuple[Any, ...], out: Any) -> None:
        where = self._stack[-1] if self._stack else ""
        handle = get_handle(func)
        if handle is None:
            if func.overloadpacket not in FREE_OPS:
                self.unsupported[str(func.overloadpacket)] += 1
            return
        macs, other = handle(args, out)
        key = str(func.overloadpacket).removeprefix("aten.")
        self.macs[where] += macs
        self.other[where] += other
        self.ops[key] += macs + other

    # ------------------------------------------------------------------ views
    @property
    def total_macs(self) -> int:
        """MACs of everything that ran (conv + matrix products)."""
        return sum(self.macs.values())

    @property
    def total_other(self) -> int:
        """Other ops (elementwise, normalisation, pooling) of everything that ran."""
        return sum(self.other.values())

    def by_module(self) -> dict[str, int]:
        """MACs per innermost module name ("" for ops outside any module)."""
        return {k: v for k, v in self.macs.items() if v}

    def by_op(self) -> dict[str, int]:
        """MACs plus other ops per aten op name."""
        return dict(self.ops)

    def unsupported_ops(self) -> dict[str, int]:
        """Ops that ran without a cost handle (would be silently uncounted otherwise)."""
        return dict(self.unsupported)

    def uncalled_modules(self) -> list[str]:
        """Modules of the model that never ran inside the block."""
        if self.model is None:
            return []
        return [n for n, _ in self.model.named_modules() if n and n not in self.called]
