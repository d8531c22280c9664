"""Frozen native programs: deployment without the per-call check of the weights.

A model that runs as native programs (:mod:`dyve.mechanisms.dyvedeep.program`: DyVEDeep,
LC-Net, ConvNet-AIG, early exit, a network selection's networks) keeps each
program while it is valid, and checks that on every call: every watched tensor by identity
and version, so that a weight edited in place is never run stale. At batch 1 that check is
a real share of a fast program: it walks every weight tensor, and more slowly when other
work has just evicted them from the caches (``benchmarks/call_overhead.py`` times the
call both ways; ``benchmarks/NOTES.md``, session 20, has the figures).

``model.freeze()`` is the deployment mode, as ``torch.compile(..., freezing=True)`` or
``torch.jit.freeze`` treat weights as constants: programs are built from the weights at
the first call after freezing and then checked only for what is cheap (the input's dtype,
device and shape, the network's dtype and device, the knobs). What a frozen model does not
see: a weight modified in place or a tensor replaced after its program was built. What it
still sees: knob changes (the program is rebuilt), and ``train()``, ``load_state_dict()``
and ``freeze(False)`` drop the programs, so the next call builds them from the current
weights. Freezing is a runtime setting: it is not saved with the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import nn

_M = TypeVar("_M", bound="Freezable")


class Freezable(nn.Module):
    """A model whose native programs can be frozen (see the module docstring)."""

    #: True: programs are not checked against the weights on each call
    frozen: bool = False

    def freeze(self: _M, on: bool = True) -> _M:
        """Freeze (or unfreeze) the model's native programs; returns the model.

        The kept programs are dropped either way, so the next call builds them from the
        weights as they are now.

        Example:
            >>> net = dyve.dynamic.load("runs/lcnet/lcnet_l16_c008").eval()  # doctest: +SKIP
            >>> logits = net.freeze()(x)  # doctest: +SKIP
        """
        self.frozen = bool(on)
        self.drop_programs()
        return self

    def drop_programs(self) -> None:
        """Forget the kept native programs (each is rebuilt on its next call)."""
        raise NotImplementedError

    def train(self: _M, mode: bool = True) -> _M:
        """As :meth:`torch.nn.Module.train`; a frozen model also drops its programs when it
        starts training (training changes the weights they were built from)."""
        super().train(mode)
        if mode and self.frozen:
            self.drop_programs()
        return self

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`, then the programs are dropped (each is
        rebuilt from the new weights on its next call)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.drop_programs()
        return result


@contextmanager
def frozen_while(*models: nn.Module) -> Iterator[None]:
    """Freeze every :class:`Freezable` of ``models`` for the block (timed as deployed),
    then give each its own setting back (which drops the programs built frozen)."""
    was = [(m, m.frozen) for m in models if isinstance(m, Freezable)]
    for m, _ in was:
        m.freeze()
    try:
        yield
    finally:
        for m, on in was:
            m.freeze(on)
