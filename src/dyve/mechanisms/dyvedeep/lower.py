"""A network with DyVEDeep lowered to a list of ops on per-sample buffers.

:class:`Lowering` traces the backbone once with :mod:`torch.fx` (site units, tails and the
option-A shortcut as leaves), records each node's per-sample shape on an example, and
turns every node into one op of ``fast_program.cpp`` or an alias:

* every conv/linear layer is a kernel site with its batch norm and ReLU fused (the
  DyVEDeep sites with their knobs, the other layers with every knob off);
* between them: residual add, ReLU, max/average pooling (adaptive where its windows tile
  the map), global average pooling, the option-A shortcut, concatenation of two maps on
  channels (or two vectors); flatten, identity, dropout (eval) and fused tails are aliases;
* a gated block (a :class:`~dyve.dynamic.unit.Unit`), or a module of a subclass's
  :attr:`Lowering.leaves`, is lowered by that subclass (:meth:`Lowering._block`; LC-Net's
  gated blocks in :mod:`dyve.mechanisms.lcnet.program`, early exits' decisions in
  :mod:`dyve.mechanisms.adaptive.native_exits`, D2NN's controllers in
  :mod:`dyve.mechanisms.d2nn.program`).

Anything else raises :class:`Unsupported` (the network keeps the per-site path).
:class:`~dyve.mechanisms.dyvedeep.program.Program` lays the ops out for the native call.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from dyve.dynamic.site import SiteUnit, Tail, fold
from dyve.dynamic.unit import Unit
from dyve.errors import DyveError
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import Geometry, Plan, SiteKnobs, make_plan, pair
from dyve.mechanisms.dyvedeep.mechanism import DyVEDeepOp
from dyve.models.resnet_cifar import ShortcutA

# DYVE_OP_* in the source
SITE, ADD, RELU, MAXPOOL, AVGPOOL, MEAN, SHORTCUT, CONCAT, GATED, EXIT = range(10)
ROUTE, FLAG, SELECT, PERMUTE, ADD_RELU = range(10, 15)
KINDS = (
    *("site", "add", "relu", "maxpool", "avgpool", "mean", "shortcut", "concat", "gated"),
    *("exit", "route", "flag", "select", "permute", "add+relu"),
)

_Bufs = dict[fx.Node, fx.Node]  # node -> the node whose buffer holds its value


class Unsupported(DyveError):
    """The network holds an operation the program cannot run (it keeps the per-site path)."""


@dataclass(frozen=True)
class SiteOptions:
    """How sites are built: SPET's checkpoint (its check terms), SDSS's grid stride and
    SFMA's statistic (DyVEDeep's settings; irrelevant to sites whose knobs are off)."""

    checkpoint: float = 0.5
    sdss_stride: int = 2
    statistic: str = "variance"


class _Leaves(fx.Tracer):
    """Stops at units, site units, tails, the option-A shortcut and ``extra``, besides
    torch.nn's."""

    def __init__(self, extra: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.extra = extra

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf = isinstance(m, (Unit, SiteUnit, Tail, ShortcutA, *self.extra))
        return leaf or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: tuple[type[nn.Module], ...] = ()) -> fx.GraphModule:
    """``model`` as the fx graph the lowering reads (units, site units, tails, the
    option-A shortcut and modules of the ``leaves`` types kept whole); :class:`Unsupported`
    when fx cannot trace it."""
    try:
        return fx.GraphModule(model, _Leaves(leaves).trace(model))
    except Exception as exc:  # data-dependent control flow and the like
        raise Unsupported(f"torch.fx cannot trace the network: {exc}") from None


class _Shapes(fx.Interpreter):
    """Runs the traced graph once and records each node's per-sample output shape."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape[1:])
        return out


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_relu(node: fx.Node | None, modules: dict[str, nn.Module]) -> bool:
    if node is None:
        return False
    if node.op == "call_module":
        return type(modules[str(node.target)]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu) and len(node.args) == 1 and not node.kwargs
    return node.op == "call_method" and node.target == "relu" and len(node.args) == 1


class Lowering:
    """``model`` (a backbone, with or without a mechanism's units) as ops for inputs of
    per-sample shape ``shape`` (see module docstring)."""

    #: module types the tracer keeps whole and :meth:`_block` lowers (a subclass's own)
    leaves: tuple[type[nn.Module], ...] = ()

    def __init__(self, model: nn.Module, example: torch.Tensor, opts: SiteOptions) -> None:
        self.opts = opts
        self.shape = tuple(example.shape[1:])
        gm = trace(model, self.leaves)
        modules = dict(gm.named_modules())
        prop = _Shapes(gm)
        with torch.no_grad():
            prop.run(example[:1])
        self._modules = modules
        self._shapes = prop.shapes
        self._ops: list[dict[str, Any]] = []
        #: the module name of each site and gated block, in the order of the program's
        #: statistics (their ``slot``)
        self.site_names: list[str] = []
        self._watched: list[nn.Module] = []  # whose weights the program folded in
        #: (object, attribute, value): the knobs the program was built with
        self._knobs: list[tuple[Any, str, Any]] = []
        self._native: list[Any] = []  # native structures the ops point to (kept alive)
        #: per-sample flags' initial values (ops may run only where a flag is set; D2NN)
        self.flag_init: list[int] = []
        self._lower(gm.graph)

    def _lower(self, graph: fx.Graph) -> None:
        buf: dict[fx.Node, fx.Node] = {}  # node -> the node whose buffer holds its value
        fused: dict[fx.Node, SiteUnit] = {}  # site units' outputs (through fused tails)
        done: set[fx.Node] = set()
        self._input: fx.Node | None = None
        self._output: fx.Node | None = None
        for node in graph.nodes:
            if node in done:
                continue
            if node.op == "placeholder":
                if self._input is not None:
                    raise Unsupported("the network takes more than one input")
                self._input = buf[node] = node
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, fx.Node) or out not in buf:
                    raise Unsupported("the network's output is not one tensor")
                self._output = buf[out]
                self.out_shape = self._shapes[out]  # the output's shape (after any flatten)
            elif node.op == "get_attr":
                raise Unsupported(f"{node.name}: reads a tensor attribute")
            else:
                self._node(node, buf, fused, done)

    def _node(
        self, node: fx.Node, buf: _Bufs, fused: dict[fx.Node, SiteUnit], done: set[fx.Node]
    ) -> None:
        if node.target is torch.cat:
            self._concat(node, buf)
            return
        args = [a for a in node.args if isinstance(a, fx.Node)]
        src = buf.get(args[0]) if args else None
        if src is None:
            raise Unsupported(f"{node.name}: no tensor input")
        mod = self._modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, Tail) and fused.get(args[0]) in mod.owners:
            buf[node], fused[node] = src, fused[args[0]]  # the site computed it already
        elif isinstance(mod, SiteUnit):
            self._unit(node, args[0], src, mod)
            buf[node], fused[node] = node, mod
        elif isinstance(mod, (Unit, self.leaves)):
            self._block(node, args[0], src, mod)
            buf[node] = node
        elif isinstance(mod, nn.Conv2d | nn.Linear):
            self._plain(node, args[0], src, mod, buf, done)
        elif isinstance(mod, Tail):
            self._module(node, src, mod.module, buf)
        elif mod is not None:
            self._module(node, src, mod, buf)
        elif node.target in (operator.add, torch.add) and len(args) == 2 and not node.kwargs:
            if len(node.args) != 2 or self._shapes[args[0]] != self._shapes[args[1]]:
                raise Unsupported(f"{node.name}: add with broadcasting")
            relu = _sole_user(node)
            if _is_relu(relu, self._modules):  # a residual join: one pass, not two
                assert relu is not None
                self._op(ADD_RELU, relu, src, b=buf[args[1]])
                buf[relu] = relu
                done.add(relu)
            else:
                self._op(ADD, node, src, b=buf[args[1]])
                buf[node] = node
        elif _is_relu(node, self._modules):
            self._op(RELU, node, src)
            buf[node] = node
        elif self._flattens(node):
            buf[node] = src
        elif self._spatial_mean(node):
            self._op(MEAN, node, src)
            buf[node] = node
        else:
            raise Unsupported(
                f"{node.name}: {node.op} {getattr(node.target, '__name__', node.target)}"
            )

    def _concat(self, node: fx.Node, buf: _Bufs) -> None:
        """``torch.cat([a, b], 1)`` of two feature maps or two vectors."""
        parts = node.args[0] if node.args else None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not (isinstance(parts, list | tuple) and len(parts) == 2 and dim == 1):
            raise Unsupported(f"{node.name}: concatenation other than two maps or vectors on dim 1")
        a, b = parts
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and a in buf and b in buf):
            raise Unsupported(f"{node.name}: concatenation of non-tensors")
        sa, sb = self._shapes[a], self._shapes[b]
        if len(sa) != len(sb) or len(sa) not in (1, 3) or sa[1:] != sb[1:]:
            raise Unsupported(f"{node.name}: concatenation of maps of different sizes")
        self._op(CONCAT, node, buf[a], b=buf[b])
        buf[node] = node

    def _flattens(self, node: fx.Node) -> bool:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if node.op == "call_function" and node.target is torch.flatten:
            return bool(start == 1 and len(node.args) <= 2)
        return bool(node.op == "call_method" and node.target == "flatten" and start == 1)

    def _spatial_mean(self, node: fx.Node) -> bool:
        """``x.mean((2, 3))`` / ``torch.mean(x, (-2, -1))`` of a feature map (keepdim or not)."""
        if not (
            (node.op == "call_method" and node.target == "mean")
            or (node.op == "call_function" and node.target is torch.mean)
        ):
            return False
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        arg = node.args[0]
        if not isinstance(arg, fx.Node) or len(self._shapes.get(arg, ())) != 3:
            return False
        if set(node.kwargs) - {"dim", "keepdim"} or len(node.args) > 3:
            return False
        if not isinstance(dims, list | tuple):
            return False
        return {int(d) % 4 for d in dims} == {2, 3} and len(dims) == 2

    def _module(self, node: fx.Node, src: fx.Node, mod: nn.Module, buf: _Bufs) -> None:
        kind: int
        extra: dict[str, int] = {}
        if isinstance(mod, nn.Identity | nn.Dropout) or (
            isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1
        ):
            buf[node] = src
            return
        if type(mod) is nn.ReLU:
            kind = RELU
        elif isinstance(mod, nn.MaxPool2d | nn.AvgPool2d):
            if isinstance(mod, nn.MaxPool2d) and (
                mod.dilation not in (1, (1, 1)) or mod.return_indices
            ):
                raise Unsupported(f"{node.name}: dilated max pooling")
            if isinstance(mod, nn.AvgPool2d) and mod.divisor_override is not None:
                raise Unsupported(f"{node.name}: average pooling with a divisor override")
            kind = MAXPOOL if isinstance(mod, nn.MaxPool2d) else AVGPOOL
            (kh, kw), (sh, sw), (ph, pw) = (
                pair(mod.kernel_size),
                pair(mod.stride or mod.kernel_size),
                pair(mod.padding),
            )
            extra = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw}
            extra["count_include_pad"] = int(getattr(mod, "count_include_pad", True))
            if kind == AVGPOOL and (kh, kw, ph, pw) == (*self._shapes[src][1:], 0, 0):
                kind, extra = MEAN, {}  # one window over the whole map: the vectorised mean
        elif isinstance(mod, nn.AdaptiveAvgPool2d) and pair(mod.output_size) == (1, 1):
            kind = MEAN
        elif isinstance(mod, nn.AdaptiveAvgPool2d) and (win := self._tiling(src, mod)):
            kind = AVGPOOL  # windows that tile the map: plain average pooling
            (kh, kw), extra = win, {"ph": 0, "pw": 0, "count_include_pad": 1}
            extra.update(kh=kh, kw=kw, sh=kh, sw=kw)
        elif isinstance(mod, ShortcutA):
            kind, extra = SHORTCUT, {"sh": 2, "sw": 2, "ph": mod.pad_channels}
        else:
            raise Unsupported(f"{node.name}: {type(mod).__name__}")
        self._op(kind, node, src, params=extra)
        buf[node] = node

    def _tiling(self, src: fx.Node, mod: nn.AdaptiveAvgPool2d) -> tuple[int, int] | None:
        """The window of adaptive average pooling whose windows tile the map (each output
        cell averages an equal, disjoint window), else None."""
        size = mod.output_size if isinstance(mod.output_size, tuple) else (mod.output_size,) * 2
        shape, (oh, ow) = self._shapes[src], size
        if len(shape) != 3 or oh is None or ow is None or shape[1] % oh or shape[2] % ow:
            return None
        return shape[1] // oh, shape[2] // ow

    def _unit(self, node: fx.Node, arg: fx.Node, src: fx.Node, unit: SiteUnit) -> None:
        op = unit.op
        if op is not None and not isinstance(op, DyVEDeepOp):
            raise Unsupported(f"{node.name}: a site of another mechanism")
        if op is not None:
            plan, geom = op.plan(unit), op.geom
            knobs = op.fast_knobs() if op.active() else SiteKnobs()
            self._knobs.append((op, "knobs", op.knobs))
        else:
            plan = make_plan(*unit.folded(), self.opts.checkpoint)
            geom, knobs = Geometry.of(unit.module, unit.name), SiteKnobs()
        self._watched += [unit.module] + [t.module for t in unit.tails.values()]
        self._site(node, arg, src, plan, geom, knobs, relu=unit.relu, out=node)

    def _plain(
        self,
        node: fx.Node,
        arg: fx.Node,
        src: fx.Node,
        layer: nn.Module,
        buf: _Bufs,
        done: set[fx.Node],
    ) -> None:
        """A layer DyVEDeep left alone, fused with a batch norm and a ReLU that follow it."""
        assert isinstance(layer, nn.Conv2d | nn.Linear)
        try:
            geom = Geometry.of(layer, node.name)
        except ValueError as exc:
            raise Unsupported(str(exc)) from None
        chain, bn = [node], None
        nxt = _sole_user(node)
        if nxt is not None and nxt.op == "call_module":
            cand = self._modules[str(nxt.target)]
            if isinstance(cand, nn.BatchNorm2d | nn.BatchNorm1d) and cand.track_running_stats:
                chain.append(nxt)
                bn = cand
        relu = _is_relu(_sole_user(chain[-1]), self._modules)
        if relu:
            chain.append(next(iter(chain[-1].users)))
        plan = make_plan(*fold(layer, bn), self.opts.checkpoint)
        self._watched += [layer] + ([bn] if bn is not None else [])
        self._site(node, arg, src, plan, geom, SiteKnobs(), relu=relu, out=chain[-1])
        for n in chain:
            buf[n] = node
        done.update(chain)

    def _site(
        self,
        node: fx.Node,
        arg: fx.Node,
        src: fx.Node,
        plan: Plan,
        geom: Geometry,
        knobs: SiteKnobs,
        *,
        relu: bool,
        out: fx.Node,
    ) -> None:
        shape = self._shapes[arg]
        if geom.linear:
            shape = (math.prod(shape), 1, 1)
        elif len(shape) != 3:
            raise Unsupported(f"{node.name}: a convolution on per-sample shape {shape}")
        fs = self.fast_site(plan, geom, shape, knobs, relu=relu)
        self._op(SITE, node, src, site=fs, shape=out, params={"slot": len(self.site_names)})
        self.site_names.append(str(node.target))

    def fast_site(
        self, plan: Plan, geom: Geometry, shape: tuple[int, ...], knobs: SiteKnobs, *, relu: bool
    ) -> native.FastSite:
        """A kernel site configured for per-sample input ``shape`` (cin, h, w)."""
        fs = native.FastSite(plan, geom)
        fs.configure(shape, knobs, (relu, self.opts.sdss_stride, self.opts.statistic))
        self._native.append(fs)
        return fs

    def _keep(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``t`` as a contiguous copy of ``dtype`` that the program keeps alive (a native
        structure points to it)."""
        out = t.detach().to(dtype).contiguous().clone()
        self._native.append(out)
        return out

    def _block(self, node: fx.Node, arg: fx.Node, src: fx.Node, unit: nn.Module) -> None:
        """A gated block (a unit) or a module of :attr:`leaves`: lowered by the subclass of
        the mechanism it belongs to."""
        raise Unsupported(f"{node.name}: a gated block")

    def _op(
        self,
        kind: int,
        node: fx.Node,
        src: fx.Node,
        *,
        b: fx.Node | None = None,
        site: native.FastSite | None = None,
        gate: Any = None,
        exit: Any = None,
        shape: fx.Node | None = None,
        params: dict[str, int] | None = None,
    ) -> None:
        """Append an op reading ``src`` (and ``b``); its output has ``shape``'s shape."""
        out = self._shapes[shape or node]
        self._ops.append(
            {"kind": kind, "node": node, "a": src, "b": b, "site": site, "gate": gate,
             "exit": exit,
             **(params or {}),
             "in": _chw(self._shapes[src]), "out": _chw(out), "size": math.prod(out)}
        )  # fmt: skip


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    if len(shape) == 1:
        return shape[0], 1, 1
    raise Unsupported(f"activations of per-sample shape {shape}")
