"""Nodes that merge several inputs and see which of them ran: sum, last, concat, place."""

from __future__ import annotations

import torch
from torch import nn

from dyve.mechanisms.d2nn.graph import GraphError


class Combine(nn.Module):
    """A node that merges several inputs and needs to know which of them ran."""

    def forward(self, values: list[torch.Tensor], ran: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class Sum(Combine):
    """The sum of the inputs (non-run inputs contribute their edge default)."""

    def forward(self, values: list[torch.Tensor], ran: list[torch.Tensor]) -> torch.Tensor:
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out


class Last(Combine):
    """Per sample, the last input (in order) that ran: a cascade's latest prediction."""

    def forward(self, values: list[torch.Tensor], ran: list[torch.Tensor]) -> torch.Tensor:
        out = values[0]
        for v, r in zip(values[1:], ran[1:], strict=True):
            out = torch.where(r.view(-1, *[1] * (v.dim() - 1)), v, out)
        return out


class Concat(Combine):
    """The inputs concatenated along channels (a chain stage's filter groups)."""

    def forward(self, values: list[torch.Tensor], ran: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values, 1)


class Place(Combine):
    """Scatter each input's class scores to their places among ``classes`` (a hierarchy's
    leaves); a class whose leaf did not run gets that edge's default."""

    def __init__(self, groups: list[list[int]], classes: int) -> None:
        super().__init__()
        perm = [c for g in groups for c in g]
        if sorted(perm) != list(range(classes)):
            raise GraphError(f"Place: groups {groups} must cover 0..{classes - 1} once")
        self.order: torch.Tensor
        self.register_buffer("order", torch.argsort(torch.tensor(perm)), persistent=False)

    def forward(self, values: list[torch.Tensor], ran: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values, 1).index_select(1, self.order)
