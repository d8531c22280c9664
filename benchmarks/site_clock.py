"""Does a site's time measured alone match its time inside the whole-network program?

The time search of DyVEDeep's calibration (``--cost time``) times each site's native
kernel alone on stored inputs (:meth:`~dyve.mechanisms.dyvedeep.profile.SiteProfile.time_knobs`).
This checks that proxy on a committed calibrated point: per site, the knobs-off / calibrated
time ratio measured alone (on ``N`` val images, one thread, as the search does) next to the
same ratio of the site's op inside the program (``Program.run(x, seconds)`` on 8 images).

    python benchmarks/site_clock.py                          # resnet56_cifar, ops point
    python benchmarks/site_clock.py vgg16_bn_cifar_w025 --point time
"""

from __future__ import annotations

import argparse

import torch
from dyvedeep_speed import POINTS, _op_us, build, programs

from dyve import data
from dyve.eval.latency import machine, num_threads
from dyve.mechanisms.dyvedeep.kernel import SiteKnobs
from dyve.mechanisms.dyvedeep.profile import capture, site_profile
from dyve.models import model_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="resnet56_cifar")
    p.add_argument("--point", choices=list(POINTS), default="ops")
    p.add_argument("-n", type=int, default=128, help="val images the sites are timed on")
    args = p.parse_args()
    net = build(args.model, args.point).eval()
    mech = net.mechanisms[0]
    x, _ = next(
        data.batches(
            data.load_images("cifar10-jpeg", "val", limit=args.n),
            args.n,
            model_info(net.backbone).norm,
        )
    )
    sites = list(mech.ops)
    with torch.no_grad():
        inputs = capture(net, x, sites)
    few = [x[i : i + 1] for i in range(8)]
    off, on = programs(net, few[0])
    with torch.no_grad(), num_threads(1):
        a, b = _op_us(off, few, 10), _op_us(on, few, 10)
    where = {o["name"]: k for k, o in enumerate(on.ops) if o["kind"] == "site"}
    m = machine()
    print(f"{m['cpu']}, 1 thread, torch {m['torch']}; {args.model} ({args.point} point)")
    print(f"sites timed alone on {args.n} val images; in the program on 8 (median per op)")
    print(f"{'site':24s} {'knobs':10s} {'alone off/on':>12s} {'in program':>10s}")
    alone, inside = [0.0, 0.0], [0.0, 0.0]
    for s in sites:
        k = mech.ops[s].fast_knobs()
        if not k.active or s not in where:
            continue
        prof = site_profile(mech, net.sites[s], inputs[s], (0.5,))
        t0, t1 = (
            prof.time_knobs(mech, net.sites[s], SiteKnobs()),
            prof.time_knobs(mech, net.sites[s], k),
        )
        p0, p1 = a[where[s]], b[where[s]]
        alone = [alone[0] + t0, alone[1] + t1]
        inside = [inside[0] + p0, inside[1] + p1]
        lab = "+".join(
            n for n, v in (("spet", k.spet), ("sdss", k.sdss), ("sfma", k.sfma)) if v is not None
        )
        print(f"{s:24s} {lab:10s} {t0 / t1:12.2f} {p0 / p1:10.2f}")
    print(f"{'all sites with knobs':35s} {alone[0] / alone[1]:12.2f} {inside[0] / inside[1]:10.2f}")


if __name__ == "__main__":
    main()
