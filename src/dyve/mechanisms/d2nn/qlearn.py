"""D2NN's training signals: rewards, Q-learning targets, and the task loss on executed paths.

Reward of one sample (or one mini-bag): the accuracy term at the end (1 if right, else 0;
or the F1 of its mini-bag, shared by every sample of the bag) minus ``lam`` times the
normalised MACs of what ran. Each node's cost is charged to the decision it depends on
(its owner: the latest controller gating it or one of its required inputs, see
:class:`~dyve.mechanisms.d2nn.graph.Plan`); nodes that run whatever is decided cost nothing
to any decision. With no discounting, the Q target of a decision is its immediate reward
plus ``max_a Q`` of the next controller the sample reaches, or plus the final reward when
it reaches none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dyve.mechanisms.d2nn.module import D2Graph, Execution


def bag_f1(pred: torch.Tensor, y: torch.Tensor, bag: int, positive: int = 1) -> torch.Tensor:
    """F1 of the positive class in each consecutive bag of ``bag`` samples ``[N // bag]``.

    A bag with no positive and no positive prediction scores 1 (nothing to find, nothing
    wrongly found).
    """
    n = (len(y) // bag) * bag
    p = (pred[:n] == positive).view(-1, bag).float()
    t = (y[:n] == positive).view(-1, bag).float()
    tp = (p * t).sum(1)
    denom = p.sum(1) + t.sum(1)
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(tp))


def final_reward(
    out: torch.Tensor, y: torch.Tensor, metric: str = "accuracy", bag: int = 32
) -> torch.Tensor:
    """Per-sample final reward: correctness, or the F1 of the sample's bag (shared)."""
    pred = out.detach().argmax(1)
    if metric == "accuracy":
        return (pred == y).double().cpu()
    if metric != "f1":
        raise ValueError(f"unknown metric {metric!r}; use accuracy or f1")
    if len(y) % bag:
        raise ValueError(f"a batch of {len(y)} is not whole bags of {bag}")
    return bag_f1(pred, y, bag).repeat_interleave(bag).double().cpu()


def q_targets(
    graph: D2Graph, exe: Execution, final: torch.Tensor, lam: float
) -> dict[str, torch.Tensor]:
    """Per controller, the Q target of each sample that reached it (float64 ``[N]``)."""
    owner = graph.plan.owner
    norm = graph.max_path_macs
    value = final.double().clone()  # value after the last decision of each sample
    targets: dict[str, torch.Tensor] = {}
    for c in reversed(graph.plan.controllers):
        reached = exe.ran[c].cpu()
        immediate = torch.zeros_like(value)
        for node, o in owner.items():
            if o == c:
                immediate -= lam * exe.ran[node].cpu().double() * graph.node_macs[node] / norm
        targets[c] = immediate + value
        best = exe.q[c].detach().cpu().double().max(1).values
        value = torch.where(reached, best, value)
    return targets


def q_loss(exe: Execution, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of the taken actions' Q-values over every decision made."""
    losses = []
    for c, target in targets.items():
        rows = exe.ran[c].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        q = exe.q[c].index_select(0, rows)
        taken = q.gather(1, exe.action[c].index_select(0, rows).view(-1, 1)).squeeze(1)
        losses.append(F.mse_loss(taken.float(), target[rows.cpu()].to(taken)))
    if not losses:
        return torch.zeros((), requires_grad=False)
    return torch.stack(losses).mean()


def task_loss(out: torch.Tensor, y: torch.Tensor, floor: float) -> torch.Tensor:
    """Cross-entropy over samples whose true class got a real score (not a default at or
    below ``floor``: a hierarchy leaf that did not run has no gradient to give)."""
    real = out.gather(1, y.view(-1, 1)).squeeze(1) > floor
    if not bool(real.any()):
        return out.sum() * 0.0
    return F.cross_entropy(out[real], y[real])
