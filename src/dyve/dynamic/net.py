"""The dynamic network: a copy of the backbone whose units mechanisms can gate.

``DynamicNet`` is a drop-in ``nn.Module``: ``forward`` returns logits. ``run`` also returns
a :class:`~dyve.dynamic.trace.Trace` with each unit's per-sample status and each sample's
cost of what ran. The user's model is deep-copied; equipping never changes it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dyve.cost.accumulator import CostMode
from dyve.dynamic.exits import AllLeft, ExitPoint, ExitRun, exit_unit
from dyve.dynamic.frozen import Freezable
from dyve.dynamic.site import SiteUnit, Tail
from dyve.dynamic.taps import Tap
from dyve.dynamic.trace import RAN, DynamicResult, Trace
from dyve.dynamic.unit import RunState, Unit
from dyve.errors import DyveError, UnknownNameError
from dyve.graph.blocks import BlockGraph
from dyve.graph.discover import ExampleInputs, call_model, discover, first_tensor, subtree_macs

if TYPE_CHECKING:
    from dyve.mechanisms.base import Mechanism

BACKENDS = ("emulated", "fast")


class DynamicNet(Freezable):
    """A backbone plus the units, gates and heads that mechanisms attached.

    Example:
        >>> net = dyve.equip(backbone, dyve.mechanisms.BlockSkip(threshold=0.2))  # doctest: +SKIP
        >>> res = net.run(x)
        >>> res.trace.cost.per_sample, res.trace.units["layer1.1"]
    """

    def __init__(
        self,
        backbone: nn.Module,
        graph: BlockGraph | None = None,
        *,
        example_inputs: ExampleInputs | None = None,
        backend: str = "fast",
        backbone_id: str | None = None,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        info = getattr(backbone, "dyve_info", None)
        self.backbone = copy.deepcopy(backbone).eval()
        self.graph = graph if graph is not None else discover(self.backbone, example_inputs)
        self.backbone_id = backbone_id or (info.name if info is not None else None)
        self.backbone_kwargs: dict[str, Any] = dict(info.kwargs) if info is not None else {}
        self.mechanisms: list[Mechanism] = []
        self.units: dict[str, Unit] = {}
        self.sites: dict[str, SiteUnit] = {}
        #: exit points with the exits mechanisms attached (keys: module names, "." -> "__")
        self.exit_points = nn.ModuleDict()
        #: backbone modules whose cost a mechanism charges to the trace itself (D2NN's nodes)
        self.self_charged: list[str] = []
        #: backbone modules that decide rather than compute (D2NN's controllers): trainable
        #: surface of a mechanism, not backbone weights
        self.deciders: list[nn.Module] = []
        self._state = RunState(backend=backend)
        self.eval()  # like the backbone copy; training code calls .train() explicitly

    # ------------------------------------------------------------------ structure
    @property
    def backend(self) -> str:
        """``emulated`` (compute then mask; simulated cost) or ``fast`` (really skip)."""
        return self._state.backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._state.backend = value

    def unit(self, name: str) -> Unit:
        """The unit wrapping module ``name`` (a block of the graph), created on first use."""
        if name in self.units:
            return self.units[name]
        block = self.graph.block(name)  # a block that changes shape always has a shortcut
        nested = [u for u in self.units if u.startswith(name + ".") or name.startswith(u + ".")]
        nested += [s for s in self.sites if s.startswith(name + ".")]
        if nested:
            raise DyveError(f"block {name} nests with the gated {nested[0]}; gate only one")
        inner = [p for p in self._exit_names() if p.startswith(name + ".")]
        if inner:
            raise DyveError(f"block {name} holds the exit point {inner[0]}; gate a smaller one")

        def relative(path: str | None) -> str | None:
            return path[len(name) + 1 :] if path else None

        u = Unit(
            name,
            self.backbone.get_submodule(name),
            self._state,
            macs=block.macs,
            skip_path=relative(block.shortcut),
            skip_macs=block.shortcut_macs,
            skip_act=relative(block.post_act),
        )
        self._swap(name, u)
        self.units[name] = u
        return u

    def site_unit(self, name: str) -> SiteUnit:
        """The unit wrapping site ``name`` (a conv/linear layer), created on first use.

        Its batch norm (a ``BatchNorm``) and activation (a plain ``nn.ReLU``), as discovery
        found them, become tails the unit may fuse; see :mod:`dyve.dynamic.site`.
        """
        if name in self.sites:
            return self.sites[name]
        site = self.graph.site(name)
        inside = [u for u in self.units if name.startswith(u + ".")]
        if inside:
            raise DyveError(f"site {name} lies in the gated block {inside[0]}; gate only one")
        su = SiteUnit(site, self.backbone.get_submodule(name), self._state)
        self._swap(name, su)
        self.sites[name] = su
        bn = self._unwrapped(site.bn) if site.bn else None
        act = self._unwrapped(site.act) if site.act else None
        foldable = isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d) and bn.track_running_stats
        if bn is None or foldable:
            if site.bn is not None:
                self._add_tail(su, "bn", site.bn)
            if site.act is not None and type(act) is nn.ReLU:
                self._add_tail(su, "act", site.act)
        return su

    def exit_point(self, name: str) -> ExitPoint:
        """The exit point at module ``name`` (a block or stage output), created on first use."""
        key = name.replace(".", "__")
        if key in self.exit_points:
            return self.exit_points[key]  # type: ignore[return-value]
        if name not in self.graph.exit_points:
            raise DyveError(f"{name} is not an exit point; exit points: {self.graph.exit_points}")
        outer = [u for u in self.units if name.startswith(u + ".")]
        if outer:
            raise DyveError(f"exit point {name} lies in the gated block {outer[0]}")
        ep = ExitPoint(name)
        self.exit_points[key] = ep
        order = self.graph.exit_points
        ordered = sorted(self._points(), key=lambda p: order.index(p.name))
        # in the order samples reach them
        self.exit_points = nn.ModuleDict({p.name.replace(".", "__"): p for p in ordered})
        return ep

    def _points(self) -> list[ExitPoint]:
        return [p for p in self.exit_points.values() if isinstance(p, ExitPoint)]

    def _exit_names(self) -> list[str]:
        return [p.name for p in self._points()]

    def _add_tail(self, su: SiteUnit, role: str, path: str) -> None:
        current = self.backbone.get_submodule(path)
        if not isinstance(current, Tail):
            current = Tail(current, role)
            self._swap(path, current)
        su.add_tail(role, current)

    def _unwrapped(self, path: str) -> nn.Module:
        m = self.backbone.get_submodule(path)
        return m.module if isinstance(m, Tail) else m

    def _swap(self, name: str, new: nn.Module) -> None:
        parent_name, _, attr = name.rpartition(".")
        parent = self.backbone.get_submodule(parent_name) if parent_name else self.backbone
        setattr(parent, attr, new)

    def attach(self, mechanism: Mechanism) -> DynamicNet:
        """Attach a mechanism (in order; several compose). Returns ``self``."""
        if any(m.name == mechanism.name for m in self.mechanisms):
            raise ValueError(f"mechanism {mechanism.name!r} is already attached")
        mechanism.attach(self)
        self.mechanisms.append(mechanism)
        return self.train(self.training)  # wrappers it added follow the network's mode

    def mechanism(self, name: str) -> Mechanism:
        """An attached mechanism by registry name."""
        for m in self.mechanisms:
            if m.name == name:
                return m
        raise KeyError(
            f"no mechanism {name!r} attached; attached: {[m.name for m in self.mechanisms]}"
        )

    # ------------------------------------------------------------------ knobs
    def knobs(self) -> dict[str, Any]:
        """All knob values as ``{"mechanism.knob": value}``."""
        return {f"{m.name}.{k}": v for m in self.mechanisms for k, v in m.knob_values().items()}

    def resolve_knob(self, knob: str) -> tuple[Mechanism, str]:
        """The mechanism owning ``knob`` and the bare knob name.

        ``knob`` is ``name``, ``mechanism.name`` (as :meth:`knobs` lists them) or
        ``mechanism__name`` (usable as a Python keyword in :meth:`set_knobs`).

        Raises ``KeyError`` naming the known knobs when it matches no or several mechanisms.
        """
        sep = "__" if "__" in knob else "."
        mech_name, _, name = knob.rpartition(sep)
        owners = [
            m
            for m in self.mechanisms
            if (not mech_name or m.name == mech_name) and name in m.knob_values()
        ]
        if len(owners) != 1:
            known = ", ".join(self.knobs()) or "(no mechanism attached)"
            what = "no" if not owners else f"{len(owners)}"
            raise UnknownNameError(f"knob {knob!r} matches {what} mechanisms; known knobs: {known}")
        return owners[0], name

    def set_knobs(self, **values: Any) -> None:
        """Set knobs by ``mechanism__knob=value`` or, when unambiguous, ``knob=value``."""
        for key, value in values.items():
            mech, name = self.resolve_knob(key)
            mech.set_knob(name, value)

    # ------------------------------------------------------------------ execution
    @contextmanager
    def _running(self, trace: Trace | None) -> Iterator[None]:
        st = self._state
        st.trace, st.rows = trace, None  # None: the tensors hold every row of the batch
        try:
            yield
        finally:
            st.trace, st.rows = None, None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The backbone's forward with the gates in effect: a drop-in replacement.

        On the fast back-end, with one mechanism (and no exit, unless it runs its exits),
        the mechanism may run the whole network natively
        (:meth:`~dyve.mechanisms.base.Mechanism.fast_runner`).
        """
        runner = self._runner(args, kwargs)
        if runner is not None:  # first: at batch 1 every microsecond here is a share of it
            return runner(args[0])
        with self._running(None):
            if not self._active_exits():
                return self.backbone(*args, **kwargs)
            if kwargs and args:
                raise DyveError("with exits, call with positional or keyword inputs, not both")
            inputs: ExampleInputs = kwargs if not args else args if len(args) > 1 else args[0]
            return self._call(inputs, None)[0]

    def _runner(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[torch.Tensor], Any] | None:
        """The only mechanism's whole-network runner for this call (fast, eval, no exit
        unless the mechanism runs its exits), or None."""
        if kwargs or len(args) != 1 or self.training or len(self.mechanisms) != 1:
            return None
        x = args[0]
        if self._state.backend != "fast" or not isinstance(x, torch.Tensor):
            return None
        mech = self.mechanisms[0]
        if not mech.runs_exits and len(self.exit_points) and self._active_exits():
            return None
        return mech.fast_runner(self, x)

    def drop_programs(self) -> None:
        """Forget the mechanisms' native programs (rebuilt on the next call)."""
        for mech in self.mechanisms:
            mech.drop_programs()

    def dense_runner(
        self, dense: nn.Module, x: torch.Tensor
    ) -> Callable[[torch.Tensor], Any] | None:
        """``dense`` (this network's backbone without gates) in the runtime ``net(x)`` uses
        on inputs like ``x``, when that is a mechanism's native program; else None (see
        :meth:`~dyve.mechanisms.base.Mechanism.dense_runner`)."""
        if self._runner((x,), {}) is None:
            return None
        return self.mechanisms[0].dense_runner(self, dense, x)

    def _active_exits(self) -> list[ExitPoint]:
        return [p for p in self._points() if len(p.exits)]

    def _call(self, inputs: ExampleInputs, trace: Trace | None) -> tuple[Any, ExitRun | None]:
        """Run the backbone; with active exits, hook them for this call only."""
        points = self._active_exits()
        if not points:
            return call_model(self.backbone, inputs), None
        x = first_tensor(inputs)
        assert x is not None
        run = ExitRun(points, self._state, x.shape[0], fast=self.backend == "fast")
        handles = [
            self.backbone.get_submodule(p.name).register_forward_hook(run.hook(k))
            for k, p in enumerate(points)
        ]
        try:
            try:
                final = call_model(self.backbone, inputs)
            except AllLeft:
                final = None
        finally:
            for h in handles:
                h.remove()
        return run.finish(final, trace), run

    @torch.no_grad()
    def run(self, inputs: ExampleInputs) -> DynamicResult:
        """Logits plus the per-sample trace of what ran and its cost."""
        x = first_tensor(inputs)
        if x is None:
            raise DyveError("run() needs at least one tensor input")
        if tuple(x.shape[1:]) != self.graph.input_shape:
            raise DyveError(
                f"input of shape {list(x.shape[1:])}, but costs were counted for "
                f"{list(self.graph.input_shape)}; equip with example_inputs of this size"
            )
        n = x.shape[0]
        trace = Trace.new(n, self.cost_mode)
        with self._running(trace):
            logits, exits = self._call(inputs, trace)
        # stem, head and every module that is not a unit ran for every sample that got there
        trace.cost.add(self._rest_macs(None))
        if exits is not None:
            none = torch.empty(0, dtype=torch.int64)
            names = [*self.units, *self.sites, *(exit_unit(p.name) for p in exits.points)]
            for name in names:  # the fast back-end never reached them when all had left
                if name not in trace.units:
                    trace.charge(name, none, RAN, 0.0)
            at = exits.state.at
            trace.exit_names = [p.name for p in exits.points]
            trace.exit_at = at
            for k, p in enumerate(exits.points):
                left = (at == k).nonzero().squeeze(1)
                if left.numel():
                    trace.cost.add(self._rest_macs(p.name) - self._rest_macs(None), left)
        return DynamicResult(logits, trace)

    def _rest_macs(self, point: str | None) -> float:
        """MACs outside units and sites, up to exit point ``point`` (None: the whole net)."""
        g = self.graph
        inside = [(u.name, u.macs) for u in self.units.values()]
        inside += [(s.name, s.macs) for s in self.sites.values()]
        inside += [(m, subtree_macs(m, g.module_macs)) for m in self.self_charged]
        if point is None:
            return float(g.total_macs - sum(m for _, m in inside))
        before = sum(m for name, m in inside if g.runs_before(name, point))
        return float(g.macs_through(point) - before)

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of what decides: unit gates and the modules in :attr:`deciders`."""
        for u in self.units.values():
            yield from u.gates.parameters()
        for m in self.deciders:
            yield from m.parameters()

    @property
    def cost_mode(self) -> CostMode:
        """``executed`` when the fast back-end runs and every mechanism really skips in it."""
        fast = self.backend == "fast" and all(m.executes_fast for m in self.mechanisms)
        return "executed" if fast else "simulated"

    def detach(self) -> nn.Module:
        """A plain copy of the backbone: every unit and tail replaced by the module it wraps.

        Gates, taps and heads are dropped; the weights are this network's own, so in eval mode
        the result equals the original backbone bit for bit (the dense baseline of a bench).
        """
        dense = copy.deepcopy(self.backbone)
        wrappers = (Unit, SiteUnit, Tail, Tap)
        units = [
            (name, m)
            for name, m in dense.named_modules(remove_duplicate=False)
            if isinstance(m, wrappers)
        ]
        for name, unit in sorted(units, key=lambda t: t[0].count("."), reverse=True):
            parent_name, _, attr = name.rpartition(".")
            parent = dense.get_submodule(parent_name) if parent_name else dense
            setattr(parent, attr, unit.module)
        for m in dense.modules():  # modules a mechanism bound to the run (D2NN's graph)
            unbind = getattr(m, "dyve_detach", None)
            if unbind is not None:
                unbind()
        return dense.eval()

    @property
    def static_macs(self) -> int:
        """MACs per sample of the dense backbone."""
        return self.graph.total_macs

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the mechanisms added (the backbone's own are not included)."""
        for m in self.mechanisms:
            yield from m.parameters(self)

    def extra_repr(self) -> str:
        mechs = ", ".join(m.name for m in self.mechanisms) or "none"
        return (
            f"backbone={self.backbone_id}, backend={self.backend}, "
            f"mechanisms=[{mechs}], units={len(self.units)}"
        )


def equip(
    backbone: nn.Module,
    mechanisms: Mechanism | Sequence[Mechanism],
    *,
    example_inputs: ExampleInputs | None = None,
    backend: str = "fast",
) -> DynamicNet:
    """Copy ``backbone`` and attach one or several mechanisms in order.

    Example:
        >>> net = equip(dyve.models.create("resnet20_cifar", pretrained=True),
        ...             dyve.mechanisms.BlockSkip(threshold=0.3))  # doctest: +SKIP
    """
    net = DynamicNet(backbone, example_inputs=example_inputs, backend=backend)
    for m in [mechanisms] if not isinstance(mechanisms, Sequence) else mechanisms:
        net.attach(m)
    return net
