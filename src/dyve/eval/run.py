"""Evaluation runs: a model on a dataset split, written to a run directory.

``RUN_DIR/config.json`` holds the resolved settings, ``RUN_DIR/metrics.json`` the results
(model, dataset, split, n, top1, top5 in percent, macs_per_sample, macs_static,
cost_mode, the cost convention) and ``RUN_DIR/predictions.npy`` each sample's top-1 class.

Under ``torchrun`` the split is sharded: each process runs every N-th image, the logits are
gathered back in dataset order (:meth:`dyve.train.dist.Dist.gather_rows`) and rank 0
scores and writes the run; the result equals one process's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dyve import data as dyve_data
from dyve._io import save_npy, write_json
from dyve.cost import CONVENTION, CostAccumulator, static_cost
from dyve.eval.evaluate import topk_correct
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
    ddp = init()
    net = create(model, pretrained=weights if weights else True)
    info = model_info(net)
    images = dyve_data.load_images(dataset, split, data_root, shape=info.input_size)

    @torch.no_grad()
    def logits(ds: dyve_data.ImageSet) -> dict[str, torch.Tensor]:
        out = [net(x) for x, _ in tqdm(dyve_data.batches(ds, batch_size, info.norm),
                                       desc=model, disable=not (progress and ddp.main),
                                       total=-(-len(ds) // batch_size), leave=False)]  # fmt: skip
        return {"logits": torch.cat(out).float()}

    all_logits = ddp.gather_rows(logits, images)["logits"]
    ddp.close()
    if not ddp.main:
        return {}
    n = len(images)
    c1, c5, top = topk_correct(all_logits, torch.as_tensor(images.labels))
    table = static_cost(net)
    # A static network runs every layer for every sample: executed cost = static cost.
    cost = CostAccumulator(n, "executed")
    cost.add(table.total_macs)
    metrics = {
        "model": model,
        "dataset": dataset,
        "split": images.split,
        "n": n,
        "top1": round(100.0 * c1 / n, 4),
        "top5": round(100.0 * c5 / n, 4),
        "macs_per_sample": float(cost.per_sample.mean()) if n else 0.0,
        "macs_static": table.total_macs,
        "other_ops_static": table.total_other,
        "cost_mode": cost.cost_mode,
        "cost_convention": CONVENTION,
    }
    if out is not None:
        write_json(out / "config.json", config)
        save_npy(out / "predictions.npy", top.numpy())
        write_json(out / "metrics.json", metrics)
    return metrics
