"""DyVEDeep (Ganapathy et al.): three training-free effort knobs on the layers of a trained CNN.

The mechanism wraps each eligible conv/linear layer in a site unit of the shared core and
gives it a :class:`DyVEDeepOp`, which computes the layer with the knobs in
:mod:`~dyve.mechanisms.dyvedeep.kernel`. Knobs, each ``None``/``False`` (off), one value
for every eligible site, or a ``{site: value}`` mapping (sites not named are off):

* ``spet``: SPET's predictive threshold on the partial sum after ``checkpoint`` terms;
* ``spet_exact``: SPET's lossless check after the positive-weight terms (bool);
* ``sdss``: SDSS significance threshold (grid stride ``sdss_stride``);
* ``sfma``: SFMA uniformity threshold (``sfma_statistic`` of each input channel).

Eligible sites ([D] defaults of the spec, all configurable): SPET on conv and linear
layers followed by a ReLU, SDSS and SFMA on spatial convs, none on the first layer
(``first_layer``), linear layers only when ``fc_layers``; grouped convs are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dyve.dynamic.site import SiteResult, SiteUnit
from dyve.mechanisms.base import MECHANISMS
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import (
    STATISTICS,
    Geometry,
    Plan,
    SiteKnobs,
    make_plan,
    run_site,
)
from dyve.mechanisms.dyvedeep.runner import NativeRunner

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.dyvedeep.lower import SiteOptions
    from dyve.mechanisms.dyvedeep.program import Program

KNOBS = ("spet", "spet_exact", "sdss", "sfma")
KnobValue = float | bool | Mapping[str, Any] | None


@dataclass(frozen=True)
class DyVEDeepConfig:
    """Settings of :class:`DyVEDeep`; the four knobs default to off."""

    spet: KnobValue = None
    spet_exact: KnobValue = False
    sdss: KnobValue = None
    sfma: KnobValue = None
    #: terms before the SPET check: a fraction of each filter's terms (< 1) or a count
    checkpoint: float = 0.25
    sdss_stride: int = 2
    sfma_statistic: str = "variance"
    #: apply the knobs to the first layer too (raw, signed pixels: off by default)
    first_layer: bool = False
    #: apply SPET to linear layers followed by a ReLU
    fc_layers: bool = True
    #: restrict to these sites (default: every eligible one)
    sites: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.sfma_statistic not in STATISTICS:
            raise ValueError(f"sfma_statistic must be one of {STATISTICS}")
        if self.sdss_stride < 2:
            raise ValueError(f"sdss_stride must be >= 2, got {self.sdss_stride}")
        if not self.checkpoint > 0:
            raise ValueError(f"checkpoint must be > 0, got {self.checkpoint}")


class DyVEDeepOp:
    """The knobs of one site and the plan derived from its folded weights."""

    def __init__(self, unit: SiteUnit, mech: DyVEDeep) -> None:
        self.geom = Geometry.of(unit.module, unit.name)
        self.mech = mech
        self.knobs = SiteKnobs()
        self._plan: tuple[torch.Tensor, Plan] | None = None
        self._fast: tuple[Plan, native.FastSite] | None = None
        self._no_exact = (self.knobs, self.knobs)

    def active(self) -> bool:
        return self.knobs.active

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles drop the native call structure (it holds raw addresses)."""
        return {**self.__dict__, "_fast": None}

    def plan(self, unit: SiteUnit) -> Plan:
        w, b = unit.folded()
        if self._plan is None or self._plan[0] is not w:
            self._plan = (w, make_plan(w, b, self.mech.config.checkpoint))
        return self._plan[1]

    def fast_knobs(self) -> SiteKnobs:
        """The knobs without the exact check (lossless, does not pay: ``fast_ignores``)."""
        if self._no_exact[0] is not self.knobs:
            self._no_exact = (self.knobs, replace(self.knobs, exact=False))
        return self._no_exact[1]

    def compute(self, x: torch.Tensor, unit: SiteUnit) -> SiteResult:
        cfg = self.mech.config
        plan = self.plan(unit)
        record = self.mech.recording
        fast = unit.backend == "fast" and self.mech.executes_fast
        if record is None and fast and x.dtype == torch.float32:
            if self._fast is None or self._fast[0] is not plan:
                self._fast = (plan, native.FastSite(plan, self.geom))
            return self._fast[1].run(
                x,
                self.fast_knobs(),
                relu=unit.relu,
                sdss_stride=cfg.sdss_stride,
                statistic=cfg.sfma_statistic,
            )
        maps: dict[str, torch.Tensor] | None = None if record is None else {}
        res = run_site(
            x,
            plan,
            self.geom,
            self.knobs,
            relu=unit.relu,
            sdss_stride=cfg.sdss_stride,
            statistic=cfg.sfma_statistic,
            maps=maps,
        )
        if record is not None and maps is not None:
            record[unit.name] = maps
        return res


class DyVEDeep(NativeRunner):
    """SPET, SDSS and SFMA on every eligible layer (see module docstring)."""

    name = "dyvedeep"
    config_class = DyVEDeepConfig
    knob_names = KNOBS
    fast_cost_exact = False  # the kernels recompute check terms (see fast_kernel.cpp)
    fast_ignores = ("spet_exact",)

    @property
    def executes_fast(self) -> bool:
        """True when the C++ kernels are built and the network is float32 on the CPU."""
        if not native.available():
            return False
        if not self._units:
            return True
        w = self._units[0].module.weight  # the network moves as a whole
        return w.device.type == "cpu" and w.dtype == torch.float32

    def lower(self, net: DynamicNet, x: torch.Tensor) -> Program | None:
        """The network as one native program (:mod:`.program`); None with every knob off
        (the per-site path is then the backbone bit for bit)."""
        from dyve.mechanisms.dyvedeep.program import Program  # imports this module

        if not any(op.active() for op in self.ops.values()):
            return None
        return Program(net.backbone, x, self.site_options)

    @property
    def site_options(self) -> SiteOptions:
        """How this mechanism's program builds its sites (checkpoint, SDSS stride, statistic)."""
        from dyve.mechanisms.dyvedeep.lower import SiteOptions

        cfg = self.config
        return SiteOptions(cfg.checkpoint, cfg.sdss_stride, cfg.sfma_statistic)

    #: while :meth:`effort_maps` runs: site name -> the maps of :func:`run_site`
    recording: dict[str, dict[str, torch.Tensor]] | None = None

    @torch.no_grad()
    def effort_maps(self, net: DynamicNet, x: torch.Tensor) -> dict[str, dict[str, Any]]:
        """Per site, where work was done for each sample of ``x`` (what a report draws).

        ``{"computed": [N, Ho, Wo]`` share of output channels computed in full at each
        position, ``"approximated": [N]`` share of input channels SFMA approximated ``}``.
        Runs the emulation (same decisions as the fast kernels, which keep no maps).
        """
        self.recording = {}
        try:
            net.run(x)
            return {k: {m: v.cpu() for m, v in d.items()} for k, d in self.recording.items()}
        finally:
            self.recording = None

    def attach(self, net: DynamicNet) -> None:
        cfg = self.config
        self.eligible: dict[str, list[str]] = {k: [] for k in KNOBS}
        self.ops: dict[str, DyVEDeepOp] = {}
        self._units: list[SiteUnit] = []
        first = net.graph.sites[0].name if net.graph.sites else None
        for site in net.graph.sites:
            if cfg.sites is not None and site.name not in cfg.sites:
                continue
            if site.name == first and not cfg.first_layer:
                continue
            mod = net.backbone.get_submodule(site.name)
            conv = isinstance(mod, nn.Conv2d) and mod.groups == 1
            if not (conv or (isinstance(mod, nn.Linear) and cfg.fc_layers)):
                continue
            knobs = []
            if len(site.in_shape) == 3 and conv:
                knobs += ["sfma"] if site.in_shape[1] * site.in_shape[2] > 1 else []
                knobs += ["sdss"] if site.out_shape[1] * site.out_shape[2] > 1 else []
            unit = net.site_unit(site.name) if (knobs or site.act) else None
            if unit is not None and unit.relu:
                knobs += ["spet", "spet_exact"]
            if not knobs or unit is None:
                continue
            unit.op = self.ops[site.name] = DyVEDeepOp(unit, self)
            self._units.append(unit)
            for k in knobs:
                self.eligible[k].append(site.name)
        if cfg.sites is not None:
            missing = set(cfg.sites) - set(self.ops)
            if missing:
                raise ValueError(f"dyvedeep: no knob applies to sites {sorted(missing)}")
        for k in KNOBS:
            self._apply(k, getattr(cfg, k))

    def set_knob(self, knob: str, value: Any) -> None:
        self._check_knob(knob)
        self._apply(knob, value)

    def site_values(self, knob: str) -> dict[str, Any]:
        """The knob's value at each eligible site (None / False = off)."""
        self._check_knob(knob)
        field = "exact" if knob == "spet_exact" else knob
        return {s: getattr(self.ops[s].knobs, field) for s in self.eligible[knob]}

    def _apply(self, knob: str, value: Any) -> None:
        sites = self.eligible[knob]
        if isinstance(value, Mapping):
            unknown = set(value) - set(sites)
            if unknown:
                raise ValueError(
                    f"dyvedeep.{knob}: not eligible at {sorted(unknown)}; eligible: {sites}"
                )
            per_site = {s: _check_value(knob, value.get(s)) for s in sites}
            stored: Any = {s: v for s, v in per_site.items() if v not in (None, False)}
        else:
            v = _check_value(knob, value)
            per_site = dict.fromkeys(sites, v)
            stored = v
        field = "exact" if knob == "spet_exact" else knob
        for s, v in per_site.items():
            op = self.ops[s]
            op.knobs = replace(op.knobs, **{field: v})
        self.config = replace(self.config, **{knob: stored})


def _check_value(knob: str, value: Any) -> Any:
    if knob == "spet_exact":
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValueError(f"dyvedeep.spet_exact takes true/false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"dyvedeep.{knob} takes a number or null, got {value!r}")
    return float(value)


def register() -> None:
    """Register DyVEDeep."""
    MECHANISMS.add(DyVEDeep.name, DyVEDeep)
