"""The dynamic network: units, knobs, composition, compaction helpers, saving and refusing files."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dyve import models
from dyve.dynamic import DynamicNet, equip, load, runtime, save
from dyve.dynamic.trace import RAN, SKIPPED
from dyve.errors import DyveError
from dyve.mechanisms import BlockSkip
from dyve.mechanisms.base import Mechanism


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20_cifar")


def test_fixed_skipping_records_and_costs(backbone: nn.Module) -> None:
    net = equip(backbone, BlockSkip(always=("layer1.1", "layer3.2")))
    res = net.run(torch.randn(3, 3, 32, 32))
    assert (res.trace.units["layer1.1"] == SKIPPED).all()
    assert (res.trace.units["layer1.0"] == RAN).all()
    block = net.graph.block("layer1.1").macs + net.graph.block("layer3.2").macs
    assert torch.all(res.macs == net.static_macs - block)
    assert res.trace.cost.cost_mode == "executed"
    assert res.trace.fraction()["layer3.2"] == 0.0


def test_skipped_block_passes_its_input_through(backbone: nn.Module) -> None:
    net = equip(backbone, BlockSkip(always=("layer1.1",)))
    seen: dict[str, torch.Tensor] = {}
    net.backbone.layer1[0].register_forward_hook(lambda m, i, o: seen.update(a=o))
    net.backbone.layer1[2].register_forward_pre_hook(lambda m, i: seen.update(b=i[0]))
    net(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["a"], seen["b"])


def test_knobs_and_errors(backbone: nn.Module) -> None:
    net = equip(backbone, BlockSkip())
    net.set_knobs(threshold=0.3)
    assert net.knobs()["block_skip.threshold"] == 0.3
    net.set_knobs(block_skip__threshold=0.1)
    assert net.mechanism("block_skip").config.threshold == 0.1
    with pytest.raises(KeyError, match="knob 'nope'"):
        net.set_knobs(nope=1)
    with pytest.raises(ValueError, match="cannot skip"):
        net.set_knobs(always=("stem",))
    with pytest.raises(ValueError, match="already attached"):
        net.attach(BlockSkip())
    with pytest.raises(ValueError, match="backend"):
        net.backend = "gpu"


@dataclass(frozen=True)
class EvenConfig:
    on: bool = False


class SkipEvenRows(Mechanism):
    """Test-only mechanism: skips layer2.1 for even rows of each batch when on."""

    name = "skip_even"
    config_class = EvenConfig
    knob_names = ("on",)

    def attach(self, net: DynamicNet) -> None:
        self.gate = _EvenGate(self.config.on)
        net.unit("layer2.1").add_gate(self.name, self.gate)

    def set_knob(self, knob: str, value: Any) -> None:
        self.config = replace(self.config, on=bool(value))
        self.gate.on = bool(value)


class _EvenGate(nn.Module):
    def __init__(self, on: bool) -> None:
        super().__init__()
        self.on = on
        self.proj = nn.Linear(1, 1)  # a trainable parameter, to test the trainable surface

    def decide(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.on:
            return None
        return torch.arange(x.shape[0]) % 2 == 1

    def overhead_macs(self, x: torch.Tensor) -> float:
        return 5.0 if self.on else 0.0


def test_composition_is_and_of_gates(backbone: nn.Module) -> None:
    net = equip(backbone, [BlockSkip(), SkipEvenRows()])
    x = torch.randn(4, 3, 32, 32)
    net.set_knobs(on=True)
    res = net.run(x)
    assert res.trace.units["layer2.1"].tolist() == [SKIPPED, RAN, SKIPPED, RAN]
    # skipped rows save the block, and every row pays the gate's 5-MAC overhead
    saved = net.graph.block("layer2.1").macs
    assert res.macs.tolist() == [net.static_macs - saved + 5, net.static_macs + 5] * 2
    net.set_knobs(always=("layer2.1",))
    assert (net.run(x).trace.units["layer2.1"] == SKIPPED).all()
    params = list(net.trainable_parameters())
    assert len(params) == 2  # the gate's Linear weight and bias
    assert not any(p is q for p in params for q in backbone.parameters())


def test_downsampling_block_without_shortcut_is_refused() -> None:
    class Down(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y + y

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = Down()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(x)

    net = DynamicNet(Net(), example_inputs=torch.randn(1, 3, 8, 8))
    assert net.graph.blocks == ()  # y + y merges one tensor with itself: not a residual block
    with pytest.raises(KeyError, match="no block 'down'"):
        net.unit("down")


def test_runtime_helpers_agree() -> None:
    fn = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(9, 4, 6, 6)
    run = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    with torch.no_grad():
        m = runtime.masked(x, run, fn, lambda t: t)
        g = runtime.gather_scatter(x, run, fn, lambda t: t)
        assert torch.allclose(m, g, atol=1e-6)
        assert torch.equal(g[~run], x[~run])
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert runtime.gather_scatter(x_cl, run, fn, lambda t: t).shape == x.shape
        patterns = torch.stack([run, ~run], 1)
        groups = runtime.group_by_pattern(patterns)
        assert [idx.tolist() for _, idx in groups] == [[0, 2, 3, 6, 8], [1, 4, 5, 7]]
        out = runtime.run_grouped(x, patterns, lambda xs, p: fn(xs) if bool(p[0]) else xs)
        assert torch.allclose(out, m, atol=1e-6)


def test_save_load_refuses_bad_files(tmp_path: Path, backbone: nn.Module) -> None:
    net = equip(backbone, BlockSkip(threshold=0.2))
    save(net, tmp_path / "ok")
    assert load(tmp_path / "ok").knobs() == net.knobs()

    with pytest.raises(DyveError, match="no saved dynamic network"):
        load(tmp_path / "missing")

    def variant(name: str, mutate: Any) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "dynamic.safetensors").write_bytes(
            (tmp_path / "ok" / "dynamic.safetensors").read_bytes()
        )
        desc = json.loads((tmp_path / "ok" / "dynamic.json").read_text())
        mutate(desc, d)
        if not (d / "dynamic.json").exists():
            (d / "dynamic.json").write_text(json.dumps(desc))
        return d

    cases = {
        "format": (lambda d, p: d.update(format="other/9"), "not a dyve.dynamic/1"),
        "types": (lambda d, p: d.update(mechanisms="block_skip"), "field 'mechanisms'"),
        "mech": (lambda d, p: d["mechanisms"][0].update(name="evil"), "unknown mechanism 'evil'"),
        "config": (lambda d, p: d["mechanisms"][0]["config"].update(x=1), "cannot rebuild"),
        "knob": (lambda d, p: d["knobs"]["block_skip"].update(threshold="abc"), "cannot rebuild"),
        "always": (lambda d, p: d["knobs"]["block_skip"].update(always=["stem"]), "cannot rebuild"),
        "knobs": (lambda d, p: d["knobs"].update(block_skip=3), "must be an object"),
        "kwargs": (lambda d, p: d.update(backbone_kwargs={"depth": 21}), "cannot rebuild"),
        "backbone": (
            lambda d, p: d.update(backbone="resnet32_cifar", backbone_kwargs={"depth": 32}),
            "do not fit",
        ),
        "json": (lambda d, p: (p / "dynamic.json").write_text("{not json"), "not valid JSON"),
        "pickle": (
            lambda d, p: (p / "dynamic.safetensors").write_bytes(pickle.dumps({"a": 1})),
            "not a readable safetensors",
        ),
    }
    for name, (mutate, message) in cases.items():
        with pytest.raises(DyveError, match=message):
            load(variant(name, mutate))


def test_conv_shortcut_costs_and_post_activation() -> None:
    from dyve.testing.toy import toy_bottleneck_net

    toy = toy_bottleneck_net()
    x = torch.randn(3, 3, 16, 16)
    net = equip(
        toy,
        BlockSkip(always=("stage1.0", "stage1.1", "stage2.0", "stage2.1")),
        example_inputs=x[:1],
    )
    g = net.graph
    down = g.block("stage2.0")
    assert down.shortcut == "stage2.0.downsample"
    assert down.post_act == "stage2.0.relu"  # the shared ReLU also runs after the merge
    # 1x1 conv 8->16 at 8x8 output: 16*64*8 = 8,192 MACs, charged to skipping samples
    assert down.shortcut_macs == 8_192
    res = net.run(x)
    skipped = sum(b.macs for b in g.blocks) - 8_192
    assert torch.all(res.macs == g.total_macs - skipped)
    # a skipped block yields relu(downsample(x)): never negative, like the dense block
    seen: dict[str, torch.Tensor] = {}
    net.backbone.stage2[0].register_forward_hook(lambda m, i, o: seen.update(out=o))
    net(x)
    assert seen["out"].min() >= 0
    # stage1 is skipped too, so stage2.0 reads relu(stem(x)) unchanged
    ref = torch.relu(toy.stage2[0].downsample(torch.relu(toy.stem(x))))
    assert torch.allclose(seen["out"], ref, atol=1e-6)


def test_branch_called_inside_the_add_is_not_the_shortcut() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(Res(), Res())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x)

    x = torch.randn(2, 4, 6, 6)
    net = equip(Net(), BlockSkip(always=("blocks.0",)), example_inputs=x[:1])
    assert net.graph.block("blocks.0").shortcut is None  # identity, not `body`
    with torch.no_grad():
        assert torch.equal(net(x), net.backbone.blocks[1](x))


def test_nested_units_are_refused_and_defaults_avoid_them() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.inner(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.outer = Outer()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.outer(x)

    x = torch.randn(2, 4, 6, 6)
    net = equip(Net(), BlockSkip(), example_inputs=x[:1])
    assert [b.name for b in net.graph.blocks] == ["outer", "outer.inner"]
    assert list(net.units) == ["outer.inner"]  # only the innermost block is gated
    with pytest.raises(DyveError, match="nests with"):
        net.unit("outer")


def test_eval_mode_input_checks_and_knob_spellings(backbone: nn.Module) -> None:
    net = equip(backbone, BlockSkip())
    assert not net.training
    with pytest.raises(DyveError, match="costs were counted for"):
        net.run(torch.randn(1, 3, 64, 64))
    net.set_knobs(**{"block_skip.threshold": 0.2})
    assert net.knobs()["block_skip.threshold"] == 0.2
    net.set_knobs(always="layer1.1")  # one name, not its characters
    assert net.mechanism("block_skip").config.always == ("layer1.1",)


def test_save_load_keeps_model_overrides(tmp_path: Path) -> None:
    bb = models.create("resnet20_cifar", num_classes=100)
    net = equip(bb, BlockSkip(threshold=0.1))
    save(net, tmp_path / "r")
    again = load(tmp_path / "r")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert again(x).shape == (2, 100)
        assert torch.equal(again(x), net(x))


def test_load_without_weights_keeps_the_given_backbone(tmp_path: Path) -> None:
    net = equip(models.create("resnet20_cifar"), BlockSkip(threshold=0.3))
    save(net, tmp_path / "run")
    (tmp_path / "run" / "dynamic.safetensors").unlink()
    backbone = models.create("resnet20_cifar")
    again = load(tmp_path / "run", backbone=backbone, weights=False)
    assert again.knobs() == net.knobs()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), equip(backbone, BlockSkip(threshold=0.3))(x))
    with pytest.raises(DyveError, match="needs the backbone"):
        load(tmp_path / "run", weights=False)


def test_save_without_backbone_weights_takes_the_shipped_ones(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    net = equip(models.create("resnet20_cifar", pretrained=True), BlockSkip(threshold=0.5))
    save(net, tmp_path / "small", backbone_weights=False)
    assert load_file(str(tmp_path / "small" / "dynamic.safetensors")) == {}
    again = load(tmp_path / "small")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
    # a backbone that is not the shipped one is refused, not silently replaced
    with torch.no_grad():
        next(net.backbone.parameters()).add_(1.0)
    with pytest.raises(DyveError, match="differs from resnet20_cifar's shipped weights"):
        save(net, tmp_path / "bad", backbone_weights=False)
