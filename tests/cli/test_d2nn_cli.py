"""``dyve d2nn train`` (pre-training, static baseline, Q-learning, full network), its run
directories, resume, and ``dyve d2nn results``."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import dyve.dynamic
from dyve._io import read_json
from dyve.cli.main import main
from dyve.errors import DyveError
from dyve.eval.latency import num_threads
from dyve.mechanisms.d2nn import train as d2_train

SMALL = ("--epochs", "1", "--batch-size", "64", "--limit-train", "256", "--limit-eval", "128",
         "--no-progress")  # fmt: skip


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), num_threads(1):
        rc = main(list(argv))
    return rc, out.getvalue()


def _train(run: Path, *args: str) -> dict:  # type: ignore[type-arg]
    rc, text = _cli("d2nn", "train", "--out", str(run), *SMALL, *args)
    assert rc == 0, text
    return read_json(run / "metrics.json")


def test_pretrain_baseline_learned_full_and_page(
    prepared: Callable[[str], object], tmp_path: Path
) -> None:
    prepared("cifar10-jpeg")
    runs = tmp_path / "highlow"
    pre = _train(runs / "pre", "--route", "random")
    assert len(pre["points"]) == 2  # low and high static paths, measured on val and test
    base = _train(runs / "random", "--route", "random", "--init", str(runs / "pre"))
    every = _train(runs / "all", "--route", "all", "--init", str(runs / "pre"))
    assert len(every["points"]) == 2  # the static paths of its weights
    assert every["macs_per_sample"] == pre["points"][1]["test_macs_per_sample"]
    learned = _train(runs / "lam0.2", "--lam", "0.2", "--init", str(runs / "pre"))
    # --freeze: only the controllers learn; every other tensor (BN statistics too) is all's
    frozen = runs / "frozen_lam0.2"
    _train(frozen, "--lam", "0.2", "--init", str(runs / "all"), "--freeze", "--epochs", "2")
    before = dyve.dynamic.load(runs / "all").backbone.state_dict()
    after = dyve.dynamic.load(frozen).backbone.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved, "the controllers should have trained"
    assert all(k.startswith("controllers.") for k in moved), moved
    full = _train(runs / "full", "--route", "static")
    low = _train(runs / "low", "--route", "static", "--static", "q=low")
    assert [p["static"] for p in low["points"]] == [{"q": "low"}]
    assert low["macs_per_sample"] == pre["points"][0]["test_macs_per_sample"]
    assert dyve.dynamic.load(runs / "low").backbone.static_choice() == {"q": 0}
    for m in (base, learned, full):
        assert {"top1", "macs_per_sample", "cost_reduction", "split", "points"} <= set(m)
        assert (m["split"], m["select_split"], m["cost_mode"]) == ("test", "val", "executed")
    assert [p["bias"] for p in learned["points"]] == list(d2_train.BIASES)
    # cost bias: never more expensive on the same images
    costs = [p["test_macs_per_sample"] for p in learned["points"]]
    assert all(a >= b for a, b in itertools.pairwise(costs))
    assert full["cost_reduction"] == 1.0
    # the run directory rebuilds the network: same metrics from its files alone
    net = dyve.dynamic.load(runs / "lam0.2")
    cfg = d2_train.D2NNTrainConfig(arch="highlow", limit_eval=128)
    from dyve.models import model_info

    again = d2_train.score(net, d2_train.task_data(cfg, "test"), model_info(net.backbone).norm, cfg)
    assert again["top1"] == learned["top1"]
    assert again["macs_per_sample"] == learned["macs_per_sample"]
    history = (runs / "lam0.2" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1
    assert "train_q_loss" in history[0]

    page = tmp_path / "d2nn.md"
    bench = {  # the fields of a bench.json the page reads (timings: dyve bench, untested here)
        "b1": {"speedup_vs_eager": 3.0, "speedup_vs_dense_native": 1.1, "images": 13},
        "b64": {"speedup_vs_eager": 2.0},
        "machine": {"cpu": "a CPU"},
        "torch": "2.13.0+cpu",
    }
    (runs / "lam0.2" / "bench.json").write_text(json.dumps(bench))
    rc, _ = _cli("d2nn", "results", *map(str, sorted(runs.iterdir())), "--out", str(page))
    assert rc == 0
    text = page.read_text()
    assert "## highlow" in text
    assert "static frontier" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| lam0.2 | 0.0 |"))
    assert row.endswith("| 3.00x | 1.10x | 2.00x |")  # vs eager, vs static native, b=64
    assert "1 of 1 benches here predate the tuned eager baseline" in text  # as given only
    assert "| frozen_lam0.2 | 0.0 |" in text
    assert "1 epochs of either Q-learned" in text  # the frozen run's 2 epochs are apart
    assert "(2 epochs, `frozen_lam*`" in text
    assert "high, trained alone" in text
    assert "low, trained alone" in text
    assert (tmp_path / "d2nn" / "curves.png").stat().st_size > 10_000


def test_resume_and_refusals(prepared: Callable[[str], object], tmp_path: Path) -> None:
    prepared("cifar10-jpeg")
    run = tmp_path / "c"
    args = ("--arch", "cascade", "--route", "random", "--batch-size", "64")
    m = _train(run, *args)
    assert m["metric"] == "f1"
    # the reported F1 is the saved network's on the test images, rebuilt from its files
    from dyve.models import model_info

    net = dyve.dynamic.load(run)
    cfg = d2_train.D2NNTrainConfig(arch="cascade", limit_eval=128)
    test = d2_train.task_data(cfg, "test")
    again = d2_train.score(net, test, model_info(net.backbone).norm, cfg)
    assert (again["f1"], again["macs_per_sample"]) == (m["f1"], m["macs_per_sample"])
    assert {"test_f1", "test_bag_f1", "val_f1"} <= set(m["points"][0])
    rc, _ = _cli("d2nn", "train", "--out", str(run), *SMALL, *args)
    assert rc == 2  # exists: refused without --resume
    rc, _ = _cli("d2nn", "train", "--out", str(run), *SMALL, *args, "--lam", "0.9", "--resume")
    assert rc == 2  # a different config cannot resume it
    rc, _ = _cli("d2nn", "train", "--out", str(run), *SMALL, *args, "--resume")
    assert rc == 0  # finished epochs are kept; the report is written again
    rc, _ = _cli("d2nn", "train", "--out", str(tmp_path / "x"), *SMALL, "--arch", "cascade",
                 "--batch-size", "48")  # fmt: skip
    assert rc == 2  # not whole bags of 32
    rc, _ = _cli("d2nn", "train", "--out", str(tmp_path / "y"), *SMALL, "--init", str(run))
    assert rc == 2  # a cascade's weights cannot start a high-low graph
    rc, _ = _cli("d2nn", "train", "--out", str(tmp_path / "z"), *SMALL, "--freeze")
    assert rc == 2  # nothing to freeze without --init


def test_init_must_hold_the_same_graph(tmp_path: Path) -> None:
    net = dyve.equip(dyve.models.create("d2nn_chain_cifar"), dyve.mechanisms.D2NN())
    dyve.dynamic.save(net, tmp_path / "chain")
    cfg = d2_train.D2NNTrainConfig(arch="highlow", init=str(tmp_path / "chain"))
    with pytest.raises(DyveError, match="holds d2nn_chain_cifar"):
        d2_train.build(cfg)
    cfg = d2_train.D2NNTrainConfig(arch="chain", init=str(tmp_path / "chain"))
    graph = d2_train.build(cfg)
    assert all(torch.equal(a, b) for a, b in zip(
        graph.state_dict().values(), net.backbone.state_dict().values(), strict=True))  # fmt: skip


def test_bf16_trains_under_autocast_and_older_runs_still_resume(
    prepared: Callable[[str], object], tmp_path: Path, logit_dtypes: set[torch.dtype]
) -> None:
    prepared("cifar10-jpeg")
    run = tmp_path / "bf16"
    m = _train(run, "--bf16")
    assert read_json(run / "config.json")["config"]["bf16"] is True
    assert torch.bfloat16 in logit_dtypes  # the routed step's heads ran under autocast
    assert 0 <= m["points"][0]["test_top1"] <= 100
    # a run saved before the option existed (no "bf16" key) resumes as a float32 run
    old = tmp_path / "old"
    _train(old)
    saved = read_json(old / "config.json")
    del saved["config"]["bf16"]
    (old / "config.json").write_text(json.dumps(saved))
    assert _cli("d2nn", "train", "--out", str(old), *SMALL, "--resume")[0] == 0
    assert _cli("d2nn", "train", "--out", str(old), *SMALL, "--bf16", "--resume")[0] == 2
