"""Copy a finished training run's weights into the package (src/dyve/models/weights/NAME.*).

Usage: python scripts/ship_weights.py RUN_DIR [RUN_DIR ...]

Re-evaluates the run's weights on val and test so that the shipped metadata holds numbers
measured from the shipped file, and records whether val was held out from the starting
weights (not for weights that began from a checkpoint trained on all 50,000 images).
"""

import argparse
import json
from pathlib import Path

from dyve import data, models
from dyve.eval.evaluate import evaluate
from dyve.models.weights import save_weights, weights_dir
from dyve.train.trainer import TrainConfig, train_command

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("runs", nargs="+", type=Path)
args = ap.parse_args()
for run in args.runs:
    meta = json.loads((run / "model.json").read_text())
    name = meta["model"]
    net = models.create(name, pretrained=run / "model.safetensors")
    norm = models.model_info(net).norm
    meta["val_top1"] = round(evaluate(net, data.load(meta["data"], "val"), norm).top1, 2)
    meta["test_top1"] = round(evaluate(net, data.load(meta["data"], "test"), norm).top1, 2)
    # the 1,017 test images with their original pixels (not JPEG re-encoded)
    meta["exact_test_top1"] = round(evaluate(net, data.load("cifar10-exact", "test"), norm).top1, 2)
    # a shell-quoted command rebuilt from the run's config (older runs joined argv unquoted)
    meta["command"] = train_command(TrainConfig.from_dict(meta["config"]))
    meta["val_heldout"] = meta["config"]["init"] is None
    if not meta["val_heldout"]:
        meta["val_note"] = (
            "the starting weights were trained on all 50,000 original training images, "
            "val included; val accuracy is optimistic for these weights"
        )
    dest = weights_dir() / f"{name}.safetensors"
    save_weights(net, dest, meta)
    print(f"{name}: val {meta['val_top1']} test {meta['test_top1']} -> {dest}")
