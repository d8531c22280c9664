"""The DyVEDeep emulation against a literal, neuron-by-neuron implementation.

``reference`` below is the sequential algorithm the docs describe, written as plain loops in
float64: it outputs what a really-skipping implementation outputs and counts every
multiply, add and compare it makes. The vectorised emulation must agree exactly, on
outputs and on op counts, for every knob alone and combined.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dyve.mechanisms.dyvedeep.kernel import (
    Geometry,
    SiteKnobs,
    checkpoint_terms,
    grid,
    make_plan,
    run_site,
)


def reference(x, w, b, knobs, *, relu, stride_sdss, statistic, checkpoint, pad, stride):
    n_, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    k = cin * kh * kw
    m = checkpoint_terms(checkpoint, k)
    orders = []
    for o in range(cout):
        flat = w[o].flatten()
        idx = sorted(range(k), key=lambda i: -abs(float(flat[i])))
        orders.append((set(idx[:m]), idx))
    out = torch.zeros(n_, cout, ho, wo, dtype=torch.float64)
    macs, ops = [0] * n_, [0] * n_
    for n in range(n_):
        const = [float(b[o]) for o in range(cout)]
        approx = set()
        if knobs.sfma is not None:
            for c in range(cin):
                v = x[n, c].flatten()
                mean = float(v.mean())
                if statistic == "variance":
                    stat = float(((v - mean) ** 2).mean())
                    ops[n] += 5 * h * wd + 1
                else:
                    stat = float(v.max() - v.min())
                    ops[n] += 2 * h * wd + 2
                if stat <= knobs.sfma:
                    approx.add(c)
                    ops[n] += 0 if statistic == "variance" else 2 * h * wd
                    for o in range(cout):
                        const[o] += mean * float(w[o, c].sum())
                        ops[n] += 2
        nonneg = bool(x[n].min() >= 0)

        def neuron(o, r, c0, n=n, const=const, approx=approx, nonneg=nonneg):
            top, idx = orders[o]
            flat = w[o].flatten()

            def term(i):
                c, rest = divmod(i, kh * kw)
                i_, j_ = divmod(rest, kw)
                return float(flat[i]) * float(xp[n, c, r * stride + i_, c0 * stride + j_])

            live = [i for i in idx if i // (kh * kw) not in approx]
            acc, done, cmp = const[o], set(), 0
            if knobs.spet is not None:
                for i in live:
                    if i in top:
                        acc += term(i)
                        done.add(i)
                cmp += 1
                if acc <= knobs.spet:
                    return 0.0, len(done), cmp
            if knobs.exact and nonneg:
                for i in live:
                    if i not in done and float(flat[i]) > 0:
                        acc += term(i)
                        done.add(i)
                cmp += 1
                if acc <= 0:
                    return 0.0, len(done), cmp
            for i in live:
                if i not in done:
                    acc += term(i)
                    done.add(i)
            return (max(acc, 0.0) if relu else acc), len(done), cmp

        sdss = knobs.sdss is not None and ho * wo > 1
        s = stride_sdss
        for o in range(cout):
            for r, c in itertools.product(range(ho), range(wo)):
                if sdss and not (r % s == 0 and c % s == 0):
                    continue
                val, mm, cmp = neuron(o, r, c)
                out[n, o, r, c] = val
                macs[n] += mm
                ops[n] += 2 * mm + cmp
            if not sdss:
                continue
            for r, c in itertools.product(range(ho), range(wo)):
                if r % s == 0 and c % s == 0:
                    continue
                rows = [r // s * s] if r % s == 0 else [r // s * s, r // s * s + s]
                cols = [c // s * s] if c % s == 0 else [c // s * s, c // s * s + s]
                pts = [(a, bb) for a in rows for bb in cols if a < ho and bb < wo]
                vals = [float(out[n, o, a, bb]) for a, bb in pts]
                sig = vals if relu else [abs(v) for v in vals]
                ops[n] += len(pts)  # one compare per neighbour
                if max(sig) <= knobs.sdss:
                    out[n, o, r, c] = sum(vals) / len(vals)
                    ops[n] += len(pts)
                else:
                    val, mm, cmp = neuron(o, r, c)
                    out[n, o, r, c] = val
                    macs[n] += mm
                    ops[n] += 2 * mm + cmp
    return out, macs, ops


def _inputs(seed: int, n: int = 3, cin: int = 4, size: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, cin, size, size, generator=g, dtype=torch.float64))
    x[0, 1] = 0.0  # a dead channel (SFMA approximates it exactly)
    x[1, 2] = 0.7  # a constant channel
    x[2] = torch.randn(cin, size, size, generator=g, dtype=torch.float64)  # signed input
    return x


KNOBS = [
    SiteKnobs(spet=0.1),
    SiteKnobs(exact=True),
    SiteKnobs(spet=-0.2, exact=True),
    SiteKnobs(sdss=0.4),
    SiteKnobs(sfma=0.05),
    SiteKnobs(spet=0.0, exact=True, sdss=0.3, sfma=0.05),
]


CASES = [
    (k, relu)
    for k in KNOBS
    for relu in (True, False)
    if relu or (k.spet is None and not k.exact)  # SPET applies to ReLU sites only
]


@pytest.mark.parametrize(
    ("knobs", "relu"),
    CASES,
    ids=lambda v: repr(v)[9:-1] if isinstance(v, SiteKnobs) else f"relu={v}",
)
@pytest.mark.parametrize("statistic", ["variance", "range"])
@pytest.mark.parametrize(("stride", "pad", "sdss_stride"), [(1, 1, 2), (2, 1, 2), (1, 0, 3)])
def test_emulation_matches_the_sequential_algorithm(
    knobs: SiteKnobs, relu: bool, statistic: str, stride: int, pad: int, sdss_stride: int
) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) * 0.3
    x = _inputs(2)
    plan = make_plan(w, b, 0.3)
    geom = Geometry(False, (stride, stride), (pad, pad), (1, 1))
    res = run_site(x, plan, geom, knobs, relu=relu, sdss_stride=sdss_stride, statistic=statistic)
    out, macs, ops = reference(
        x,
        w,
        b,
        knobs,
        relu=relu,
        stride_sdss=sdss_stride,
        statistic=statistic,
        checkpoint=0.3,
        pad=pad,
        stride=stride,
    )
    assert torch.allclose(res.out, out, atol=1e-10), (res.out - out).abs().max()
    assert res.macs.tolist() == macs
    assert res.scalar_ops.tolist() == ops
    dense = 2 * 5 * 4 * 9 * out.shape[2] * out.shape[3]
    p = res.parts
    saved = p["sfma_saved"] + p["sdss_saved"] + p["spet_saved"] + p["exact_saved"]
    rebuilt = dense - saved + p["overhead"]
    assert torch.equal(rebuilt, res.scalar_ops), "the parts must add up to the total"


def test_linear_site_with_spet() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 10, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = torch.relu(torch.randn(4, 10, generator=g, dtype=torch.float64))
    knobs = SiteKnobs(spet=0.0, exact=True)
    res = run_site(x, make_plan(w, b, 3), Geometry(True), knobs, relu=True)
    out, macs, ops = reference(
        x[:, :, None, None],
        w[:, :, None, None],
        b,
        knobs,
        relu=True,
        stride_sdss=2,
        statistic="variance",
        checkpoint=3,
        pad=0,
        stride=1,
    )
    assert torch.allclose(res.out, out[:, :, 0, 0], atol=1e-10)
    assert res.macs.tolist() == macs
    assert res.scalar_ops.tolist() == ops


def test_exact_mode_is_lossless_on_non_negative_inputs() -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 6, 3, 3, generator=g)
    b = torch.randn(8, generator=g)
    x = torch.relu(torch.randn(5, 6, 9, 9, generator=g))
    geom = Geometry(False, (1, 1), (1, 1), (1, 1))
    res = run_site(x, make_plan(w, b, 0.25), geom, SiteKnobs(exact=True), relu=True)
    dense = torch.relu(F.conv2d(x, w, b, padding=1))
    assert torch.allclose(res.out, dense, atol=1e-5)
    assert bool((res.macs < 8 * 6 * 9 * 81).all()), "exact mode should skip negative terms"


def test_sdss_grid_layout() -> None:
    lay = grid(5, 4, 2)
    assert lay.kind.tolist()[0] == [0, 1, 0, 1]
    assert lay.kind.tolist()[1] == [2, 3, 2, 3]
    # row 4 is on the grid; column 3 has no grid column to its right
    assert lay.count.tolist()[1] == [2, 4, 2, 2]
    assert lay.count.tolist()[4] == [0, 2, 0, 1]


def test_checkpoint_terms() -> None:
    assert checkpoint_terms(0.25, 144) == 36
    assert checkpoint_terms(5, 144) == 5
    assert checkpoint_terms(1000, 144) == 144
    with pytest.raises(ValueError, match="checkpoint"):
        checkpoint_terms(0, 10)
