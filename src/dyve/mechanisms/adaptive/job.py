"""``dyve exits fit`` and ``dyve select fit``: cache, fit, sweep, run for real, write a run.

Both jobs: run the networks once over the splits and cache what the policies read
(``cache/<split>.safetensors``, reused on a rerun), fit the learned policy per lambda on
the fit split and evaluate every policy once on the eval split (:mod:`.study`), then
execute the chosen operating point for real on the eval split (fast back-end, executed
cost) and time it at batch 1 against the most accurate single network, interleaved in the
same run. The run directory gets ``config.json``, ``curves.json``, ``curve.png``,
``metrics.json`` and the saved model (early exit: a dynamic network; selection: the
policies), each written atomically.

Splits: policies must be fitted on data the networks did not train on. With ``auto``,
that is ``val`` when every network's weights held val out, else the halves of test
(``test-a`` to fit, ``test-b`` to report; the paper's protocol on ImageNet's val set).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dyve import data as dyve_data
from dyve._io import read_json, write_json
from dyve.eval.latency import cycling, interleaved, machine, num_threads
from dyve.eval.paired import DEFAULT_RULE, check_rule
from dyve.graph.fold import tuned_eager, tuned_input
from dyve.mechanisms.adaptive.heads import load_cache, save_cache, train_conv_head, train_head
from dyve.mechanisms.adaptive.study import LAMS, Study, plot
from dyve.train.dist import Dist

if TYPE_CHECKING:
    from dyve.mechanisms.adaptive.early_exit import ExitHead

#: one process (no torchrun)
SINGLE = Dist()


@dataclass(frozen=True)
class JobConfig:
    """What a job ran with (``config.json``)."""

    models: tuple[str, ...]
    data: str = "cifar10-jpeg"
    fit_split: str = "auto"
    eval_split: str = "auto"
    exits: tuple[str, ...] | None = None
    every: int = 0
    pool: int = 4
    #: conv layers per exit head (:attr:`~.early_exit.EarlyExitConfig.convs`; 0 = linear)
    convs: int = 0
    features: str = "both"
    budget_pp: float = 1.0
    #: the budget holds this one-sided confidence bound of the paired loss on the fit split
    confidence: float | None = 0.9
    #: judge each lambda out of sample: fitted on one half of the fit split, judged on the other
    crossfit: bool = True
    #: how the operating point is chosen among the lambdas (:func:`dyve.eval.paired.choose`)
    rule: str = DEFAULT_RULE
    lams: tuple[float, ...] = LAMS
    limit: int | None = None
    latency_images: int = 200
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_rule(self.rule)


def load_split(cfg: JobConfig, split: str) -> dyve_data.ImageSet:
    """Split ``split`` of ``cfg.data`` (its first ``cfg.limit`` images when set)."""
    ds = dyve_data.load(cfg.data, split)
    return ds.subset(slice(0, cfg.limit)) if cfg.limit else ds


def cached(
    out: Path,
    key: str,
    data: dyve_data.ImageSet,
    make: Callable[[dyve_data.ImageSet], dict[str, torch.Tensor]],
    ddp: Dist = SINGLE,
) -> dict[str, torch.Tensor]:
    """``out/cache/<key>.safetensors`` of ``make(data)``, computed once (a rerun reuses it).

    Under torchrun the rows are computed in shards, one per process, and gathered
    (:meth:`Dist.gather_rows`); rank 0 writes the file.
    """
    path = out / "cache" / f"{key}.safetensors"
    if path.is_file():
        return load_cache(path)
    c = ddp.gather_rows(make, data)
    if ddp.main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_cache(c, path)
    ddp.barrier()
    return c


def mean_latency(
    fns: dict[str, Callable[[torch.Tensor], Any]], images: Sequence[torch.Tensor], passes: int = 3
) -> dict[str, float]:
    """Mean batch-1 latency (ms, one thread) per callable over ``images``.

    The callables take turns on each image (interleaved, same run) and every image is timed
    ``passes`` times; per callable, the mean over the images of each image's median
    (:attr:`~dyve.eval.latency.Timing.mean_ms`): a dynamic model's time depends on the
    image, so the mean over real images is what a user pays.
    """
    with num_threads(1), torch.no_grad():
        t = interleaved(
            {k: cycling(fn, images) for k, fn in fns.items()},
            repeats=passes * len(images),
            cycle=len(images),
        )
    return {k: v.mean_ms for k, v in t.items()}


def tuned_reference(reference: torch.nn.Module, example: torch.Tensor) -> Callable[[Any], Any]:
    """The reference as eager PyTorch runs it fastest (:func:`~dyve.graph.fold.tuned_eager`:
    BN folded, channels_last), taking inputs as the system does: each call converts its
    input's layout (a few microseconds against milliseconds)."""
    tuned = tuned_eager(reference, example)[0]
    return lambda x: tuned(tuned_input(x))


def latency_metrics(lat: dict[str, float], images: int, frozen: bool) -> dict[str, Any]:
    """The timing fields of ``metrics.json`` from :func:`mean_latency`'s result
    (``baseline``: the reference in eager PyTorch as given; ``baseline_tuned``: as
    :func:`tuned_reference` runs it; ``baseline_native``: in the native runtime). The
    speedup is against the faster eager baseline."""
    eager = min(lat["baseline"], lat.get("baseline_tuned", lat["baseline"]))
    out = {
        "latency_ms_b1": lat["dynamic"],
        "baseline_latency_ms_b1": eager,
        "baseline_as_given_ms_b1": lat["baseline"],
        "baseline_tuned_ms_b1": lat.get("baseline_tuned"),
        "speedup_b1": eager / lat["dynamic"],
        "latency_images": images,
        # the system and its native references were timed frozen (dyve.dynamic.frozen)
        "latency_frozen": frozen,
        "machine": machine(),
    }
    if "baseline_native" in lat:  # the reference also timed in the system's native runtime
        out["baseline_native_latency_ms_b1"] = lat["baseline_native"]
        out["speedup_vs_native_b1"] = lat["baseline_native"] / lat["dynamic"]
    return out


def write_study(out: Path, study: Study, title: str) -> None:
    """``curves.json`` and ``curve.png``."""
    write_json(out / "curves.json", study.as_dict())
    plot(study, out / "curve.png", title)


def base_metrics(
    study: Study, cfg: JobConfig, fit: str, held: str, n: int, executed: dict[str, float]
) -> dict[str, Any]:
    """The metrics both jobs write (``top1`` etc. are the executed run's)."""
    ref = study.single[study.reference]
    chosen = study.learned[study.chosen] if study.chosen is not None else None
    return {
        "top1": executed["top1"],
        "baseline_top1": ref["top1"],
        "baseline": study.reference,
        "macs_per_sample": executed["macs_mean"],
        "baseline_macs_per_sample": ref["macs_mean"],
        "cost_reduction": ref["macs_mean"] / executed["macs_mean"],
        "cost_mode": "executed",
        "cost_convention": "MACs per sample (FLOPs = 2 x MACs)",
        "split": held,
        "fit_split": fit,
        "n": n,
        "dataset": cfg.data,
        "budget_pp": cfg.budget_pp,
        "confidence": cfg.confidence,
        "crossfit": cfg.crossfit,
        "rule": cfg.rule,
        "chosen_lam": chosen["lam"] if chosen else None,
        "cache_prediction": chosen,
        "oracle": study.oracle,
    }


#: settings the caches and the heads do not depend on (masked out when a run resumes): the
#: policies are refitted and swept from the caches, and the operating point chosen again
CHOICE = {
    **{"budget_pp": None, "confidence": None, "crossfit": None, "rule": None},
    **{"lams": None, "features": None},
}


def load_config(out: Path, cfg: JobConfig) -> None:
    """Refuse to resume a run directory made with another configuration; the lambda grid,
    the policy features, the budget and its confidence and the choice rule may change
    (:data:`CHOICE`: a rerun with other values re-sweeps from the run's caches)."""
    path = out / "config.json"
    if path.is_file():
        old = {"confidence": None, "crossfit": False, "convs": 0, **read_json(path)}  # older runs
        new = _jsonable(cfg)
        if {**old, **CHOICE} != {**new, **CHOICE}:
            raise ValueError(f"{out} holds a run with another configuration; use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, _jsonable(cfg))


def _jsonable(cfg: JobConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def executed(
    run: Callable[[torch.Tensor], Any],
    ds: dyve_data.ImageSet,
    cfg: JobConfig,
    norm: dyve_data.Normalization,
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Top-1 and mean executed MACs of ``run`` (returns a DynamicResult) over ``ds``."""
    from tqdm import tqdm

    correct, macs = 0, []
    total = -(-len(ds) // cfg.batch_size)
    with torch.no_grad():
        for x, y in tqdm(
            dyve_data.batches(ds, cfg.batch_size, norm),
            total=total,
            desc="executed",
            disable=not progress,
        ):
            res = run(x)
            correct += int((res.logits.argmax(1) == y).sum())
            macs.append(res.trace.cost.per_sample)
    return {"top1": 100.0 * correct / len(ds), "macs_mean": float(torch.cat(macs).mean())}


def latency_images(
    ds: dyve_data.ImageSet, cfg: JobConfig, norm: dyve_data.Normalization
) -> list[torch.Tensor]:
    """The first ``cfg.latency_images`` images of ``ds`` as batch-1 tensors."""
    x, _ = next(
        dyve_data.batches(ds.subset(slice(0, cfg.latency_images)), cfg.latency_images, norm)
    )
    return [x[i : i + 1] for i in range(len(x))]


def fit_heads(
    heads: Mapping[str, ExitHead], train: dict[str, torch.Tensor], *, progress: bool = False
) -> dict[str, float]:
    """Train every exit head on the train-split cache (a linear head by
    :func:`~.heads.train_head`, a conv head by :func:`~.heads.train_conv_head`); per exit,
    its train top-1."""
    top1 = {}
    for p, h in heads.items():
        feat, labels = train[f"feat.{p}"], train["labels"]
        if h.convs:
            top1[p] = train_conv_head(h, feat, labels, progress=progress)
        else:
            top1[p] = train_head(h.fc, feat, labels)
    return {p: round(v, 3) for p, v in top1.items()}
