"""DyVEDeep's effort maps (what a report draws) agree with the trace's counts."""

from __future__ import annotations

import torch

from dyve import data
from dyve.demo import runs_dir
from dyve.report import load_run


def test_maps_count_what_the_trace_counts() -> None:
    subject = load_run(runs_dir() / "dyvedeep_resnet56")
    net = subject.model
    mech = net.mechanisms[0]
    ds = data.load_images("sample", "test", limit=4)
    x, _ = next(data.batches(ds, 4, subject.norm))
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
