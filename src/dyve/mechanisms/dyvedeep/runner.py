"""The fast runner of mechanisms whose networks lower to one native program (:mod:`.program`).

DyVEDeep, LC-Net and ConvNet-AIG implement :meth:`~dyve.mechanisms.base.Mechanism.fast_runner`
through :class:`NativeRunner`: the program is built on first use, kept while it is valid
(same knobs, weights and input shape; a frozen network's program skips the weights,
:mod:`dyve.dynamic.frozen`) and rebuilt otherwise. A network that cannot be
lowered keeps the per-module path for good, and ``program_unsupported`` says why;
``native_program = False`` keeps it by choice.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dyve.mechanisms.base import Mechanism

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.dyvedeep.program import Program


class NativeRunner(Mechanism):
    """A mechanism that runs the whole network natively (see module docstring)."""

    #: False keeps the per-module path (what the program is compared with in tests)
    native_program: bool = True
    #: why the network could not be lowered (None: it could, or not tried)
    program_unsupported: str | None = None
    _program: Program | None = None

    @abstractmethod
    def lower(self, net: DynamicNet, x: torch.Tensor) -> Program | None:
        """A new program for ``net`` on inputs like ``x``; None when the per-module path
        should run (e.g. every knob off: that path is the backbone bit for bit). Raises
        :class:`~dyve.mechanisms.dyvedeep.lower.Unsupported` when it cannot be lowered."""

    def fast_runner(self, net: DynamicNet, x: torch.Tensor) -> Program | None:
        """The program for this call: the kept one while valid, else a new one (or None)."""
        from dyve.mechanisms.dyvedeep.lower import Unsupported

        prog = self._program
        if prog is not None and self.native_program and prog.valid(x):
            return prog  # the common case first: Program.valid checks all the rest
        if not self.native_program or self.program_unsupported:
            return None
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return None
        if not self.executes_fast or x.dim() < 2:
            return None
        try:
            prog = self._program = self.lower(net, x)
        except Unsupported as exc:
            self.program_unsupported = str(exc)
            self._program = None
            return None
        if prog is not None:
            prog.frozen = net.frozen
        return prog

    def drop_programs(self) -> None:
        self._program = None

    def dense_runner(
        self, net: DynamicNet, dense: nn.Module, x: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``dense`` as a program with every layer's knobs off, when ``net`` runs as one,
        called as ``net(x)`` calls its own (checked first: :meth:`Program.checked`; frozen
        when ``net`` is)."""
        from dyve.mechanisms.dyvedeep.program import dense_reference

        if self.fast_runner(net, x) is None:
            return None
        return dense_reference(dense, x, net.frozen)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles drop the program (native structures holding raw addresses)."""
        return {**self.__dict__, "_program": None}
