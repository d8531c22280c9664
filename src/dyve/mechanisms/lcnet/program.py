"""Gated blocks (LC-Net, ConvNet-AIG) in the whole-network native program (``fast_gated.cpp``).

:class:`GatedProgram` is DyVEDeep's :class:`~dyve.mechanisms.dyvedeep.program.Program`
(the same lowering, buffers and kernels: the layers outside the blocks are kernel sites
with every knob off) plus one op per gated block. That op runs the block's predictors on
the pooled input, skips the block where ``s_L <= eps``, and otherwise computes only the
kept channels: conv1 over the kept filters (the dense tile over a compact copy of those
filters' weights, or on small maps the site's own weights where the kept filters fill all
its vectors) and conv2 over the kept input channels, so the work done per sample is the work
the sample's decisions leave. At batch 1 nothing runs in Python between the layers.
ConvNet-AIG's gate (its two small layers, batch norm folded) decides whole blocks the
same way, so the baseline is timed in the same runtime as LC-Net.

Supported blocks: ``post_relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with an
identity, option-A or conv(+batch norm) shortcut, batch norms optional, per-block
predictors (the global predictor is not lowered). The decisions and outputs are those of
the per-block path (tested).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from dyve.dynamic.site import fold
from dyve.dynamic.taps import Tap
from dyve.dynamic.unit import Unit
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.dyvedeep.kernel import Geometry, SiteKnobs, make_plan
from dyve.mechanisms.dyvedeep.lower import GATED, Unsupported
from dyve.mechanisms.dyvedeep.program import Program
from dyve.mechanisms.lcnet.gates import AIGGate, LCGate
from dyve.models.resnet_cifar import ShortcutA

if TYPE_CHECKING:
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.lcnet.blocks import BlockGates


class GatedProgram(Program):
    """``net`` with LC-Net or ConvNet-AIG attached, as one native program (see module
    docstring)."""

    def __init__(self, net: DynamicNet, example: torch.Tensor, mech: BlockGates) -> None:
        self.net, self.mech = net, mech
        self._gates: list[native.DyveGate] = []
        super().__init__(net.backbone, example)
        self._check_structure(example[:1].to(torch.float32).contiguous())

    def _check_structure(self, one: torch.Tensor) -> None:
        """A block whose forward is not the supported form (a pre-activation block, say)
        would be lowered wrongly, so the program must reproduce, on a sample, the per-block
        path, and, with every gate open and every scale 1, the dense backbone (when that is
        finite: a block the gates always skip may have degenerate batch-norm statistics)."""
        with torch.no_grad():
            ref, dense = self.net.run(one).logits, self.net.detach()(one)
        if not _close(self.run(one)[0], ref):
            raise Unsupported("the lowered blocks differ from the per-block path on a sample")
        if not bool(torch.isfinite(dense).all()):
            return
        saved = [(g.kind, g.layer, g.channel) for g in self._gates]
        for g in self._gates:
            g.kind, g.layer, g.channel = 0, 0, 0  # LC-Net's form with no predictor: all kept
        try:
            got = self.run(one)[0]
        finally:
            for g, (kind, layer, channel) in zip(self._gates, saved, strict=True):
                g.kind, g.layer, g.channel = kind, layer, channel
        if not _close(got, dense):
            raise Unsupported("the lowered blocks are not the backbone's (an unsupported form)")

    def _block(self, node: fx.Node, arg: fx.Node, src: fx.Node, unit: nn.Module) -> None:
        if not isinstance(unit, Unit):
            raise Unsupported(f"{node.name}: {type(unit).__name__} is not a gated block")
        gates = list(unit.gates.values())
        gate = gates[0] if len(gates) == 1 else None
        if not isinstance(gate, LCGate | AIGGate):
            raise Unsupported(f"{unit.name}: a block gated by another mechanism")
        if isinstance(gate, LCGate) and gate._source:
            raise Unsupported("the global predictor is not lowered")
        p, block = gate.plan, gate.plan.block
        branch = [
            s.name
            for s in self.net.graph.sites
            if s.name.startswith(block.name + ".")
            and not (block.shortcut and s.name.startswith(block.shortcut + "."))
            and s.name != block.shortcut
        ]
        if p.gated is None or branch != [p.gated.name, p.last.name]:
            raise Unsupported(f"{unit.name}: a branch other than two gated convolutions")

        def module(path: str | None) -> nn.Module | None:
            if path is None:
                return None
            m = unit.module.get_submodule(path[len(unit.name) + 1 :])
            return m.module if isinstance(m, Tap) else m

        conv1, bn1, act = module(p.gated.name), module(p.gated.bn), module(p.gated.act)
        conv2, bn2 = module(p.last.name), module(p.last.bn)
        post = module(block.post_act)
        if not (isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)):
            raise Unsupported(f"{unit.name}: its branch is not two Conv2d layers")
        if type(act) is not nn.ReLU or not (post is None or type(post) is nn.ReLU):
            raise Unsupported(f"{unit.name}: activations other than ReLU modules")
        for bn in (bn1, bn2):
            if bn is not None and not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                raise Unsupported(f"{unit.name}: a normalisation other than a tracked BatchNorm2d")
        shape_in, shape_out = self._shapes[arg], self._shapes[node]
        try:
            geom1, geom2 = Geometry.of(conv1, p.gated.name), Geometry.of(conv2, p.last.name)
        except ValueError as exc:
            raise Unsupported(str(exc)) from None
        plan1 = make_plan(*fold(conv1, bn1), self.opts.checkpoint)
        fs1 = self.fast_site(plan1, geom1, shape_in, SiteKnobs(), relu=True)
        mid = (conv1.out_channels, fs1.site.ho, fs1.site.wo)
        if mid[1] * mid[2] <= 1 or shape_out[1] * shape_out[2] <= 1:
            raise Unsupported(f"{unit.name}: 1x1 feature maps")
        plan2 = make_plan(*fold(conv2, bn2), self.opts.checkpoint)
        fs2 = self.fast_site(plan2, geom2, mid, SiteKnobs(), relu=False)
        g = native.DyveGate()
        self._shortcut(g, unit, module(block.shortcut), shape_in, shape_out)
        g.cin, g.cmid = shape_in[0], mid[0]
        g.conv1, g.conv2 = ctypes.pointer(fs1.site), ctypes.pointer(fs2.site)
        g.post_relu = post is not None
        if isinstance(gate, LCGate):
            self._lcnet(g, gate)
        else:
            self._aig(g, gate)
        self._native.append(g)
        self._gates.append(g)
        self._watched += [m for m in (conv1, bn1, conv2, bn2) if m is not None]
        self._op(GATED, node, src, gate=g, params={"slot": len(self.site_names)})
        self.site_names.append(unit.name)

    def _lcnet(self, g: native.DyveGate, gate: LCGate) -> None:
        """L-Net (``s_L``, the block's decision) and C-Net (``s_C``, the kept channels)."""
        g.kind, g.eps = 0, float(gate.eps or 0.0)
        g.layer, g.channel = gate.l is not None, gate.c is not None
        if gate.l is not None:
            g.wl, g.bl = (
                self._keep(gate.l.weight.reshape(-1)).data_ptr(),
                float(gate.l.bias.detach()),
            )
        if gate.c is not None:
            g.wc, g.bc = self._keep(gate.c.weight).data_ptr(), self._keep(gate.c.bias).data_ptr()
        self._watched += [m for m in (gate.l, gate.c) if m is not None]
        self._knobs.append((gate, "eps", gate.eps))

    def _aig(self, g: native.DyveGate, gate: AIGGate) -> None:
        """ConvNet-AIG's gate: fc1 with its batch norm folded, ReLU, fc2, softmax."""
        w1, b1 = fold(gate.fc1, gate.bn)
        g.kind, g.hidden, g.threshold = 1, gate.fc1.out_features, float(gate.threshold or 0.0)
        g.w1, g.b1 = self._keep(w1).data_ptr(), self._keep(b1).data_ptr()
        g.w2, g.b2 = self._keep(gate.fc2.weight).data_ptr(), self._keep(gate.fc2.bias).data_ptr()
        self._watched += [gate.fc1, gate.bn, gate.fc2]
        self._knobs.append((gate, "threshold", gate.threshold))

    def _shortcut(
        self,
        g: native.DyveGate,
        unit: Unit,
        sc: nn.Module | None,
        shape_in: tuple[int, ...],
        shape_out: tuple[int, ...],
    ) -> None:
        """Identity, option A, or a conv (+ batch norm) projection lowered as a kernel site."""
        layers = list(sc) if isinstance(sc, nn.Sequential) else [sc] if sc is not None else []
        layers = [m for m in layers if not isinstance(m, nn.Identity)]
        if not layers:
            g.shortcut = 0
            ok = shape_in == shape_out
        elif isinstance(layers[0], ShortcutA) and len(layers) == 1:
            g.shortcut, g.pad = 1, layers[0].pad_channels
            c, h, w = shape_in
            ok = shape_out == (c + 2 * g.pad, (h + 1) // 2, (w + 1) // 2)
        elif isinstance(layers[0], nn.Conv2d) and len(layers) <= 2:
            conv, bn = layers[0], layers[1] if len(layers) == 2 else None
            if bn is not None and not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                raise Unsupported(f"{unit.name}: a shortcut other than conv + batch norm")
            try:
                geom = Geometry.of(conv, f"{unit.name} shortcut")
            except ValueError as exc:
                raise Unsupported(str(exc)) from None
            plan = make_plan(*fold(conv, bn), self.opts.checkpoint)
            fs = self.fast_site(plan, geom, shape_in, SiteKnobs(), relu=False)
            g.shortcut, g.proj = 2, ctypes.pointer(fs.site)
            self._watched += [conv] + ([bn] if bn is not None else [])
            ok = (fs.site.cout, fs.site.ho, fs.site.wo) == shape_out
        else:
            raise Unsupported(f"{unit.name}: a shortcut other than identity, option A or a conv")
        if not ok:
            raise Unsupported(f"{unit.name}: its shortcut's shape differs from its output's")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the folded batch norms' rounding (relative to the largest logit)."""
    return torch.allclose(a, b, rtol=0, atol=1e-4 * max(1.0, float(b.abs().max())))
