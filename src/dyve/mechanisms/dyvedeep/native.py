"""DyVEDeep's fast back-end: the C++ kernels (:data:`SOURCES`), built on first use.

The kernels are compiled with the system C++ compiler (``$CXX``, else ``g++``/``c++``)
for the host CPU (``-march=native``; without it if that fails; ``$DYVE_MARCH``, e.g.
``x86-64-v3``, builds for that target instead, such as AVX2 code on an AVX-512 machine:
a target this CPU cannot run stops the process with an illegal instruction), into
``$DYVE_KERNELS`` (default ``~/.cache/dyve/kernels``), keyed by a hash of the source, the
flags, the compiler and the CPU, and loaded with :mod:`ctypes` (no torch headers, so a
build takes seconds). Building writes to a temporary file and renames it, so concurrent
processes and interrupted builds never load a half-written library.

Without a compiler, or when the build or the load fails, :func:`kernels` returns ``None``
and dyve says so once (a :class:`RuntimeWarning` naming the reason); DyVEDeep then runs the
emulated computation on every back-end and labels its costs ``simulated``.
``DYVE_NO_NATIVE=1`` forces that fallback.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import torch

from dyve.dynamic.site import SiteResult
from dyve.mechanisms.dyvedeep.kernel import STATISTICS, Geometry, Plan, SiteKnobs

#: compiled as one translation unit, in this order (the program runs the site kernels)
SOURCES = (
    "fast_kernel.cpp",
    "fast_dense.cpp",
    "fast_neurons.cpp",
    "fast_gated.cpp",
    "fast_exit.cpp",
    "fast_route.cpp",
    "fast_program.cpp",
)
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno"]
#: Columns of the kernel's per-sample statistics (``DYVE_NSTAT`` in the source).
STATS = (
    "macs",
    "scalar_ops",
    "overhead",
    "stopped",
    "interpolated",
    "channels_approximated",
    "recomputed",
    "checked",
    "wasted",
)
#: The source's ``dyve_abi()``: the layout of its structures and of the statistics.
ABI = 10
_ptr = ctypes.c_void_p
_INTS = ("n", "cin", "h", "w", "cout", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "ho", "wo")


class DyveSite(ctypes.Structure):
    """Mirror of ``struct DyveSite`` in the source (field order matters)."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        *((name, ctypes.c_int) for name in _INTS),
        *((name, _ptr) for name in ("x", "weight", "bias", "wsum", "top_ci", "top_tap")),
        *((name, _ptr) for name in ("top_w", "wr_full")),
        ("m", ctypes.c_int),
        ("use_spet", ctypes.c_int),
        ("spet", ctypes.c_float),
        ("use_sdss", ctypes.c_int),
        ("sdss", ctypes.c_float),
        ("sdss_stride", ctypes.c_int),
        ("use_sfma", ctypes.c_int),
        ("sfma", ctypes.c_float),
        ("statistic", ctypes.c_int),
        ("relu", ctypes.c_int),
        ("threads", ctypes.c_int),
        ("out", _ptr),
        ("stats", _ptr),
        ("changed", _ptr),
        ("top_off", _ptr),
        ("top_rel", _ptr),
        ("top_count", _ptr),
        ("weight_t", _ptr),
    ]


class DyveGate(ctypes.Structure):
    """Mirror of ``struct DyveGate`` in ``fast_gated.cpp``: a gated (LC-Net, AIG) block."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        *((name, ctypes.c_int) for name in ("kind", "cin", "cmid", "layer", "channel")),
        ("eps", ctypes.c_float),
        ("wl", _ptr),
        ("bl", ctypes.c_float),
        ("wc", _ptr),
        ("bc", _ptr),
        *((name, ctypes.POINTER(DyveSite)) for name in ("conv1", "conv2", "proj")),
        *((name, ctypes.c_int) for name in ("shortcut", "pad", "post_relu", "hidden")),
        *((name, _ptr) for name in ("w1", "b1", "w2", "b2")),
        ("threshold", ctypes.c_float),
    ]


class DyveExit(ctypes.Structure):
    """Mirror of ``struct DyveExit`` in ``fast_exit.cpp``: an early exit's policy."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        *((name, ctypes.c_int) for name in ("classes", "policy", "features", "dim", "forced")),
        ("threshold", ctypes.c_double),
        ("bias", ctypes.c_double),
        *((name, _ptr) for name in ("weight", "mean", "std")),
    ]


class DyveRoute(ctypes.Structure):
    """Mirror of ``struct DyveRoute`` in ``fast_route.cpp``: a D2NN controller's decision."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("actions", ctypes.c_int),
        ("fixed", ctypes.c_int),
        ("pen", _ptr),
        ("ntargets", ctypes.c_int),
        ("flags", _ptr),
        ("masks", _ptr),
    ]


def cache_dir() -> Path:
    """Where built kernels are kept: ``$DYVE_KERNELS``, else ``~/.cache/dyve/kernels``."""
    return Path(os.environ.get("DYVE_KERNELS") or "~/.cache/dyve/kernels").expanduser()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
        model = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
        return model + flags
    except OSError:
        return platform.processor() + platform.machine()


def _build(
    cxx: str, src: str, out: Path, archs: Sequence[list[str]] = (["-march=native"], [])
) -> str | None:
    """Compile ``src`` into ``out`` with the first of ``archs`` (target and OpenMP options)
    that builds; the error text, or None on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in archs:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        with tempfile.NamedTemporaryFile("w", suffix=".cpp", delete=False) as f:
            f.write(src)
        try:
            proc = subprocess.run(
                [cxx, *FLAGS, *arch, f.name, "-o", tmp], capture_output=True, text=True
            )
            if proc.returncode == 0:
                os.replace(tmp, out)
                return None
            errors.append(proc.stderr.strip().splitlines()[-1:] or ["(no message)"])
        finally:
            os.unlink(f.name)
            if os.path.exists(tmp):
                os.unlink(tmp)
    return f"{cxx} failed: {errors[-1][0][:300]}"


@lru_cache(maxsize=1)
def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with one warning saying why) when unavailable."""
    reason = _load_reason()
    if isinstance(reason, ctypes.CDLL):
        return reason
    warnings.warn(
        f"dyve: DyVEDeep's fast C++ kernels are unavailable ({reason}); DyVEDeep runs its "
        "emulated computation on every back-end and reports simulated costs",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def _load_reason() -> ctypes.CDLL | str:
    if os.environ.get("DYVE_NO_NATIVE"):
        return "DYVE_NO_NATIVE is set"
    cxx = _compiler()
    if cxx is None:
        return "no C++ compiler found; install g++ or set CXX"
    pkg = resources.files("dyve.mechanisms.dyvedeep")
    src = "\n".join(pkg.joinpath(name).read_text() for name in SOURCES)
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    march = os.environ.get("DYVE_MARCH")  # e.g. x86-64-v3: build for AVX2 on any x86 CPU
    archs = ([f"-march={march}"],) if march else (["-march=native"], [])
    # with OpenMP where the compiler has it (threads on the process's OpenMP pool, see
    # split() in fast_kernel.cpp), else with threads of its own
    archs = tuple([*a, "-fopenmp"] for a in archs) + archs
    key = hashlib.sha256("\0".join([src, " ".join(FLAGS), str(archs), version, _cpu()]).encode())
    lib = cache_dir() / f"dyvedeep-{key.hexdigest()[:16]}.so"
    if not lib.exists():
        err = _build(cxx, src, lib, archs)
        if err is not None:
            return err
    return bind(lib)


def bind(lib: Path) -> ctypes.CDLL | str:
    """The built library at ``lib``, loaded with its entry points typed; or why it cannot be
    used (it does not load, or was built from sources of another ABI)."""
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as exc:
        return f"cannot load {lib}: {exc}"
    dll.dyve_site.argtypes = [ctypes.POINTER(DyveSite)]
    dll.dyve_site.restype = ctypes.c_int
    dll.dyve_program.argtypes = [ctypes.c_void_p]
    dll.dyve_program.restype = ctypes.c_int
    dll.dyve_prepare.argtypes = [ctypes.POINTER(DyveSite)]
    dll.dyve_prepare.restype = ctypes.c_int
    if dll.dyve_abi() != ABI or dll.dyve_nstat() != len(STATS):
        return f"{lib} does not match this dyve version"
    if hasattr(dll, "dyve_openmp"):  # the OpenMP version built with, 0 without (not in
        dll.dyve_openmp.restype = ctypes.c_int  # the first builds of ABI 10: kernel_ab)
    return dll


def available() -> bool:
    """True when the fast kernels are built and loaded."""
    return kernels() is not None


def build() -> str | None:
    """The loaded kernel library's name (``dyvedeep-`` and a hash of the sources, flags,
    compiler and CPU it was built from), or None without kernels: what a benchmark records
    so that timings made with other kernels can be told apart."""
    dll = kernels()
    return None if dll is None else Path(dll._name).stem


class FastSite:
    """One site's plan in the kernels' layout, and a reusable call structure.

    Built once per plan (the folded weights): each filter's check terms as (channel, tap,
    weight) and the weights in kernel-row runs (channels-last, rows padded to 16 floats).
    """

    def __init__(self, plan: Plan, geom: Geometry) -> None:
        dll = kernels()
        if dll is None:
            raise RuntimeError("DyVEDeep's fast kernels are unavailable (see the warning)")
        self._dll = dll
        self.plan, self.geom = plan, geom
        cout, cin, kh, kw = plan.w.shape
        k2 = kh * kw
        idx = plan.top_idx.long()
        self.top_ci = (idx // k2).to(torch.int32).contiguous()
        self.top_tap = (idx % k2).to(torch.int32).contiguous()
        self.top_w = plan.w.reshape(cout, -1).gather(1, idx).contiguous()
        ci = self.top_ci.long()  # per filter and input channel: how many check terms
        self.top_count = torch.zeros(cout, cin, dtype=torch.int32).scatter_add_(
            1, ci, torch.ones_like(ci, dtype=torch.int32)
        )
        run = kw * cin
        rows = plan.w.permute(0, 2, 3, 1).reshape(cout, kh, run)
        self.wr_full = torch.nn.functional.pad(rows, (0, -run % 16)).contiguous()
        self.site = DyveSite()
        st = self.site
        st.cout, st.kh, st.kw = cout, kh, kw
        (st.sh, st.sw), (st.ph, st.pw), (st.dh, st.dw) = geom.stride, geom.padding, geom.dilation
        st.weight, st.bias, st.wsum = plan.w.data_ptr(), plan.b.data_ptr(), plan.wsum.data_ptr()
        st.top_ci, st.top_tap = self.top_ci.data_ptr(), self.top_tap.data_ptr()
        st.top_w, st.wr_full, st.m = self.top_w.data_ptr(), self.wr_full.data_ptr(), idx.shape[1]
        st.top_count = self.top_count.data_ptr()
        self.weight_t = plan.w.reshape(cout, -1).t().contiguous()  # term-major
        st.weight_t = self.weight_t.data_ptr()
        self._ref = ctypes.byref(st)
        self._table = torch.empty(0, dtype=torch.int32)  # [2, cout * m] (see configure)
        self._shape: tuple[int, ...] = ()
        self._knobs: SiteKnobs | None = None
        self._opts: tuple[bool, int, str] | None = None

    def configure(
        self, shape: tuple[int, ...], knobs: SiteKnobs, opts: tuple[bool, int, str]
    ) -> None:
        """Set the call structure for per-sample input ``shape`` (cin, h, w), ``knobs`` and
        ``opts`` (relu, sdss_stride, statistic); :meth:`run` keeps them while they hold,
        the whole-network program sets them once per site."""
        relu, sdss_stride, statistic = opts
        st = self.site
        st.cin, st.h, st.w = shape
        st.ho = (st.h + 2 * st.ph - st.dh * (st.kh - 1) - 1) // st.sh + 1
        st.wo = (st.w + 2 * st.pw - st.dw * (st.kw - 1) - 1) // st.sw + 1
        st.use_spet = knobs.spet is not None
        st.spet = knobs.spet or 0.0
        st.use_sdss = knobs.sdss is not None and st.ho * st.wo > 1 and not self.geom.linear
        st.sdss, st.sdss_stride = knobs.sdss or 0.0, sdss_stride
        st.use_sfma, st.sfma = knobs.sfma is not None, knobs.sfma or 0.0
        st.statistic, st.relu = STATISTICS.index(statistic), relu
        if st.use_spet:  # the check-term table for samples that keep every channel
            if self._table.numel() == 0:
                self._table = torch.empty(2, self.top_ci.numel(), dtype=torch.int32)
            st.top_off, st.top_rel = self._table[0].data_ptr(), self._table[1].data_ptr()
            if self._dll.dyve_prepare(self._ref) != 0:
                raise RuntimeError("dyvedeep: preparing the check-term table failed")
        else:
            st.top_off = st.top_rel = None
        self._shape, self._knobs, self._opts = tuple(shape), knobs, opts

    @property
    def knobs(self) -> SiteKnobs | None:
        """The knobs the call structure is configured with (None before the first call)."""
        return self._knobs

    def set_knobs(self, knobs: SiteKnobs) -> None:
        """Configure ``knobs`` for the shape and options already set (a program holding this
        site runs them from its next call)."""
        if self._opts is None:
            raise RuntimeError("set_knobs: the site was never configured")
        self.configure(self._shape, knobs, self._opts)

    def run(
        self,
        x: torch.Tensor,
        knobs: SiteKnobs,
        *,
        relu: bool,
        sdss_stride: int = 2,
        statistic: str = "variance",
    ) -> SiteResult:
        """The site computed by the kernels; same outputs as :func:`~.kernel.run_site`.

        Costs are *executed*: the MACs and scalar operations the kernel ran, including the
        check terms that completed neurons recompute (``recomputed``) and the stopped
        neurons completed with their vector (``wasted``); see ``fast_kernel.cpp``. SPET's
        exact check is not applied (lossless: the outputs are the same).
        """
        n = x.shape[0]
        x4 = (x.reshape(n, -1, 1, 1) if self.geom.linear else x).contiguous()
        if x4.dtype != torch.float32 or x4.device.type != "cpu":
            raise TypeError("the fast kernels take float32 CPU tensors")
        st = self.site
        opts = (relu, sdss_stride, statistic)
        if x4.shape[1:] != self._shape or knobs is not self._knobs or opts != self._opts:
            self.configure(x4.shape[1:], knobs, opts)
        st.n = n
        st.threads = torch.get_num_threads()
        out = torch.empty(n, st.cout, st.ho, st.wo)
        stats = torch.empty(n, len(STATS), dtype=torch.float64)
        changed = torch.empty(n, dtype=torch.bool)
        st.x, st.out, st.stats, st.changed = (
            x4.data_ptr(),
            out.data_ptr(),
            stats.data_ptr(),
            changed.data_ptr(),
        )
        rc = self._dll.dyve_site(self._ref)
        st.x = st.out = st.stats = st.changed = None
        if rc != 0:
            raise RuntimeError(f"dyvedeep fast kernel failed (code {rc})")
        col = dict(zip(STATS, stats.unbind(1), strict=True))
        return SiteResult(
            out=out.reshape(n, st.cout) if self.geom.linear else out,
            macs=col.pop("macs"),
            scalar_ops=col.pop("scalar_ops"),
            changed=changed,
            parts=col,
        )
