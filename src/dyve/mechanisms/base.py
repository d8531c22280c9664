"""The interface every method implements, and the registry of mechanisms.

A mechanism is constructed from a frozen config (*what and where*), attaches gates, heads
or controllers to a :class:`~dyve.dynamic.net.DynamicNet` (``attach``), exposes its knobs
(``knob_values``/``set_knob``, with the value that switches it off), and names its
trainable parameters (``parameters``). Everything else (discovery, units, back-ends,
trace, cost, saving, sweeps, bench) is the shared core's.

To add one::

    @dataclass(frozen=True)
    class MyConfig:
        threshold: float = 0.0

    class MyMechanism(Mechanism):
        name = "mine"
        config_class = MyConfig
        knob_names = ("threshold",)
        def attach(self, net): ...     # net.unit(block).add_gate(self.name, MyGate(...))
        def set_knob(self, knob, value): ...

    MECHANISMS.add("mine", MyMechanism)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from dyve.errors import UnknownNameError
from dyve.registry import Registry

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet


class Mechanism(ABC):
    """Base class of dynamic-inference methods (see module docstring)."""

    #: Registry name (also the key of its gates on each unit).
    name: ClassVar[str]
    #: Frozen dataclass holding the mechanism's settings; knobs are some of its fields.
    config_class: ClassVar[type]
    #: Config fields that are knobs (changeable after attach, swept by ``dyve sweep``).
    knob_names: ClassVar[tuple[str, ...]] = ()
    #: True when the fast back-end's executed cost equals the emulated (simulated) one;
    #: False when executing costs extra work the emulation does not count (DyVEDeep's
    #: kernels recompute check terms), so the contract asserts executed >= simulated.
    fast_cost_exact: ClassVar[bool] = True
    #: True when a sample's executed cost in a batch is its cost alone; False when the fast
    #: back-end runs more for a batch (LC-Net's per-block path computes the union of the
    #: batch's kept channels), so reports measure such a network one sample at a time.
    batch_cost_exact: ClassVar[bool] = True
    #: Knobs the fast back-end does not apply because they cannot pay there and do not
    #: change outputs (DyVEDeep's lossless ``spet_exact``): fast runs them as off.
    fast_ignores: ClassVar[tuple[str, ...]] = ()
    #: True when :meth:`fast_runner` also runs the network's active exits (early exit's
    #: segmented programs); otherwise a network with an active exit runs per module.
    runs_exits: ClassVar[bool] = False

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs:
            config = replace(config, **kwargs)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name}: config must be {self.config_class.__name__}")
        self.config: Any = config

    @property
    def executes_fast(self) -> bool:
        """True when the ``fast`` back-end really skips this mechanism's work; False when it
        still computes and masks, so that costs are reported as ``simulated`` there too."""
        return True

    def fast_runner(self, net: DynamicNet, x: torch.Tensor) -> Callable[[torch.Tensor], Any] | None:
        """A callable that runs all of ``net`` on inputs like ``x`` natively, or None.

        ``DynamicNet.forward`` on the fast back-end uses it when this is the only mechanism,
        no exit is active (unless :attr:`runs_exits`) and no trace is kept, to skip the
        per-unit Python; it must return what the per-unit path returns, up to float
        rounding (native programs fold batch norms). Default: None (DyVEDeep lowers the
        network to one native program; early exit, with its heads and policies).
        """
        return None

    def drop_programs(self) -> None:
        """Forget what :meth:`fast_runner` keeps (native programs), so that its next call
        builds them from the current weights (``DynamicNet.freeze``, ``train``,
        ``load_state_dict``). Default: nothing is kept."""
        return None

    def dense_runner(
        self, net: DynamicNet, dense: nn.Module, x: torch.Tensor
    ) -> Callable[[torch.Tensor], Any] | None:
        """``dense`` (``net``'s backbone without the mechanism) in the runtime that
        :meth:`fast_runner` uses for ``net`` on inputs like ``x``, or None when ``net`` runs
        per module. A bench times it so that a speedup's share owed to the runtime itself
        (rather than to the skipped work) is stated. Default: None."""
        return None

    @abstractmethod
    def attach(self, net: DynamicNet) -> None:
        """Add this mechanism's gates/heads to ``net`` (called once by ``net.attach``)."""

    @abstractmethod
    def set_knob(self, knob: str, value: Any) -> None:
        """Change one knob on the attached modules (and in ``self.config``)."""

    def knob_values(self) -> dict[str, Any]:
        """Current knob values."""
        return {k: getattr(self.config, k) for k in self.knob_names}

    def off_knobs(self) -> dict[str, Any]:
        """Knob values that make the mechanism a no-op (the identity contract)."""
        return {f.name: f.default for f in fields(self.config) if f.name in self.knob_names}

    def parameters(self, net: DynamicNet) -> Iterator[nn.Parameter]:
        """Trainable parameters this mechanism added to ``net`` (default: its gates')."""
        for unit in net.units.values():
            if self.name in unit.gates:
                yield from unit.gates[self.name].parameters()

    def config_dict(self) -> dict[str, Any]:
        """JSON-ready config (tuples become lists)."""
        return asdict(self.config)

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> Mechanism:
        """Rebuild from :meth:`config_dict` output, refusing unknown keys."""
        known = {f.name for f in fields(cls.config_class)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.name}: unknown config keys {sorted(unknown)}")
        conv = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(cls.config_class(**conv))

    def _check_knob(self, knob: str) -> None:
        if knob not in self.knob_names:
            raise UnknownNameError(f"{self.name} has no knob {knob!r}; knobs: {self.knob_names}")


MECHANISMS: Registry[type[Mechanism]] = Registry("mechanism")
