"""Latency of a dynamic network against its dense backbone, eager and compiled, in one run.

:func:`bench` times three things interleaved (same machine state, see
:mod:`dyve.eval.latency`): the dense backbone in eager mode, the dense backbone under
``torch.compile`` (inductor with ``freezing``: BN folded into the convs and weights
pre-packed; on image batches the network and its inputs in ``channels_last``, which ran as
fast or faster at every setting measured, see ``benchmarks/NOTES.md``), and the dynamic
network on the ``fast`` back-end. When that
network runs as one native program (DyVEDeep, LC-Net, ConvNet-AIG, a network selection's
networks), the dense backbone lowered to the same runtime is timed too (``dense_native``,
called as the dynamic network calls its program: with the same validity check, or both
frozen, :mod:`dyve.dynamic.frozen`):
the speedup against it is the skipped work's share, the rest is the runtime's. Batch 1 runs
on one thread, one image per call, cycling through the given images; the large batch runs
on two threads. A time (``*_ms``) is the mean over the images of each image's median (a
dynamic network's time depends on the image: the median call would be a typical image,
not what the images cost on average; ``*_median_ms`` keeps it), and a speedup is a ratio
of those times from the same run. ``net.run`` over the same images gives the mean
executed MACs per sample, so the cost reduction (static / executed) sits next to the
measured speedup.

A network selection is timed the same way against its most accurate network (given as
``reference``; its static MACs are the reduction's numerator). ``dyve bench RUN_DIR``
(see :mod:`dyve.cli.bench_cmd`) writes the result to ``RUN_DIR/bench.json``.

Mechanism & limitations: dense eager is timed twice. ``dense_eager`` runs the backbone
exactly as it was given (NCHW, BN unfolded), so it and "dynamic" differ only by the gates;
``dense_eager_tuned`` runs a copy as eager PyTorch runs fastest on a CPU
(:func:`dyve.graph.fold.tuned_eager`: BN folded, ``channels_last``, on inputs already in
that layout; 24-40 % faster at batch 1 on the CIFAR nets here, ``benchmarks/NOTES.md``).
``speedup_vs_eager_best`` is against the faster of the two: the eager figure to quote. The
compiled baseline is compiled once per batch shape and thread count and warmed up before
timing; the dynamic network is not compiled (its control flow depends on the data) and
takes its inputs contiguous, as given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from dyve._io import jsonable
from dyve.cost import static_cost
from dyve.dynamic.frozen import Freezable, frozen_while
from dyve.dynamic.net import DynamicNet
from dyve.dynamic.save import describe
from dyve.errors import DyveError
from dyve.eval.latency import Timing, cycling, interleaved, machine, num_threads
from dyve.graph.fold import tuned_eager, tuned_input
from dyve.mechanisms.dyvedeep import native
from dyve.version import __version__

FORMAT = "dyve.bench/3"  # /3: dense_eager_tuned and speedup_vs_eager_best; the compiled
# baseline in channels_last on image batches (/2: NCHW; some /2 files have dense_eager_cl, a
# channels_last copy without BN folding); /2: *_ms is the mean over images (was the median)
#: Inductor options of the compiled dense baseline.
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True}
#: batch-1 timings per image that ``dyve bench`` aims for (repeats / images)
VISITS = 3
#: The timed variants, in the order they run in each round.
VARIANTS = (
    "dense_eager",
    "dense_eager_tuned",
    "dense_compiled",
    "dense_native",
    "dynamic",
    "exported",
)


def _compiled(dense: nn.Module, warm: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """``torch.compile`` of a fresh copy of ``dense`` for ``warm``'s shape, warmed up
    (channels_last for image batches, as :func:`~dyve.graph.fold.tuned_input` gives them)."""
    model = copy.deepcopy(dense)
    if warm.dim() == 4:  # Module.to's stubs lack memory_format
        model = cast(Any, model).to(memory_format=torch.channels_last)
    fn = torch.compile(model, dynamic=False, options=COMPILE_OPTIONS)
    try:
        fn(warm)
        fn(warm)
    except Exception as exc:  # inductor needs a working C++ compiler on CPU
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DyveError(
            f"torch.compile failed ({type(exc).__name__}: {first[:200]}); "
            "rerun with --no-compile (compile=False) to skip the compiled baseline"
        ) from exc
    return fn


def _dense_native(net: nn.Module, dense: nn.Module, x: torch.Tensor) -> Any:
    """The dense network in the dynamic system's own runtime (a native program), if any."""
    fn = getattr(net, "dense_runner", None)
    return fn(dense, x) if fn is not None else None


def _setting(
    net: nn.Module,
    dense: nn.Module,
    tuned: nn.Module,
    batches: list[torch.Tensor],
    *,
    static: float,
    threads: int,
    repeats: int,
    compile: bool,
    exported: nn.Module | None = None,
) -> dict[str, Any]:
    """Time one batch setting and count its executed MACs (``tuned``: the dense network as
    :func:`~dyve.graph.fold.tuned_eager` gives it)."""
    with num_threads(threads):
        fns: dict[str, Callable[[], Any]] = {"dense_eager": cycling(dense, batches)}
        laid = [tuned_input(b) for b in batches]
        fns["dense_eager_tuned"] = cycling(tuned, laid)
        if compile:
            fns["dense_compiled"] = cycling(_compiled(dense, laid[0]), laid)
        native = _dense_native(net, dense, batches[0])
        if native is not None:
            fns["dense_native"] = cycling(native, batches)
        fns["dynamic"] = cycling(net, batches)
        if exported is not None:
            for b in batches[:2]:  # compile outside the timed rounds
                exported(b)
            fns["exported"] = cycling(exported, batches)
        t = interleaved(fns, repeats=repeats, cycle=len(batches))
    res = net.run(torch.cat(batches))  # type: ignore[operator]
    mean_macs = float(res.macs.mean())
    out: dict[str, Any] = {
        "batch": int(batches[0].shape[0]),
        "threads": threads,
        "repeats": repeats,
        "images": sum(int(b.shape[0]) for b in batches),
    }
    timings: dict[str, Timing | None] = {k: t.get(k) for k in VARIANTS}
    for k, tk in timings.items():
        out[f"{k}_ms"] = round(tk.mean_ms, 4) if tk else None
        out[f"{k}_median_ms"] = round(tk.median_ms, 4) if tk else None
        out[f"{k}_p10_ms"] = round(tk.p10_ms, 4) if tk else None
        out[f"{k}_p90_ms"] = round(tk.p90_ms, 4) if tk else None
    dyn = t["dynamic"].mean_ms
    comp = timings["dense_compiled"]
    eager, eager_tuned = t["dense_eager"].mean_ms, t["dense_eager_tuned"].mean_ms
    best = min(eager, eager_tuned)
    out["speedup_vs_eager"] = round(eager / dyn, 4)
    out["speedup_vs_eager_tuned"] = round(eager_tuned / dyn, 4)
    out["dense_eager_best"] = "dense_eager_tuned" if eager_tuned < eager else "dense_eager"
    out["speedup_vs_eager_best"] = round(best / dyn, 4)
    out["speedup_vs_compiled"] = round(comp.mean_ms / dyn, 4) if comp else None
    nat = timings["dense_native"]
    out["speedup_vs_dense_native"] = round(nat.mean_ms / dyn, 4) if nat else None
    if "exported" in t:
        exp = t["exported"].mean_ms
        out["exported_vs_eager"] = round(eager / exp, 4)
        out["exported_vs_eager_best"] = round(best / exp, 4)
        out["exported_vs_compiled"] = round(comp.mean_ms / exp, 4) if comp else None
        out["exported_vs_dynamic"] = round(dyn / exp, 4)
    out["static_macs"] = static
    out["mean_macs"] = mean_macs
    out["cost_reduction"] = static / mean_macs
    out["cost_mode"] = res.trace.cost.cost_mode
    return out


def bench(
    net: nn.Module,
    data_batch1: torch.Tensor,
    data_batch64: torch.Tensor,
    *,
    repeats: int = 30,
    compile: bool = True,
    repeats_b64: int | None = None,
    threads_b1: int = 1,
    threads_b64: int = 2,
    exported: nn.Module | None = None,
    reference: tuple[nn.Module, dict[str, Any]] | None = None,
    frozen: bool = False,
) -> dict[str, Any]:
    """Time ``net`` (fast back-end) against its dense backbone, eager and compiled.

    Args:
        net: the dynamic network (its back-end is set to ``fast`` for the run, then
            restored), or another system with ``forward`` and ``run`` (a network selection),
            given with ``reference``.
        data_batch1: normalised images ``[N, C, H, W]``; each batch-1 call takes the next one
            (cycling). Pass ``repeats / VISITS`` images so that each is timed
            :data:`VISITS` times: its median then drops a one-off stall, which a mean over
            single timings would carry.
        data_batch64: one normalised batch, timed whole (its size is recorded as ``batch``).
        repeats: timed calls at batch 1 (mean over images of each image's median, with the
            median call and p10/p90).
        compile: also time the dense backbone under ``torch.compile`` (else recorded null).
        repeats_b64: timed repeats of the large batch (default ``max(3, repeats // 3)``).
        threads_b1, threads_b64: torch intra-op threads of each setting.
        exported: the same network exported (:mod:`dyve.export`), timed as a fourth variant.
        reference: for a system that is not a DynamicNet, the dense network it is timed
            against (whose static MACs are the reduction's numerator) and the result's
            description (``backbone``, ``backbone_kwargs``, ``mechanisms``, ``knobs``).
        frozen: time ``net`` frozen (:mod:`dyve.dynamic.frozen`: its native programs are
            not checked against the weights on each call, as the compiled baseline's
            ``freezing``), and the dense native reference frozen alike; restored after.

    Returns:
        The ``bench.json`` content: ``b1`` and ``b64`` settings plus the run's description.

    Example:
        >>> r = bench(net, x[:30], x[:64], repeats=30)  # doctest: +SKIP
        >>> r["b1"]["speedup_vs_compiled"], r["b1"]["cost_reduction"]  # doctest: +SKIP
    """
    if repeats < 1 or (repeats_b64 is not None and repeats_b64 < 1):
        raise DyveError("repeats must be >= 1")
    if data_batch1.dim() < 2 or len(data_batch1) == 0 or len(data_batch64) == 0:
        raise DyveError("bench needs at least one image for each batch setting")
    r64 = repeats_b64 if repeats_b64 is not None else max(3, repeats // 3)
    if isinstance(net, DynamicNet):
        desc = describe(net)
        dense, static = net.detach(), float(net.static_macs)
        about = {
            "backbone": net.backbone_id,
            "backbone_kwargs": desc["backbone_kwargs"],
            "mechanisms": desc["mechanisms"],
            "knobs": jsonable(net.knobs()),
        }
        old_backend = net.backend
        net.backend = "fast"
    elif reference is None:
        raise DyveError(
            f"bench: a {type(net).__name__} needs reference=(dense network, description)"
        )
    else:
        dense, about = reference
        static = float(static_cost(dense).total_macs)
    if frozen and not isinstance(net, Freezable):
        raise DyveError(f"bench: a {type(net).__name__} has no native programs to freeze")
    was_training = net.training
    net.eval()
    tuned, tuned_about = tuned_eager(dense, data_batch1[:1])
    try:
        with torch.no_grad(), frozen_while(*([net] if frozen else [])):
            b1 = _setting(
                net,
                dense,
                tuned,
                [data_batch1[i : i + 1] for i in range(len(data_batch1))],
                static=static,
                threads=threads_b1,
                repeats=repeats,
                compile=compile,
                exported=exported,
            )
            b64 = _setting(
                net,
                dense,
                tuned,
                [data_batch64],
                static=static,
                threads=threads_b64,
                repeats=r64,
                compile=compile,
                exported=exported,
            )
    finally:
        if isinstance(net, DynamicNet):
            net.backend = old_backend
        net.train(was_training)
    native_timed = any(s.get("dense_native_ms") is not None for s in (b1, b64))
    return {
        "format": FORMAT,
        "dyve_version": __version__,
        "torch": torch.__version__,
        "machine": machine(),
        **about,
        "backend": "fast",
        "compile": compile,
        "compile_options": dict(COMPILE_OPTIONS) if compile else None,
        # since session 17 the dense native reference pays the dynamic network's validity
        # check (Program.checked); earlier files timed it without (a few % in its favour)
        "dense_native_call": "checked",
        # True: the dynamic network and the dense native reference were timed frozen (their
        # programs take the weights as constants, no per-call check of them; absent: False)
        "frozen": frozen,
        # the native kernels' build when a native program was timed (their sources' hash)
        "kernels": native.build() if native_timed else None,
        # dense_eager: the backbone as given; dense_eager_tuned: see tuned_eager
        "eager": {
            "as_given": {"memory_format": "contiguous", "bn_folded": False},
            "tuned": tuned_about,
        },
        "compiled_memory_format": tuned_about["memory_format"],
        "exported": exported is not None,
        "static_macs": static,
        "b1": b1,
        "b64": b64,
    }


def eager_speedup(setting: dict[str, Any]) -> float | None:
    """The eager speedup of a bench setting to quote: against the faster eager variant
    (``dyve.bench/3``), else, in older files, against eager as given."""
    best = setting.get("speedup_vs_eager_best")
    return best if best is not None else setting.get("speedup_vs_eager")


def eager_caveat(benches: list[dict[str, Any]]) -> str | None:
    """The sentence a results page needs when some of its ``bench.json`` files predate the
    tuned eager baseline (None when every one has it)."""
    old = [b for b in benches if b.get("b1", {}).get("speedup_vs_eager_best") is None]
    if not old:
        return None
    return (
        f"{len(old)} of {len(benches)} benches here predate the tuned eager baseline "
        "(`dyve.bench/3`): their *vs eager* is against the dense network as given (NCHW, BN "
        "unfolded), which eager PyTorch runs markedly slower than a copy in channels_last "
        "with BN folded, so those speedups read high (both baselines on the same networks: "
        "docs/results/dyvedeep-speed.md; the shipped runs against the tuned one: "
        "docs/results/export.md)."
    )


def format_table(result: dict[str, Any]) -> str:
    """The readable table ``dyve bench`` prints."""

    def ms(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else "-"

    def x(v: float | None) -> str:
        return f"{v:.2f}x" if v is not None else "-"

    mechs = ", ".join(m["name"] for m in result["mechanisms"]) or "none"
    lines = [
        f"{result['backbone']} + {mechs}  (knobs: {result['knobs']})"
        + ("  frozen: programs not checked against the weights" if result.get("frozen") else ""),
        "times: mean ms per image (each image's median; median call and p10-p90 in "
        "bench.json), interleaved in one run; "
        "costs: MACs per sample (executed)",
        f"{'setting':<8} {'threads':>7} {'eager':>9} {'eager tuned':>11} {'compiled':>9} "
        f"{'dynamic':>9} {'vs eager':>9} {'vs compiled':>11} {'MACs/sample':>12} "
        f"{'static/exec':>11}",
    ]
    for key in ("b1", "b64"):
        s = result[key]
        lines.append(
            f"{'b=' + str(s['batch']):<8} {s['threads']:>7} {ms(s['dense_eager_ms']):>9} "
            f"{ms(s.get('dense_eager_tuned_ms')):>11} {ms(s['dense_compiled_ms']):>9} "
            f"{ms(s['dynamic_ms']):>9} {x(s.get('speedup_vs_eager_best')):>9} "
            f"{x(s['speedup_vs_compiled']):>11} "
            f"{s['mean_macs'] / 1e6:>10.2f} M {x(s['cost_reduction']):>11}"
        )
    tuned = result.get("eager", {}).get("tuned", {})
    lines.append(
        "eager: the dense backbone as given (NCHW); eager tuned: a copy in "
        f"{tuned.get('memory_format', '?')}"
        + (", BN folded" if tuned.get("bn_folded") else "")
        + "; vs eager: against the faster of the two; compiled: torch.compile (freezing), "
        f"{result.get('compiled_memory_format', 'contiguous')}"
    )
    if any(result[k].get("dense_native_ms") is not None for k in ("b1", "b64")):
        for key in ("b1", "b64"):
            s = result[key]
            lines.append(
                f"dense native b={s['batch']}: {ms(s.get('dense_native_ms'))} ms (the dense "
                "backbone in the dynamic network's own native runtime); the dynamic network "
                f"runs {x(s.get('speedup_vs_dense_native'))} faster than it (the skipped "
                "work's share of the speedup)"
            )
    if result.get("exported"):
        for key in ("b1", "b64"):
            s = result[key]
            lines.append(
                f"exported b={s['batch']}: {ms(s['exported_ms'])} ms, "
                f"{x(s.get('exported_vs_eager_best'))} vs dense eager, "
                f"{x(s['exported_vs_compiled'])} vs dense compiled, "
                f"{x(s['exported_vs_dynamic'])} vs the eager dynamic network"
            )
    lines.append(
        f"static: {result['static_macs'] / 1e6:.2f} M MACs/sample; speedups are dense / dynamic "
        "time; static/exec = static MACs / mean executed MACs"
    )
    lines.append(f"machine: {result['machine']['cpu']}, torch {result['torch']}")
    return "\n".join(lines)
