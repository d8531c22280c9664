"""A calibrated DyVEDeep network as one native call per batch (``fast_program.cpp``).

The per-site fast path calls a kernel from Python once per site; at batch 1 the Python
around each call (the unit, the tails, the ctypes call, the cost columns) costs tens of
microseconds, as much as a small site's whole kernel. A :class:`Program` is the network
lowered once (:mod:`.lower`) and laid out for the native call: per-sample buffers reused
by liveness, one call per batch. The decisions and outputs are those of the per-site path
(tested), and :meth:`Program.run` returns each site's executed statistics, so the cost of
what ran is still known.
"""

from __future__ import annotations

import ctypes
import math
import operator
from collections.abc import Callable
from itertools import chain
from typing import Any, ClassVar

import torch
from torch import fx, nn

from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.lower import KINDS, Lowering, SiteOptions, Unsupported

__all__ = ["Program", "SiteOptions", "Unsupported", "dense_program", "dense_reference"]

_version = operator.attrgetter("_version")
_WINDOW = ("kh", "kw", "sh", "sw", "ph", "pw", "count_include_pad", "slot")
_INTS = ("kind", "a", "b", "out", "c", "h", "w", "oc", "oh", "ow", *_WINDOW)
#: per-op flag settings and their defaults (no flag: the op runs for every sample)
_FLAGGED = ("when", "when2", "fills")
_FLAG_DEFAULTS = {"when": -1, "when2": -1, "fills": 0, "fill": 0.0, "flag": -1, "flag2": -1}


class DyveOp(ctypes.Structure):
    """Mirror of ``struct DyveOp`` in ``fast_program.cpp`` (field order matters)."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        *((name, ctypes.c_int) for name in _INTS),
        ("site", ctypes.POINTER(native.DyveSite)),
        ("gate", ctypes.POINTER(native.DyveGate)),
        ("exit", ctypes.POINTER(native.DyveExit)),
        *((name, ctypes.c_int) for name in _FLAGGED),
        ("fill", ctypes.c_float),
        *((name, ctypes.c_int) for name in ("flag", "flag2")),
        ("index", ctypes.c_void_p),
        ("route", ctypes.POINTER(native.DyveRoute)),
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
        ("group", ctypes.c_int),
        ("nflags", ctypes.c_int),
        ("flag_init", ctypes.c_void_p),
    ]


class Program(Lowering):
    """``model`` lowered and laid out for the native call: a backbone with DyVEDeep's site
    units (``net.backbone``), or a plain one (its layers as sites with every knob off)."""

    #: samples a thread runs op by op together (a site's weights loaded once per group);
    #: 0: as many as keep the group's buffers within about 1 MiB, at most 8
    group: int = 0
    #: True: :meth:`valid` skips the weights (a frozen model, :mod:`dyve.dynamic.frozen`)
    frozen: bool = False

    def __init__(
        self, model: nn.Module, example: torch.Tensor, opts: SiteOptions | None = None
    ) -> None:
        dll = native.kernels()
        if dll is None:
            raise Unsupported("the fast kernels are unavailable")
        self._dll = dll
        super().__init__(model, example, opts or SiteOptions())
        self._struct()
        self._key = self._versions()
        #: the statistics buffers of :meth:`__call__` (flat, for the largest batch so far)
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None
        #: ... viewed for the last batch size (n, stats, changed): a call at the same size
        #: pays no tensor op for them
        self._views: tuple[int, torch.Tensor, torch.Tensor] | None = None

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
        sizes = [math.prod(self.shape), self._ops[-1]["size"]]
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
            if op["gate"] is not None:
                c.gate = ctypes.pointer(op["gate"])
            if op["exit"] is not None:
                c.exit = ctypes.pointer(op["exit"])
            for f, default in _FLAG_DEFAULTS.items():
                setattr(c, f, op.get(f, default))
            if op.get("index") is not None:
                c.index = op["index"].data_ptr()
            if op.get("route") is not None:
                c.route = ctypes.pointer(op["route"])
        self._floats = (ctypes.c_int64 * len(sizes))(*sizes)
        p = self._prog = DyveProgram()
        p.nops, p.nbuf, p.in_buf, p.out_buf = len(self._ops), len(sizes), 0, 1
        p.ops, p.floats = ctypes.addressof(self._cops), ctypes.addressof(self._floats)
        self._flag_init = (ctypes.c_uint8 * max(1, len(self.flag_init)))(*self.flag_init)
        p.nflags, p.flag_init = len(self.flag_init), ctypes.addressof(self._flag_init)
        self._ref = ctypes.byref(p)
        # what the weights were built from: the modules' tensor dicts, their tensors (kept
        # alive, so an id is never reused) and their versions (in-place changes)
        self._dicts: list[dict[str, Any]] = [
            d for m in self._watched for d in (m._parameters, m._buffers) if d
        ]
        self._values = list(chain.from_iterable(map(dict.values, self._dicts)))
        # integer buffers (BN's num_batches_tracked) never reach the eval-mode weights
        self._held = [t for t in self._values if t is not None and t.is_floating_point()]
        self._probe = self._held[0] if self._held else None
        # the knobs as parallel lists, so that valid() compares them without Python loops
        self._knob_objs = [o for o, _, _ in self._knobs]
        self._knob_attrs = [a for _, a, _ in self._knobs]
        self._knob_vals = [v for _, _, v in self._knobs]

    def _versions(self) -> list[int]:
        """Changes when a weight is modified in place."""
        return list(map(_version, self._held))

    def valid(self, x: torch.Tensor) -> bool:
        """True while the network's weights and knobs are those the program was built from.

        Checked on every forward, so each comparison runs in C (``map``) and builds no list
        it can avoid: the input's and the weights' dtype and device, the knobs by identity
        (equal new values are adopted once), the modules' tensors by identity (none
        replaced, added or removed) and the weights by version (none modified in place).
        Right after a program ran these objects are out of the CPU's caches: the check
        then costs about 25 us for VGG-16 and 80 us for ResNet-56 (benchmarks/NOTES.md).
        Not seen: edits through ``.data`` (they bypass version counters) and a submodule
        replaced by another (only the lowered modules' own tensors are watched); rebuild
        the program (a new network, or a knob set) after such surgery. A :attr:`frozen`
        program checks the input, dtype, device and knobs only: its weights are taken as
        constants.
        """
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[1:] != self.shape:
            return False
        w = self._probe  # the network moves as a whole (dtype and device change in place)
        if w is not None and (w.dtype != torch.float32 or w.device.type != "cpu"):
            return False
        knobs = map(getattr, self._knob_objs, self._knob_attrs)
        if not all(map(operator.is_, knobs, self._knob_vals)):
            now = list(map(getattr, self._knob_objs, self._knob_attrs))
            if now != self._knob_vals:  # set again to equal values: still valid
                return False
            self._knob_vals = now
        if self.frozen:
            return True
        values = chain.from_iterable(map(dict.values, self._dicts))
        if sum(map(len, self._dicts)) != len(self._values):
            return False
        return all(map(operator.is_, values, self._values)) and self._versions() == self._key

    def run(
        self, x: torch.Tensor, seconds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, the statistics ``[sites, N, STATS]`` and ``changed`` ``[sites, N]`` of each
        site and gated block (rows named by :attr:`site_names`).

        ``seconds`` (float64, one per op of :attr:`ops`): the time spent in each op is added
        to it; the batch then runs on one thread (a profile; rows named by :attr:`ops`).
        """
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[1:] != self.shape:
            raise ValueError(f"the program takes float32 CPU inputs of shape [N, {self.shape}]")
        if seconds is not None and (
            seconds.dtype != torch.float64 or seconds.numel() != len(self._ops)
        ):
            raise ValueError(f"seconds must be a float64 tensor of {len(self._ops)} values")
        n = x.shape[0]
        rows = len(self.site_names)
        stats = torch.empty(rows, n, len(native.STATS), dtype=torch.float64)
        changed = torch.empty(rows, n, dtype=torch.bool)
        return self._run(x, stats, changed, seconds), stats, changed

    def _run(
        self,
        x: torch.Tensor,
        stats: torch.Tensor,
        changed: torch.Tensor,
        seconds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The native call on a checked input, filling ``stats`` and ``changed``."""
        self._sync()
        x = x.contiguous()
        n = x.shape[0]
        y = torch.empty(n, *self.out_shape)
        p = self._prog
        p.n, p.threads, p.group = n, torch.get_num_threads(), self.group
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
            raise RuntimeError(f"native program failed (code {rc})")
        return y

    def _sync(self) -> None:
        """Update, before each call, what the native structures read from settings that
        may change between calls without a rebuild (a subclass's; none here)."""

    @property
    def ops(self) -> list[dict[str, Any]]:
        """One row per op: ``kind`` (one of :data:`~.lower.KINDS`),
        ``name`` (the module or node), and for sites ``knobs`` (those on, ``+``-joined)."""
        rows = []
        for op in self._ops:
            node = op["node"]
            name = str(node.target) if node.op == "call_module" else node.name
            row = {"kind": KINDS[op["kind"]], "name": name}
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

    def checked(self, x: torch.Tensor) -> torch.Tensor:
        """The logits, after the check ``net(x)`` makes before it runs its kept program: a
        dense reference timed this way pays what the dynamic network pays around its call
        (see :meth:`valid`), so a ratio of the two is the skipped work's alone."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[1:] != self.shape:
            raise ValueError(f"the program takes float32 CPU inputs of shape [N, {self.shape}]")
        if not self.valid(x):
            raise RuntimeError("the network changed since the program was built")
        return self(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits alone: the statistics go to buffers kept for the largest batch so far
        (a forward pays no allocation for them, also when batches shrink, as the samples
        left after an early exit do)."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[1:] != self.shape:
            return self.run(x)[0]  # raises
        n, rows = x.shape[0], len(self.site_names)
        views = self._views
        if views is None or views[0] != n:
            scratch = self._scratch
            if scratch is None or scratch[1].numel() < rows * n:
                scratch = self._scratch = (
                    torch.empty(rows * n * len(native.STATS), dtype=torch.float64),
                    torch.empty(rows * n, dtype=torch.bool),
                )
            stats, changed = scratch
            views = self._views = (
                n,
                stats[: rows * n * len(native.STATS)].view(rows, n, len(native.STATS)),
                changed[: rows * n].view(rows, n),
            )
        return self._run(x, views[1], views[2])


def dense_program(
    model: nn.Module,
    example: torch.Tensor,
    frozen: bool = False,
    kind: Callable[[Any, torch.Tensor], Program] = Program,
) -> Program | None:
    """``model`` as a program with every layer dense (a reference in the native runtime),
    or None when it cannot be lowered or the kernels are unavailable. ``kind`` builds it
    (a D2NN graph's: :class:`~dyve.mechanisms.d2nn.program.GraphProgram`)."""
    try:
        prog = kind(model, example)
    except Unsupported:
        return None
    prog.frozen = frozen
    return prog


def dense_reference(
    model: nn.Module,
    example: torch.Tensor,
    frozen: bool = False,
    kind: Callable[[Any, torch.Tensor], Program] = Program,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """:func:`dense_program` called as a dynamic network calls its own program (checked
    first: :meth:`Program.checked`; weights included unless ``frozen``, as for a frozen
    network), or None: the ``dense_runner`` of the mechanisms that run natively, which a
    bench times as the dense native reference."""
    prog = dense_program(model, example, frozen, kind)
    return None if prog is None else prog.checked
