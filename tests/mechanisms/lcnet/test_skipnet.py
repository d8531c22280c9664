"""The SkipNet-style baseline: AIG's gate drawn as a policy in training, learning by
policy gradient; at test AIG's decision in the same runtime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyve.dynamic import equip
from dyve.mechanisms import ConvNetAIG, SkipNetStyle
from dyve.models import create
from dyve.testing.contract import graded_inputs


def _net(mech: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return equip(create("resnet20_cifar"), mech or SkipNetStyle(threshold=0.5, open_bias=0.0))


def test_training_draws_hard_decisions_with_their_log_probabilities() -> None:
    net = _net().train()
    mech = net.mechanisms[0]
    torch.manual_seed(1)
    net(torch.randn(64, 3, 32, 32))
    for g in mech.gates:
        assert set(g.last.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(g.slot.s_l.float(), g.last)  # the branch is kept whole or dropped
        assert g.logp.shape == (64,)
        assert bool((g.logp <= 0).all())
    # the executed share weighs each block's draw by its MACs
    macs = torch.tensor([float(g.plan.block.macs) for g in mech.gates])
    ran = torch.stack([g.last for g in mech.gates], 1)
    assert torch.allclose(mech.executed_share(), (ran * macs).sum(1) / macs.sum())
    assert 0 < float(mech.executed_share().mean()) < 1


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_policy_gradient_moves_the_gates_toward_the_reward(sign: float) -> None:
    """Rewarding the samples that ran more blocks opens the gates; rewarding those that
    ran fewer closes them (a sign error in the loss fails one of the two)."""
    net = _net().train()
    mech = net.mechanisms[0]
    x = graded_inputs(32, 64)
    params = [p for g in mech.gates for p in g.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)

    def p_run() -> float:  # mean P(run) over the gates, for a blank pooled input
        net.eval()
        with torch.no_grad():
            blank = [torch.zeros(1, g.fc1.in_features, 1, 1) for g in mech.gates]
            probs = [g.logits(z).softmax(1)[0, 1] for g, z in zip(mech.gates, blank, strict=True)]
        net.train()
        return float(torch.stack(probs).mean())

    before = p_run()
    for step in range(5):
        torch.manual_seed(step)
        net(x)
        opt.zero_grad()
        mech.policy_loss(sign * mech.executed_share()).backward()
        opt.step()
    after = p_run()
    assert (after - before) * sign > 0.02


def test_at_test_it_decides_as_convnet_aig() -> None:
    """The same gate weights decide the same blocks under both mechanisms in eval mode."""
    policy, aig = _net(), _net(ConvNetAIG(threshold=0.5, open_bias=0.0))
    for a, b in zip(aig.mechanisms[0].gates, policy.mechanisms[0].gates, strict=True):
        a.load_state_dict(b.state_dict())
    x = graded_inputs(32, 16)
    a, b = policy.eval().run(x), aig.eval().run(x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.trace.cost.macs, b.trace.cost.macs)
    assert 0 < float(a.trace.cost.macs.min()) < float(policy.static_macs)
