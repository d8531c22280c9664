"""A calibrated DyVEDeep network as one native call per batch (``fast_program.cpp``).

The per-site fast path calls a kernel from Python once per site; at batch 1 the Python
around each call (the unit, the tails, the ctypes call, the cost columns) costs tens of
microseconds, as much as a small site's whole kernel. :class:`Program` lowers the network
once to a list of ops on per-sample buffers and runs it in one call:

* every conv/linear layer is a kernel site with its batch norm and ReLU fused (the
  DyVEDeep sites with their knobs, the other layers with every knob off);
* between them: residual add, ReLU, max/average pooling, global average pooling, the
  option-A shortcut, concatenation of two maps on channels; flatten, identity, dropout
  (eval) and fused tails are aliases.

The network is traced with :mod:`torch.fx`; anything else makes :func:`lower` raise
:class:`Unsupported`, and the network keeps the per-site path. The decisions and outputs
are those of the per-site path (tested), and :meth:`Program.run` returns each site's
executed statistics, so the cost of what ran is still known.
"""

from __future__ import annotations

import ctypes
import operator
from itertools import chain
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from dyve.dynamic.site import SiteUnit, Tail, fold
from dyve.errors import DyveError
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import Geometry, Plan, SiteKnobs, make_plan, pair
from dyve.mechanisms.dyvedeep.mechanism import DyVEDeepOp
from dyve.models.resnet_cifar import ShortcutA

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.dyvedeep.mechanism import DyVEDeep

SITE, ADD, RELU, MAXPOOL, AVGPOOL, MEAN, SHORTCUT, CONCAT = range(8)  # DYVE_OP_* in the source
_version = operator.attrgetter("_version")
_WINDOW = ("kh", "kw", "sh", "sw", "ph", "pw", "count_include_pad", "slot")
_INTS = ("kind", "a", "b", "out", "c", "h", "w", "oc", "oh", "ow", *_WINDOW)


class DyveOp(ctypes.Structure):
    """Mirror of ``struct DyveOp`` in ``fast_program.cpp`` (field order matters)."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        *((name, ctypes.c_int) for name in _INTS),
        ("site", ctypes.POINTER(native.DyveSite)),
    ]


class DyveProgram(ctypes.Structure):
    """Mirror of ``struct DyveProgram`` in ``fast_program.cpp``."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        *((name, ctypes.c_int) for name in ("n", "nops", "nbuf", "threads")),
        ("ops", ctypes.c_void_p),
        ("floats", ctypes.c_void_p),
        ("in_buf", ctypes.c_int),
        ("out_buf", ctypes.c_int),
        *((name, ctypes.c_void_p) for name in ("x", "y", "stats", "changed", "seconds")),
    ]


_Bufs = dict[fx.Node, fx.Node]  # node -> the node whose buffer holds its value


class Unsupported(DyveError):
    """The network holds an operation the program cannot run (it keeps the per-site path)."""


class _Leaves(fx.Tracer):
    """Stops at site units, tails and the option-A shortcut, besides torch.nn's modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SiteUnit | Tail | ShortcutA) or super().is_leaf_module(m, qualname)


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


class Program:
    """``net`` (with DyVEDeep attached) lowered for inputs of per-sample shape ``shape``."""

    def __init__(self, net: DynamicNet, mech: DyVEDeep, example: torch.Tensor) -> None:
        dll = native.kernels()
        if dll is None:
            raise Unsupported("the fast kernels are unavailable")
        self._dll = dll
        self.mech = mech
        self.shape = tuple(example.shape[1:])
        try:
            gm = fx.GraphModule(net.backbone, _Leaves().trace(net.backbone))
        except Exception as exc:  # data-dependent control flow and the like
            raise Unsupported(f"torch.fx cannot trace the network: {exc}") from None
        modules = dict(gm.named_modules())
        prop = _Shapes(gm)
        with torch.no_grad():
            prop.run(example[:1])
        self._modules = modules
        self._shapes = prop.shapes
        self._ops: list[dict[str, Any]] = []
        self._sites: list[native.FastSite] = []
        #: the module name of each site, in the order of run()'s statistics
        self.site_names: list[str] = []
        self._watched: list[nn.Module] = []  # whose weights the program folded in
        self._knobs: list[tuple[Any, SiteKnobs]] = []  # (op, knobs) of the DyVEDeep sites
        self._lower(gm.graph)
        self._struct()
        self._key = self._state()

    # ------------------------------------------------------------------ lowering
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
        elif isinstance(mod, nn.Conv2d | nn.Linear):
            self._plain(node, args[0], src, mod, buf, done)
        elif isinstance(mod, Tail):
            self._module(node, src, mod.module, buf)
        elif mod is not None:
            self._module(node, src, mod, buf)
        elif node.target in (operator.add, torch.add) and len(args) == 2 and not node.kwargs:
            if len(node.args) != 2 or self._shapes[args[0]] != self._shapes[args[1]]:
                raise Unsupported(f"{node.name}: add with broadcasting")
            self._op(ADD, node, src, b=buf[args[1]])
            buf[node] = node
        elif _is_relu(node, self._modules):
            self._op(RELU, node, src)
            buf[node] = node
        elif self._flattens(node):
            buf[node] = src
        else:
            raise Unsupported(
                f"{node.name}: {node.op} {getattr(node.target, '__name__', node.target)}"
            )

    def _concat(self, node: fx.Node, buf: _Bufs) -> None:
        """``torch.cat([a, b], 1)`` of two feature maps."""
        parts = node.args[0] if node.args else None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not (isinstance(parts, list | tuple) and len(parts) == 2 and dim == 1):
            raise Unsupported(f"{node.name}: concatenation other than two maps on channels")
        a, b = parts
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and a in buf and b in buf):
            raise Unsupported(f"{node.name}: concatenation of non-tensors")
        if len(self._shapes[a]) != 3 or self._shapes[a][1:] != self._shapes[b][1:]:
            raise Unsupported(f"{node.name}: concatenation of maps of different sizes")
        self._op(CONCAT, node, buf[a], b=buf[b])
        buf[node] = node

    def _flattens(self, node: fx.Node) -> bool:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        if node.op == "call_function" and node.target is torch.flatten:
            return bool(start == 1 and len(node.args) <= 2)
        return bool(node.op == "call_method" and node.target == "flatten" and start == 1)

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
        elif isinstance(mod, nn.AdaptiveAvgPool2d) and pair(mod.output_size) == (1, 1):
            kind = MEAN
        elif isinstance(mod, ShortcutA):
            kind, extra = SHORTCUT, {"sh": 2, "sw": 2, "ph": mod.pad_channels}
        else:
            raise Unsupported(f"{node.name}: {type(mod).__name__}")
        self._op(kind, node, src, params=extra)
        buf[node] = node

    def _unit(self, node: fx.Node, arg: fx.Node, src: fx.Node, unit: SiteUnit) -> None:
        op = unit.op
        if op is not None and not isinstance(op, DyVEDeepOp):
            raise Unsupported(f"{node.name}: a site of another mechanism")
        if op is not None:
            plan, geom = op.plan(unit), op.geom
            knobs = op.fast_knobs() if op.active() else SiteKnobs()
            self._knobs.append((op, op.knobs))
        else:
            plan = make_plan(*unit.folded(), self.mech.config.checkpoint)
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
        plan = make_plan(*fold(layer, bn), self.mech.config.checkpoint)
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
            shape = (_numel(shape), 1, 1)
        elif len(shape) != 3:
            raise Unsupported(f"{node.name}: a convolution on per-sample shape {shape}")
        cfg = self.mech.config
        fs = native.FastSite(plan, geom)
        fs.configure(shape, knobs, (relu, cfg.sdss_stride, cfg.sfma_statistic))
        self._op(SITE, node, src, site=fs, shape=out, params={"slot": len(self._sites)})
        self._sites.append(fs)
        self.site_names.append(str(node.target))

    def _op(
        self,
        kind: int,
        node: fx.Node,
        src: fx.Node,
        *,
        b: fx.Node | None = None,
        site: native.FastSite | None = None,
        shape: fx.Node | None = None,
        params: dict[str, int] | None = None,
    ) -> None:
        """Append an op reading ``src`` (and ``b``); its output has ``shape``'s shape."""
        out = self._shapes[shape or node]
        self._ops.append(
            {"kind": kind, "node": node, "a": src, "b": b, "site": site, **(params or {}),
             "in": _chw(self._shapes[src]), "out": _chw(out), "size": _numel(out)}
        )  # fmt: skip

    # ------------------------------------------------------------------ buffers and the call
    def _struct(self) -> None:
        """Per-sample buffers by liveness (a dead op output's buffer is reused)."""
        assert self._input is not None
        assert self._output is not None
        if self._output is self._input:
            raise Unsupported("the network returns its input")
        last: dict[fx.Node, int] = {}
        for k, op in enumerate(self._ops):
            for v in (op["a"], op["b"]):
                if v is not None:
                    last[v] = k
        ids: dict[fx.Node, int] = {self._input: 0, self._output: 1}
        sizes = [_numel(self.shape), self._ops[-1]["size"]]
        free: list[int] = []
        for k, op in enumerate(self._ops):
            node = op["node"]
            if node is not self._output:
                if free:
                    ids[node] = free.pop()
                    sizes[ids[node]] = max(sizes[ids[node]], op["size"])
                else:
                    ids[node] = len(sizes)
                    sizes.append(op["size"])
            for v in {op["a"], op["b"]} - {None, self._input, self._output}:
                if last.get(v) == k:
                    free.append(ids[v])
        if self._ops[-1]["node"] is not self._output:
            raise Unsupported("the network's output is not its last operation")
        self._cops = (DyveOp * len(self._ops))()
        for c, op in zip(self._cops, self._ops, strict=True):
            c.kind, c.a, c.out = op["kind"], ids[op["a"]], ids[op["node"]]
            c.b = ids[op["b"]] if op["b"] is not None else -1
            (c.c, c.h, c.w), (c.oc, c.oh, c.ow) = op["in"], op["out"]
            for f in _WINDOW:
                setattr(c, f, op.get(f, 0))
            if op["site"] is not None:
                c.site = ctypes.pointer(op["site"].site)
        self._floats = (ctypes.c_int64 * len(sizes))(*sizes)
        p = self._prog = DyveProgram()
        p.nops, p.nbuf, p.in_buf, p.out_buf = len(self._ops), len(sizes), 0, 1
        p.ops, p.floats = ctypes.addressof(self._cops), ctypes.addressof(self._floats)
        self._ref = ctypes.byref(p)
        # what the weights were built from: the modules' tensor dicts, their tensors (kept
        # alive, so an id is never reused) and their versions (in-place changes)
        self._dicts = [d for m in self._watched for d in (m._parameters, m._buffers) if d]
        self._held = [t for d in self._dicts for t in d.values() if t is not None]

    def _identity(self) -> tuple[int, ...]:
        return tuple(map(id, chain.from_iterable(d.values() for d in self._dicts)))

    def _state(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Changes when a tensor is replaced (ids) or modified in place (versions)."""
        return self._identity(), tuple(map(_version, self._held))

    def valid(self, x: torch.Tensor) -> bool:
        """True while the network's weights and knobs are those the program was built from."""
        return (
            tuple(x.shape[1:]) == self.shape
            and all(op.knobs is k for op, k in self._knobs)
            and self._state() == self._key
        )

    def run(
        self, x: torch.Tensor, seconds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, each site's statistics ``[sites, N, STATS]`` and ``changed`` ``[sites, N]``.

        ``seconds`` (float64, one per op of :attr:`ops`): the time spent in each op is added
        to it; the batch then runs on one thread (a profile; rows named by :attr:`ops`).
        """
        if x.dtype != torch.float32 or x.device.type != "cpu" or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the program takes float32 CPU inputs of shape [N, {self.shape}]")
        if seconds is not None and (
            seconds.dtype != torch.float64 or seconds.numel() != len(self._ops)
        ):
            raise ValueError(f"seconds must be a float64 tensor of {len(self._ops)} values")
        x = x.contiguous()
        n = x.shape[0]
        y = torch.empty(n, *self.out_shape)
        stats = torch.empty(len(self._sites), n, len(native.STATS), dtype=torch.float64)
        changed = torch.empty(len(self._sites), n, dtype=torch.bool)
        p = self._prog
        p.n, p.threads = n, torch.get_num_threads()
        p.x, p.y, p.stats, p.changed = (
            x.data_ptr(),
            y.data_ptr(),
            stats.data_ptr(),
            changed.data_ptr(),
        )
        p.seconds = None if seconds is None else seconds.data_ptr()
        rc = self._dll.dyve_program(self._ref)
        p.x = p.y = p.stats = p.changed = p.seconds = None
        if rc != 0:
            raise RuntimeError(f"dyvedeep program failed (code {rc})")
        return y, stats, changed

    @property
    def ops(self) -> list[dict[str, Any]]:
        """One row per op: ``kind`` (site, add, relu, maxpool, avgpool, mean, shortcut),
        ``name`` (the module or node), and for sites ``knobs`` (those on, ``+``-joined)."""
        kinds = ("site", "add", "relu", "maxpool", "avgpool", "mean", "shortcut", "concat")
        rows = []
        for op in self._ops:
            row = {"kind": kinds[op["kind"]], "name": str(op["node"].target)}
            if op["site"] is not None:
                k = op["site"].knobs
                on = [
                    n
                    for n, v in (("spet", k.spet), ("sdss", k.sdss), ("sfma", k.sfma))
                    if v is not None
                ]
                row["knobs"] = "+".join(on) or "off"
            rows.append(row)
        return rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    if len(shape) == 1:
        return shape[0], 1, 1
    raise Unsupported(f"activations of per-sample shape {shape}")
