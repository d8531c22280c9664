"""Evaluation runs: a model on a dataset split, written to a run directory.

``RUN_DIR/config.json`` holds the resolved settings, ``RUN_DIR/metrics.json`` the results
(model, dataset, split, n, top1, top5 in percent, macs_per_sample, macs_static,
cost_mode, the cost convention), ``RUN_DIR/predictions.npy`` each sample's top-1 class and
``RUN_DIR/correct.npy`` whether it is right (:func:`dyve.eval.paired.save_predictions`).

Under ``torchrun`` the split is sharded: each process measures every N-th image, the
measurements are merged (:func:`dyve.eval.measure.measure_sharded`) and rank 0 writes the
run; the result equals one process's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dyve import data as dyve_data
from dyve._io import check_out, write_json
from dyve.cost import CONVENTION, static_cost
from dyve.dynamic.net import DynamicNet
from dyve.errors import DyveError
from dyve.eval.measure import measure_sharded
from dyve.eval.paired import save_predictions
from dyve.models import create, model_info
from dyve.train.dist import init


def eval_run(
    model: str,
    dataset: str,
    split: str,
    out: Path | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Evaluate a zoo model (shipped weights unless ``weights`` is given) and write the run.

    Example:
        >>> m = eval_run("resnet56_cifar", "cifar10-jpeg", "test", Path("r56"))  # doctest: +SKIP
        >>> m["top1"]  # doctest: +SKIP
    """
    config = {
        "model": model,
        "weights": str(weights) if weights else "shipped",
        "dataset": dataset,
        "split": split,
        "batch_size": batch_size,
        "data_dir": str(dyve_data.data_dir(data_root)),
    }
    if batch_size < 1:
        raise DyveError(f"--batch-size must be >= 1, got {batch_size}")
    if out is not None:  # the same network on the same images may be scored again
        check_out(out, {k: config[k] for k in ("model", "weights", "dataset", "split")})
    ddp = init()
    net = create(model, pretrained=weights if weights else True)
    info = model_info(net)
    images = dyve_data.load_images(dataset, split, data_root, shape=info.input_size)
    # the shared measurement (trace cost: every layer runs, so executed = static)
    m = measure_sharded(
        DynamicNet(net, backbone_id=model),
        images,
        info.norm,
        ddp,
        batch_size=batch_size,
        progress=progress and ddp.main,
        desc=model,
    )
    if not ddp.main:
        ddp.close()
        return {}
    table = static_cost(net)
    metrics = {
        "model": model,
        "dataset": dataset,
        "split": images.split,
        "n": m.n,
        "top1": round(m.top1, 4),
        "top5": round(m.top5, 4),
        "macs_per_sample": m.macs_mean,
        "macs_static": table.total_macs,
        "other_ops_static": table.total_other,
        "cost_mode": m.cost.cost_mode,
        "cost_convention": CONVENTION,
    }
    if out is not None:
        write_json(out / "config.json", config)
        save_predictions(out, m.predictions, images.labels)
        write_json(out / "metrics.json", metrics)
    ddp.close()
    return metrics
