"""Evaluation: accuracy maths, run directories, and the latency helper."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dyve.data import ImageSet, Normalization
from dyve.eval.evaluate import evaluate
from dyve.eval.latency import cycling, interleaved, machine, model_latency, num_threads


class Oracle(nn.Module):
    """Reads the label hidden in pixel (0,0) of channel 0 and ranks classes around it."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x[:, 0, 0, 0] * 255).round().long()
        logits = torch.zeros(len(x), 10)
        # the true class gets rank `shift` (0 = top-1)
        for rank in range(10):
            logits[torch.arange(len(x)), (label + rank - self.shift) % 10] = 10.0 - rank
        return logits


def _set(n: int = 50) -> ImageSet:
    labels = np.arange(n) % 10
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = labels
    return ImageSet(images, labels.astype(np.int64), tuple("abcdefghij"), "toy", "test")


NORM = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("shift", "top1", "top5"), [(0, 100.0, 100.0), (3, 0.0, 100.0), (6, 0.0, 0.0)]
)
def test_top1_top5(shift: int, top1: float, top5: float) -> None:
    acc = evaluate(Oracle(shift), _set(), NORM, batch_size=7)
    assert acc.n == 50
    assert acc.top1 == top1
    assert acc.top5 == top5
    assert len(acc.predictions) == 50


def test_evaluate_restores_training_mode() -> None:
    m = Oracle(0).train()
    evaluate(m, _set(), NORM)
    assert m.training


def test_interleaved_and_threads() -> None:
    calls: list[str] = []
    t = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1
    )
    assert calls == ["a", "b"] * 5  # round-robin, warm-up included
    assert t["a"].repeats == 4
    assert t["a"].p10_ms <= t["a"].median_ms <= t["a"].p90_ms
    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": lambda: None}, repeats=0)


def test_interleaved_mean_is_over_inputs_not_the_median_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dynamic model cheap on 3 inputs of 4 and dear on the fourth: its median call is
    the cheap one, what the inputs cost on average is the mean over inputs."""
    import dyve.eval.latency as latency

    clock = [0.0]
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])

    def costs(ms: list[float]) -> Callable[[], None]:
        def run(item: float) -> None:
            clock[0] += item / 1e3

        return cycling(run, ms)

    t = interleaved(
        {"dyn": costs([1.0, 1.0, 1.0, 10.0]), "dense": costs([4.0] * 4)},
        repeats=8,
        warmup=3,
        cycle=4,
    )
    assert t["dyn"].median_ms == pytest.approx(1.0)
    assert t["dyn"].mean_ms == pytest.approx(13.0 / 4)
    assert t["dense"].mean_ms == pytest.approx(4.0)
    assert t["dense"].median_ms == pytest.approx(4.0)
    with pytest.raises(ValueError, match="cycle"):
        interleaved({"a": lambda: None}, cycle=0)


def test_model_latency_and_machine() -> None:
    lat = model_latency(
        {"lin": nn.Sequential(nn.Flatten(), nn.Linear(12, 2))}, (3, 2, 2), repeats=3
    )
    assert lat["lin"].median_ms > 0
    m = machine()
    assert m["torch"] == torch.__version__
    assert m["cores"] >= 1


def test_eval_run_on_the_embedded_sample(tmp_path: Path) -> None:
    from dyve import models
    from dyve.eval.run import eval_run

    assert "resnet20_cifar" in models.shipped_models()
    m = eval_run("resnet20_cifar", "sample", "test", tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == m
    for key in (
        "model",
        "dataset",
        "split",
        "n",
        "top1",
        "top5",
        "macs_per_sample",
        "macs_static",
        "cost_mode",
    ):
        assert key in saved
    assert saved["n"] == 1000
    assert saved["macs_per_sample"] == saved["macs_static"] == 40_551_040
    assert saved["cost_mode"] == "executed"
    assert 80 < saved["top1"] <= saved["top5"]
    assert json.loads((tmp_path / "config.json").read_text())["weights"] == "shipped"
    predictions = np.load(tmp_path / "predictions.npy")
    assert predictions.shape == (1000,)
    correct = np.load(tmp_path / "correct.npy")  # for paired comparisons with other runs
    assert correct.dtype == bool
    assert 100 * correct.mean() == pytest.approx(saved["top1"])


def test_compare_against_reference() -> None:
    from dyve.eval.latency import compare

    small = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    big = nn.Sequential(nn.Flatten(), nn.Linear(12, 4096), nn.Linear(4096, 4096))
    r = compare(small, big, (3, 2, 2), repeats=6, batch_large=8)
    assert set(r["b1_ms"]) == {"candidate", "reference"}
    assert r["b8_images_per_s"]["candidate"] > 0
    # the candidate does ~8,000x less work than the reference: it must time faster
    assert r["speedup_b1"] > 1
    assert r["speedup_b8"] > 1
