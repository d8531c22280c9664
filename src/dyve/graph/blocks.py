"""What structure discovery finds: sites, residual blocks, stages, and the graph holding them."""

from __future__ import annotations

from dataclasses import dataclass, field

from dyve.errors import UnknownNameError


@dataclass(frozen=True)
class Site:
    """A conv/linear layer a mechanism can act on, with its BN and activation."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    bn: str | None = None
    act: str | None = None
    block: str | None = None


@dataclass(frozen=True)
class Block:
    """A residual block: ``act(branch(x) + shortcut(x))``.

    ``shortcut`` and ``post_act`` are module names (None: identity shortcut / no activation
    module after the merge); ``shortcut_macs`` is what the shortcut costs per sample.
    """

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    sites: tuple[str, ...]
    shortcut: str | None
    stage: str | None = None
    shortcut_macs: int = 0
    post_act: str | None = None

    @property
    def downsamples(self) -> bool:
        """True when the block changes the shape (its residual branch cannot be dropped alone)."""
        return self.in_shape != self.out_shape


@dataclass(frozen=True)
class Stage:
    """Consecutive blocks (or declared stage modules) ending at one exit point."""

    name: str
    blocks: tuple[str, ...]
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class BlockGraph:
    """What discovery found; immutable, with a readable table as ``str``."""

    model_type: str
    input_shape: tuple[int, ...]
    total_macs: int
    sites: tuple[Site, ...]
    blocks: tuple[Block, ...]
    stages: tuple[Stage, ...]
    exit_points: tuple[str, ...]
    module_macs: dict[str, int] = field(default_factory=dict, repr=False)
    #: module names in the order the example pass first called them
    order: tuple[str, ...] = field(default=(), repr=False)

    def _end(self, point: str) -> int:
        """Index in :attr:`order` of the last module called inside ``point``."""
        if point not in self.order:
            raise UnknownNameError(f"no module {point!r} ran in the example pass")
        inside = [i for i, m in enumerate(self.order) if m == point or m.startswith(point + ".")]
        return max(inside)

    def runs_before(self, name: str, point: str) -> bool:
        """True when module ``name`` was called before ``point``'s output existed."""
        return name in self.order and self.order.index(name) <= self._end(point)

    def macs_through(self, point: str) -> int:
        """MACs per sample of every module called until ``point``'s output existed.

        What a sample costs when it leaves the network at exit point ``point``. Work done
        by the model's own ``forward`` outside any module counts as after every point.
        """
        done = set(self.order[: self._end(point) + 1])
        return sum(v for k, v in self.module_macs.items() if k in done)

    def site(self, name: str) -> Site:
        """Look up a site by module name."""
        for s in self.sites:
            if s.name == name:
                return s
        raise UnknownNameError(f"no site {name!r}; sites: {[s.name for s in self.sites]}")

    def block(self, name: str) -> Block:
        """Look up a block by module name."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise UnknownNameError(f"no block {name!r}; blocks: {[b.name for b in self.blocks]}")

    def __str__(self) -> str:
        lines = [
            f"BlockGraph of {self.model_type}: input {list(self.input_shape)}, "
            f"{self.total_macs:,} MACs/sample, {len(self.sites)} sites, "
            f"{len(self.blocks)} blocks, {len(self.stages)} stages"
        ]
        for st in self.stages:
            lines.append(f"stage {st.name}: {len(st.blocks)} blocks -> {list(st.out_shape)}")
        for b in self.blocks:
            sc = "identity" if b.shortcut is None else b.shortcut
            ds = " (downsample)" if b.downsamples else ""
            lines.append(
                f"  block {b.name:<14} {list(b.in_shape)} -> {list(b.out_shape)}{ds} "
                f"shortcut={sc} MACs={b.macs:,}"
            )
        for s in self.sites:
            extra = ", ".join(f"{k}={v}" for k, v in (("bn", s.bn), ("act", s.act)) if v)
            lines.append(f"  site {s.name:<22} {s.kind:<6} MACs={s.macs:>11,} {extra}")
        return "\n".join(lines)
