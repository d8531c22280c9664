"""The static cost table of a model: per-layer MACs and other ops for one input.

"Static" means the cost of the dense network, every layer run: the reference that
dynamic methods are measured against. It is counted eagerly with :class:`CostCounter`
on a batch of one, so it covers any ``nn.Module``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dyve.cost.counter import CostCounter

CONVENTION = (
    "MACs = multiply-accumulates of conv/linear/matmul (FLOPs = 2 x MACs); "
    "other ops = output elements of BN, activations, adds, pooling (x window); per sample"
)


@dataclass(frozen=True)
class CostRow:
    """One module's share of the static cost (per sample)."""

    name: str
    kind: str
    out_shape: tuple[int, ...]
    macs: int
    other: int
    params: int


@dataclass(frozen=True)
class CostTable:
    """Per-module static cost of a model for one input; totals per sample."""

    rows: tuple[CostRow, ...]
    total_macs: int
    total_other: int
    input_shape: tuple[int, ...]
    unsupported: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (used by ``dyve cost --json`` and run metrics)."""
        return {
            "convention": CONVENTION,
            "input_shape": list(self.input_shape),
            "total_macs": self.total_macs,
            "total_other_ops": self.total_other,
            "layers": [r.__dict__ for r in self.rows],
            "unsupported_ops": self.unsupported,
        }

    def format(self, all_rows: bool = False) -> str:
        """A readable table: one line per module with MACs (or every module if asked)."""
        head = (
            f"{'module':<28} {'type':<18} {'output':<16} {'MACs':>12} {'other ops':>11} "
            f"{'params':>9}"
        )
        lines = [
            f"# cost per sample, input {list(self.input_shape)}; {CONVENTION}",
            head,
            "-" * len(head),
        ]
        for r in self.rows:
            if r.macs or all_rows:
                shape = "x".join(map(str, r.out_shape[1:])) if r.out_shape else "-"
                lines.append(
                    f"{r.name:<28} {r.kind:<18} {shape:<16} {r.macs:>12,} {r.other:>11,} "
                    f"{r.params:>9,}"
                )
        other_total = self.total_other - sum(r.other for r in self.rows if r.macs or all_rows)
        if not all_rows and other_total:
            lines.append(
                f"{'(other modules)':<28} {'':<18} {'':<16} {0:>12,} {other_total:>11,} {'':>9}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<28} {'':<18} {'':<16} {self.total_macs:>12,} {self.total_other:>11,}"
        )
        if self.unsupported:
            lines.append(f"# ops without a cost formula (not counted): {self.unsupported}")
        return "\n".join(lines)


@torch.no_grad()
def static_cost(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    example_inputs: torch.Tensor | None = None,
) -> CostTable:
    """Count the per-sample static cost of ``model``.

    Args:
        model: any module; run in eval mode on a batch of one.
        input_shape: ``(C, H, W)``; default: ``model.dyve_info.input_size``.
        example_inputs: a batch to use instead (costs are divided by its batch size).

    Example:
        >>> t = static_cost(dyve.models.create("resnet20_cifar"))  # doctest: +SKIP
        >>> t.total_macs
        40551040
    """
    if example_inputs is None:
        if input_shape is None:
            info = getattr(model, "dyve_info", None)
            if info is None:
                raise ValueError("give input_shape or example_inputs for a model not from the zoo")
            input_shape = info.input_size
        p = next(model.parameters(), None)
        example_inputs = torch.zeros((1, *input_shape), device=p.device if p is not None else "cpu")
    n = example_inputs.shape[0]
    was_training = model.training
    model.eval()
    try:
        with CostCounter(model) as cc:
            model(example_inputs)
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    rows = []
    for name in cc.order:
        mod = modules[name]
        is_leaf = not any(True for _ in mod.children())
        macs, other = cc.macs.get(name, 0), cc.other.get(name, 0)
        if not (is_leaf or macs or other):
            continue
        rows.append(
            CostRow(
                name or "(model)",
                type(mod).__name__,
                cc.shapes.get(name, ()),
                macs // n,
                other // n,
                sum(p.numel() for p in mod.parameters(recurse=False)),
            )
        )
    return CostTable(
        tuple(rows),
        cc.total_macs // n,
        cc.total_other // n,
        tuple(example_inputs.shape[1:]),
        cc.unsupported_ops(),
    )
