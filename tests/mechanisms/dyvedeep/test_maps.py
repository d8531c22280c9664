"""DyVEDeep's effort maps (what a report draws) agree with the trace's counts."""

from __future__ import annotations

from pathlib import Path

import torch

from dyve import data
from dyve.dynamic import load
from dyve.models import create, model_info

# the point calibrated for the fewest ops: it uses every knob, SDSS included
RUN = Path(__file__).resolve().parents[3] / "docs" / "results" / "dyvedeep" / "resnet56_cifar"


def test_maps_count_what_the_trace_counts() -> None:
    backbone = create("resnet56_cifar", pretrained=True)
    net = load(RUN, backbone=backbone, weights=False).eval()
    mech = net.mechanisms[0]
    ds = data.load_images("sample", "test", limit=4)
    x, _ = next(data.batches(ds, 4, model_info(backbone).norm))
    maps = mech.effort_maps(net, x)
    assert mech.recording is None  # switched off again
    net.backend = "emulated"
    with torch.no_grad():
        detail = net.run(x).trace.detail
    assert set(maps) == {s for s, op in mech.ops.items() if op.active()}  # sites with a knob on
    some_interpolated = False
    for site, m in maps.items():
        unit = net.sites[site]
        cout, cin = unit.module.weight.shape[:2]
        d = detail[site]
        not_full = (1 - m["computed"].double()).sum((1, 2)) * cout
        assert torch.allclose(not_full, d["interpolated"] + d["stopped"], atol=1e-3), site
        assert torch.allclose(m["approximated"] * cin, d["channels_approximated"]), site
        some_interpolated |= bool((d["interpolated"] > 0).any())
    assert some_interpolated  # the calibrated point really uses SDSS on these images
