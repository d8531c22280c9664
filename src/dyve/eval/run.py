"""Evaluation runs: a model on a dataset split, written to a run directory.

``RUN_DIR/config.json`` holds the resolved settings, ``RUN_DIR/metrics.json`` the results
(model, dataset, split, n, top1, top5 in percent, macs_per_sample, macs_static,
cost_mode, the cost convention) and ``RUN_DIR/predictions.npy`` each sample's top-1 class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dyve import data as dyve_data
from dyve._io import save_npy, write_json
from dyve.cost import CONVENTION, CostAccumulator, static_cost
from dyve.eval.evaluate import evaluate
from dyve.models import create, model_info


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
    net = create(model, pretrained=weights if weights else True)
    info = model_info(net)
    images = dyve_data.load_images(dataset, split, data_root, shape=info.input_size)
    acc = evaluate(net, images, info.norm, batch_size=batch_size, progress=progress, desc=model)
    table = static_cost(net)
    # A static network runs every layer for every sample: executed cost = static cost.
    cost = CostAccumulator(acc.n, "executed")
    cost.add(table.total_macs)
    metrics = {
        "model": model,
        "dataset": dataset,
        "split": images.split,
        "n": acc.n,
        "top1": round(acc.top1, 4),
        "top5": round(acc.top5, 4),
        "macs_per_sample": float(cost.per_sample.mean()) if acc.n else 0.0,
        "macs_static": table.total_macs,
        "other_ops_static": table.total_other,
        "cost_mode": cost.cost_mode,
        "cost_convention": CONVENTION,
    }
    if out is not None:
        write_json(out / "config.json", config)
        save_npy(out / "predictions.npy", acc.predictions)
        write_json(out / "metrics.json", metrics)
    return metrics
