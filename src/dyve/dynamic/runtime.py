"""Batch execution with per-sample decisions: masking, gather/scatter, grouping by pattern.

* **mask** (emulated): run everyone, then select; exact outputs, no time saved.
* **gather/scatter** (fast): run the unit only on the rows that need it, write them back.
* **group by pattern** (fast): when a decision vector is known for several units at once
  (e.g. all blocks of a stage), samples with the same pattern run together, so each group
  runs only its blocks with one gather and one scatter for the whole stage.

Measured on the 2-core development CPU: see ``benchmarks/compaction.py`` and
``docs/concepts.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def masked(x: torch.Tensor, run: torch.Tensor, fn: Fn, skip: Fn) -> torch.Tensor:
    """Emulated: ``fn`` and ``skip`` on the whole batch, rows picked by ``run``."""
    full, alt = fn(x), skip(x)
    shape = (-1,) + (1,) * (full.dim() - 1)
    return torch.where(run.view(shape), full, alt)


def gather_scatter(x: torch.Tensor, run: torch.Tensor, fn: Fn, skip: Fn) -> torch.Tensor:
    """Fast: ``fn`` only on the rows where ``run`` is true, ``skip`` on the others."""
    n = x.shape[0]
    k = int(run.sum())
    if k == n:
        return fn(x)
    if k == 0:
        return skip(x)
    idx = run.nonzero().squeeze(1)
    rest = (~run).nonzero().squeeze(1)
    y_run = fn(x.index_select(0, idx))
    y_skip = skip(x.index_select(0, rest))
    out = _empty_like_rows(y_run, n)
    out.index_copy_(0, idx, y_run)
    out.index_copy_(0, rest, y_skip)
    return out


def group_by_pattern(patterns: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split rows by identical decision rows: ``[(pattern, row indices), ...]``.

    ``patterns`` is a bool matrix ``[N, units]``; groups come in order of first appearance.
    """
    uniq, inverse = torch.unique(patterns, dim=0, return_inverse=True)
    groups = []
    for g in range(len(uniq)):
        groups.append((uniq[g], (inverse == g).nonzero().squeeze(1)))
    groups.sort(key=lambda t: int(t[1][0]))
    return groups


def run_grouped(
    x: torch.Tensor,
    patterns: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Fast: ``fn(x_group, pattern)`` once per distinct pattern, rows scattered back in order."""
    groups = group_by_pattern(patterns)
    if len(groups) == 1:
        return fn(x, groups[0][0])
    out: torch.Tensor | None = None
    for pattern, idx in groups:
        y = fn(x.index_select(0, idx), pattern)
        if out is None:
            out = _empty_like_rows(y, x.shape[0])
        out.index_copy_(0, idx, y)
    assert out is not None
    return out


def _empty_like_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """An empty tensor of ``n`` rows shaped like ``t``'s rows, in ``t``'s memory format."""
    fmt = torch.contiguous_format
    if (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    ):
        fmt = torch.channels_last
    return torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device, memory_format=fmt)
