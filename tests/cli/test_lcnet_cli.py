"""``dyve lcnet train`` (LC-Net and AIG), crash and resume, ``dyve bench`` and the results page."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dyve.data
import dyve.dynamic
from dyve._io import read_json
from dyve.cli import lcnet_cmd
from dyve.cli.main import build_parser, main
from dyve.errors import DyveError
from dyve.eval.latency import num_threads
from dyve.eval.measure import measure
from dyve.mechanisms.dyvedeep import native
from dyve.mechanisms.lcnet import results as lc_results
from dyve.mechanisms.lcnet import targets as lc_targets
from dyve.mechanisms.lcnet import train as lc_train
from dyve.mechanisms.lcnet.train import GateTrainConfig
from dyve.models import model_info
from dyve.train.loop import Schedule

REQUIRED = ("top1", "baseline_top1", "macs_per_sample", "cost_reduction", "split")
SMALL = ("--model", "resnet20_cifar", "--epochs", "2", "--batch-size", "32",
         "--limit-train", "64", "--limit-eval", "48", "--no-progress")  # fmt: skip


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), num_threads(1):
        rc = main(list(argv))
    return rc, out.getvalue()


def test_train_crash_resume_bench_and_page(
    prepared: Callable[[str], object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crash_second_call: Callable[[object, str], Callable[..., object]],
) -> None:
    prepared("cifar10-jpeg")
    run = tmp_path / "lc"
    real = crash_second_call(lc_train, "measure")  # validation of epoch 2 crashes
    args = ("lcnet", "train", "--out", str(run), *SMALL, "--lam-l", "0.5", "--lam-c", "0.05")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cli(*args)
    assert read_json(run / "best.json")["epoch"] == 1  # ramp 0.5 of 2 epochs: over at 1
    monkeypatch.setattr(lc_train, "measure", real)
    rc, _ = _cli(*args)
    assert rc == 2  # the run exists: refused without --resume
    rc, text = _cli(*args, "--resume")
    assert rc == 0
    assert "metrics.json" in text
    m = read_json(run / "metrics.json")
    assert set(REQUIRED) <= set(m)
    spread = [m[k] for k in lc_train.SPREAD]  # each image's executed MACs: min, p50, p95, max
    assert (m["split"], m["select_split"], m["n"], m["cost_mode"]) == (
        "test-b",
        "test-a",
        48,
        "executed",
    )
    worse, better = m["paired"]["worse"], m["paired"]["better"]  # the same images, paired
    assert math.isclose(100 * (worse - better) / 48, m["baseline_top1"] - m["top1"])
    correct = np.load(run / "correct.npy")  # kept for paired comparisons with other runs
    assert correct.shape == (48,)
    assert math.isclose(100 * correct.mean(), m["top1"])
    # resuming the finished run reports it again (here: a run reported before the paired
    # counts existed), the trained files untouched
    trained = {f: (run / f).read_bytes() for f in ("history.jsonl", "dynamic.safetensors")}
    (run / "metrics.json").write_text(json.dumps({k: v for k, v in m.items() if k != "paired"}))
    assert _cli(*args, "--resume")[0] == 0
    assert read_json(run / "metrics.json") == m
    assert all((run / f).read_bytes() == b for f, b in trained.items())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    # resumed, not restarted: the run equals one that never crashed (losses, the kept
    # checkpoint's tensors and the test metrics)
    straight = tmp_path / "straight"
    assert _cli(*args[:3], str(straight), *args[4:])[0] == 0
    again = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in again] == [h["train_loss"] for h in history]
    a, b = load_file(run / "dynamic.safetensors"), load_file(straight / "dynamic.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    m2 = read_json(straight / "metrics.json")
    assert (m2["top1"], m2["macs_per_sample"]) == (m["top1"], m["macs_per_sample"])
    net = dyve.dynamic.load(run)  # the kept checkpoint rebuilds from its files alone
    assert net.knobs() == {"lcnet.eps": 0.0}
    # the spread is that of the fast back-end's executed cost per image at batch 1
    net.eval().backend = "fast"
    images = dyve.data.load("cifar10-jpeg", "test-b").subset(slice(0, 48))
    with num_threads(1):
        ran = measure(net, images, model_info(net.backbone).norm, batch_size=1)
    assert spread == [ran.cost.summary()[k] for k in lc_train.SPREAD]

    aig = tmp_path / "aig"
    assert _cli("lcnet", "train", "--out", str(aig), *SMALL, "--method", "aig")[0] == 0
    assert read_json(aig / "metrics.json")["method"] == "aig"
    skip = tmp_path / "skipnet"
    rc, _ = _cli(
        "lcnet", "train", "--out", str(skip), *SMALL, "--method", "skipnet", "--alpha", "3"
    )
    assert rc == 0
    assert read_json(skip / "config.json")["config"]["alpha"] == 3.0
    assert "train_executed" in (skip / "history.jsonl").read_text()  # the draws' MAC share
    assert dyve.dynamic.load(skip).mechanisms[0].name == "skipnet"

    rc, _ = _cli("bench", str(run), "--repeats", "2", "--no-compile")
    assert rc == 0
    page = tmp_path / "lcnet.md"
    rc, _ = _cli("lcnet", "results", str(run), str(aig), str(skip), "--out", str(page))
    assert rc == 0
    text = page.read_text()
    assert "| lc | LC-Net |" in text
    assert lc_targets.interval(m) in text
    assert "| aig | ConvNet-AIG |" in text
    assert "| skipnet | SkipNet-style | alpha 3.0 |" in text
    assert "LC-Net's curve above SkipNet-style's (`skipnet`)" in text
    assert "## Targets" in text
    ran = m["ran_fraction"].values()
    blocks = [sum(f == 1 for f in ran), sum(f == 0 for f in ran), sum(0 < f < 1 for f in ran)]
    cost = " | ".join(f"{v / 1e6:.1f}" for v in spread)
    assert f"| lc | LC-Net | {' | '.join(map(str, blocks))} | {cost} | " in text  # adaptivity
    assert "The gated networks were called checked" in text  # benched without --frozen
    if native.available():  # the LC-Net run was also timed against its dense native program
        assert "runtime's share" in text
        assert "The skipped work's share" in text
    assert (tmp_path / "lcnet" / "curve.png").stat().st_size > 1000

    # a static network beside the runs (not the backbone): refused on other images, then
    # compared with the runs of about its cost (the files of a real `dyve eval`, relabelled
    # to the runs' images)
    ev = tmp_path / "r56"
    eval_args = ("eval", "--model", "resnet56_cifar", "--data", "sample", "--no-progress")
    assert _cli(*eval_args, "--out", str(ev))[0] == 0
    assert _cli("lcnet", "results", str(run), "--static", str(ev), "--out", str(page))[0] == 2
    far = tmp_path / "far"
    shutil.copytree(ev, far)
    e = read_json(ev / "metrics.json") | {k: m[k] for k in ("dataset", "split", "n")}
    for where, scale in ((ev, 1.0), (far, 2.0)):
        where.joinpath("metrics.json").write_text(
            json.dumps(e | {"macs_per_sample": scale * m["macs_per_sample"]})
        )
    # its correct.npy still holds the 1,000 sample images: refused, not paired
    assert _cli("lcnet", "results", str(run), "--static", str(ev), "--out", str(page))[0] == 2
    (ev / "correct.npy").unlink()  # without it: shown unpaired
    rc, _ = _cli("lcnet", "results", str(run), "--static", str(ev), str(far), "--out", str(page))
    assert rc == 0
    static = [line for line in page.read_text().splitlines() if line.startswith("Static")]
    gap = m["top1"] - e["top1"]
    assert len(static) == 2
    assert static[0].endswith(
        f"runs within 5% of its cost: `lc` {m['top1']:.2f} % at "
        f"{m['macs_per_sample'] / 1e6:.1f} M ({gap:+.2f} pp, unpaired)."
    )
    assert static[1].endswith("runs within 5% of its cost: none.")


def test_the_page_gives_a_loss_its_paired_interval() -> None:
    def row(worse: int, better: int, paired: bool = True) -> dict[str, object]:
        m = {"n": 5000, "baseline_top1": 90.0, "top1": 90.0 - (worse - better) / 50,
             "cost_reduction": 3.02, "macs_per_sample": 41e6}  # fmt: skip
        if paired:
            m["paired"] = {"worse": worse, "better": better}
        return {"run": "r", "kind": "LC-Net", "m": m, "bench": None}

    # 0.94 pp from 453 disagreements: se = sqrt((0.0906 - 0.0094^2) / 5000) = 0.4255 pp
    lo, hi = lc_targets.bounds(row(250, 203)["m"])  # type: ignore[misc, arg-type]
    assert math.isclose(lo, 0.94 - 1.959964 * 0.42548, abs_tol=1e-3)
    assert math.isclose(hi, 0.94 + 1.959964 * 0.42548, abs_tol=1e-3)
    assert lc_targets.interval(row(250, 203, False)["m"]) == "-"  # type: ignore[arg-type]
    near, far = (" ".join(lc_targets.targets([row(*c)])) for c in ((250, 203), (200, 100)))
    assert "missed" in near
    assert "`r`, loses 0.94 pp; its paired 95% interval on these 5000 images is +0.11 to " in near
    assert "inside it: these images do not rule out" in near
    assert "below it: the true loss exceeds the target" in far
    assert "best of" not in near
    worse = row(260, 203) | {"run": "w"}  # a second run at the cost, less accurate
    both = " ".join(lc_targets.targets([worse, row(250, 203)]))
    assert "`r`, loses 0.94 pp" in both
    assert "It is the best of 2 such runs on these same images" in both
    assert "interval" not in " ".join(lc_targets.targets([row(250, 203, False)]))


def test_the_page_names_the_run_chosen_on_the_selection_split() -> None:
    """Among several runs at the cost, the one most accurate on the selection split is
    named with its loss on the report split, a choice that did not read those images."""

    def row(run: str, worse: int, select_top1: float, select_red: float = 3.02) -> dict[str, Any]:
        m = {"n": 5000, "baseline_top1": 90.0, "top1": 90.0 - (worse - 200) / 50,
             "cost_reduction": 3.02, "macs_per_sample": 41e6, "split": "test-b",
             "select_split": "test-a", "paired": {"worse": worse, "better": 200},
             "select": {"top1": select_top1, "cost_reduction": select_red}}  # fmt: skip
        return {"run": run, "kind": "LC-Net", "m": m, "bench": None}

    lucky, steady = row("lucky", 230, 88.9), row("steady", 240, 89.4)
    text = "\n".join(lc_targets.targets([lucky, steady]))
    assert "`lucky`, loses 0.60 pp" in text  # the best here, and read optimistic
    assert "best of 2 such runs" in text
    assert "on `test-a`, where the runs kept their epochs: 89.40 %), `steady` loses 0.80 pp" in text
    # a run under the cost on the selection split is not a candidate, however accurate there
    cheap_there = row("cheap_there", 240, 99.0, select_red=2.9)
    text = "\n".join(lc_targets.targets([lucky, cheap_there]))
    assert "Chosen without reading these images" not in text
    assert "It is also the most accurate such run on `test-a`" in text
    # runs chosen on the report split itself name no blind choice
    same = [r | {"m": r["m"] | {"select_split": "test-b"}} for r in (lucky, steady)]
    assert "test-a" not in "\n".join(lc_targets.targets(same))


def test_a_baseline_is_set_against_lcnet_runs_trained_as_it_was() -> None:
    """Besides the best LC-Net run of no higher cost, the page names the best of those
    trained no longer (epochs counted along --init chains) and distilled alike."""

    def row(run: str, kind: str, macs: float, top1: float, epochs: int, **cfg: Any) -> Any:
        c = {"epochs": epochs, "init": None, "distill": 0.0} | cfg
        m = {"macs_per_sample": macs, "top1": top1, "baseline_top1": 91.0,
             "cost_reduction": 125e6 / macs}  # fmt: skip
        return {"run": run, "kind": kind, "m": m, "cfg": c, "bench": None}

    lc = [
        row("long", "LC-Net", 41e6, 90.0, 100, distill=0.5),
        row("short_kd", "LC-Net", 60e6, 89.0, 3, distill=0.5),
        row("short", "LC-Net", 60e6, 87.0, 3),
        row("cont", "LC-Net", 50e6, 89.5, 2, init="runs/short"),  # 5 epochs in all
        row("costly", "LC-Net", 200e6, 95.0, 3),
    ]
    base = row("sk", "SkipNet-style", 100e6, 88.0, 3)
    text = "\n".join(lc_targets.targets([*lc, base]))
    assert (
        "- LC-Net's curve above SkipNet-style's (`sk`): best LC-Net run of no higher cost: "
        "`long` 90.00 % vs 88.00 %: **LC-Net above**; of those trained as it was (3 epochs "
        "or fewer, not distilled): `short` 87.00 % vs 88.00 %: **LC-Net below**."
    ) in text
    taught = base | {"run": "sk_kd", "cfg": base["cfg"] | {"distill": 0.5}}
    text = "\n".join(lc_targets.targets([*lc, taught]))
    assert "(3 epochs or fewer, distilled): `short_kd` 89.00 % vs 88.00 %: **LC-Net above**" in text


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    assert _cli("lcnet", "train", "--out", str(tmp_path / "x"), "--ramp", "2")[0] == 2
    assert _cli("lcnet", "train", "--out", str(tmp_path / "x"), "--lam-l", "-1")[0] == 2
    assert _cli("lcnet", "train", "--out", str(tmp_path / "x"), "--alpha", "-1")[0] == 2
    assert (
        _cli("lcnet", "train", "--out", str(tmp_path / "x"), "--method", "aig", "--reopen")[0] == 2
    )  # AIG's gates are not ReLU1
    assert not (tmp_path / "x").exists()


def test_min_reduction_keeps_the_most_accurate_epoch_at_that_cost(
    prepared: Callable[[str], object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 100.0  # MACs: --min-reduction R on a net of 100 * R MACs
    epochs = [
        {"top1": 91.0, "macs_per_sample": 120.0},  # most accurate, too expensive
        {"top1": 89.0, "macs_per_sample": 99.0},
        {"top1": 89.0, "macs_per_sample": 95.0},  # as accurate and cheaper: kept
        {"top1": 88.0, "macs_per_sample": 90.0},
    ]
    assert max(epochs, key=lambda r: lc_train.rank(r, cap)) is epochs[2]
    assert max(epochs, key=lambda r: lc_train.rank(r, None)) is epochs[0]  # no cap: as before
    over = [epochs[0], {"top1": 80.0, "macs_per_sample": 110.0}]
    assert max(over, key=lambda r: lc_train.rank(r, cap)) is over[1]  # none within: cheapest
    args = build_parser().parse_args(["lcnet", "train", "--out", "x", "--min-reduction", "3"])
    cfg = lcnet_cmd.config(args)
    assert cfg.min_reduction == 3.0
    assert lc_results._label(asdict(cfg))[1].endswith(", kept at >= 3.0x")
    with pytest.raises(DyveError, match="min_reduction"):
        replace(cfg, min_reduction=0.5)
    # a run ranks its epochs with the cap its option stands for
    prepared("cifar10-jpeg")
    caps: list[float | None] = []
    real = lc_train.rank
    monkeypatch.setattr(lc_train, "rank", lambda r, c: caps.append(c) or real(r, c))
    run = tmp_path / "capped"
    assert _cli("lcnet", "train", "--out", str(run), *SMALL, "--min-reduction", "4")[0] == 0
    static = read_json(run / "metrics.json")["baseline_macs_per_sample"]
    assert caps
    assert caps == [pytest.approx(static / 4)] * len(caps)


def test_warmup_reaches_the_schedule_and_the_page(
    prepared: Callable[[str], object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = build_parser().parse_args(["lcnet", "train", "--out", "x", "--warmup-epochs", "1"])
    cfg = lcnet_cmd.config(args)
    assert cfg.warmup_epochs == 1.0
    assert ", 1-epoch lr warm-up" in lc_results._label(asdict(cfg))[1]
    assert lc_train.ADDED["warmup_epochs"] == 0.0  # what runs made before the option had
    assert "warm-up" not in lc_results._label(asdict(replace(cfg, warmup_epochs=0.0)))[1]
    with pytest.raises(DyveError, match="--warmup-epochs must be >= 0 and below --epochs"):
        replace(cfg, warmup_epochs=cfg.epochs)
    prepared("cifar10-jpeg")
    scheds: list[Schedule] = []
    real = lc_train.fit
    monkeypatch.setattr(lc_train, "fit", lambda *a, **k: scheds.append(a[4]) or real(*a, **k))
    run = tmp_path / "warm"
    assert _cli("lcnet", "train", "--out", str(run), *SMALL, "--warmup-epochs", "1")[0] == 0
    assert [s.warmup_epochs for s in scheds] == [1.0]
    first = json.loads((run / "history.jsonl").read_text().splitlines()[0])
    assert first["lr_end"] == pytest.approx(0.01)  # the warm-up's last step reaches --lr


def test_reopen_reaches_every_gate_and_the_page() -> None:
    args = build_parser().parse_args(["lcnet", "train", "--out", "x", "--reopen"])
    cfg = lcnet_cmd.config(args)
    assert cfg.reopen
    net = lc_train.build(replace(cfg, model="resnet20_cifar"))
    assert all(g.reopen for g in net.mechanisms[0].gates)  # type: ignore[attr-defined]
    plain = lc_train.build(replace(cfg, model="resnet20_cifar", reopen=False))
    assert not any(g.reopen for g in plain.mechanisms[0].gates)  # type: ignore[attr-defined]
    assert lc_results._label(asdict(cfg))[1].endswith(", channels reopen")
    slow = asdict(replace(cfg, gate_lr_scale=0.1, reopen=False))
    assert lc_results._label(slow)[1].endswith(", gate lr x0.1")
    assert lc_train.ADDED["reopen"] is False  # runs made before the option resume as before


def test_distillation_from_the_dense_backbone(
    prepared: Callable[[str], object], tmp_path: Path
) -> None:
    prepared("cifar10-jpeg")
    run = tmp_path / "kd"
    args = ("lcnet", "train", "--out", str(run), *SMALL, "--lam-l", "0.5", "--distill", "0.5")
    assert _cli(*args)[0] == 0
    assert read_json(run / "config.json")["config"]["distill"] == 0.5
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(h["train_kd"] > 0 for h in history)  # logged, and the student is not the teacher
    # (the loss and the teacher themselves: tests/train/test_distill.py)
    for bad in ("1.5", "-0.1"):
        rc, _ = _cli("lcnet", "train", "--out", str(tmp_path / "bad"), *SMALL, "--distill", bad)
        assert rc == 2
        assert not (tmp_path / "bad").exists()
    # the page labels distilled runs, and names each run's machine when they differ
    assert _cli("bench", str(run), "--repeats", "2", "--no-compile", "--frozen")[0] == 0
    assert read_json(run / "bench.json")["frozen"] is True
    other = tmp_path / "kd_elsewhere"
    shutil.copytree(run, other)
    bench = read_json(other / "bench.json")
    bench["machine"]["cpu"] = "Another CPU"
    del bench["dense_native_call"]  # benched before the reference paid the check
    del bench["frozen"]  # and before networks could be frozen
    bench["kernels"] = "dyvedeep-0123456789abcdef"  # and with other kernels
    (other / "bench.json").write_text(json.dumps(bench))
    page = tmp_path / "page.md"
    assert _cli("lcnet", "results", str(run), str(other), "--out", str(page))[0] == 0
    text = page.read_text()
    row = "| kd | LC-Net + distillation | lam_L=0.5, lam_C=0.002 (none), distill 0.5 (T=4.0) |"
    assert row in text
    assert "Another CPU, torch" in text
    assert "(`kd_elsewhere`)" in text
    assert "Benched with older code (`kd_elsewhere`)" in text
    assert "timed frozen (`dyve bench --frozen`" in text
    assert "except `kd_elsewhere`, called checked" in text
    if native.available():  # `kd` was timed with this build, `kd_elsewhere` says another
        assert f"{native.build()} (`kd`); dyvedeep-0123456789abcdef (`kd_elsewhere`)" in text


def test_a_named_teacher_end_to_end(prepared: Callable[[str], object], tmp_path: Path) -> None:
    # the run records it, the page says it, and a bad name writes nothing
    with pytest.raises(DyveError, match="set distill"):
        GateTrainConfig(teacher="resnet56_cifar")
    prepared("cifar10-jpeg")
    run = tmp_path / "kd_ens"
    args = ("lcnet", "train", *SMALL, "--lam-l", "0.5", "--distill", "0.5")
    assert _cli(*args, "--out", str(run), "--teacher", "resnet20_cifar", "--teacher-flip")[0] == 0
    assert read_json(run / "config.json")["config"]["teacher"] == "resnet20_cifar"
    _, setting = lc_results._label(read_json(run / "config.json")["config"])
    assert setting.endswith("distill 0.5 (T=4.0) from resnet20_cifar with mirrors")
    assert _cli(*args, "--out", str(tmp_path / "x"), "--teacher", "resnet21_cifar")[0] == 2
    assert not (tmp_path / "x").exists()
    assert lc_train.ADDED["teacher"] is None  # runs made before the option resume as before


def test_runs_saved_before_a_config_key_existed_still_resume(tmp_path: Path) -> None:
    from dyve.errors import DyveError
    from dyve.train.loop import check_run_dir

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"config": {"lam_l": 0.1}}))
    check_run_dir(tmp_path, {"lam_l": 0.1, "distill": 0.0}, True, {"distill": 0.0})
    with pytest.raises(DyveError, match="distill"):
        check_run_dir(tmp_path, {"lam_l": 0.1, "distill": 0.5}, True, {"distill": 0.0})
    with pytest.raises(DyveError, match="distill"):  # without defaults: a different config
        check_run_dir(tmp_path, {"lam_l": 0.1, "distill": 0.0}, True)


def test_the_goal_ramps_and_the_steered_weight_stops_at_it() -> None:
    assert [lc_train.goal(3.0, 0.5, f) for f in (0.0, 0.25, 0.5, 0.9)] == [1.0, 2.0, 3.0, 3.0]
    assert lc_train.goal(3.0, 0.0, 0.0) == 3.0
    band = lc_train.STEER_BAND
    assert lc_train.steer(2.0, 2.0) == 0.0  # reached: no sparsity pressure
    assert lc_train.steer(2.5, 2.0) == 0.0  # past it: none either
    assert lc_train.steer(2.0 * math.exp(-band / 2), 2.0) == pytest.approx(0.5)
    assert lc_train.steer(1.5, 2.0) == 1.0  # well short: the lambdas in full


def test_target_reduction_steers_in_bf16(
    prepared: Callable[[str], object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logit_dtypes: set[torch.dtype],
) -> None:
    prepared("cifar10-jpeg")
    small = (*SMALL[:3], "4", *SMALL[4:])
    args = ("lcnet", "train", *small, "--lam-l", "0.05", "--target-reduction", "2", "--bf16")
    straight = tmp_path / "straight"
    assert _cli(*args, "--out", str(straight))[0] == 0
    assert logit_dtypes == {torch.bfloat16}  # the forward ran under bf16 autocast
    config = read_json(straight / "config.json")["config"]
    assert (config["target_reduction"], config["bf16"]) == (2.0, True)
    assert lc_results._label(config)[1] == "lam_L=0.05, lam_C=0.002 (none) steered to 2.0x"
    rows = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    # every step asked steer() with the batch's reduction and the ramping goal
    calls: list[tuple[float, float, float]] = []

    def recording(reduction: float, goal: float) -> float:
        calls.append((reduction, goal, real_steer(reduction, goal)))
        return calls[-1][2]

    real_steer = lc_train.steer
    monkeypatch.setattr(lc_train, "steer", recording)
    assert _cli(*args, "--out", str(tmp_path / "again"))[0] == 0
    goals = [c[1] for c in calls]
    assert len(calls) == 8
    assert goals == sorted(goals)
    assert goals[-1] == 2.0 > goals[0]
    assert all(c[0] >= 1.0 for c in calls)

    def mean(j: int) -> list[Any]:  # the history keeps each epoch's mean of its two batches
        return [pytest.approx((calls[k][j] + calls[k + 1][j]) / 2) for k in (0, 2, 4, 6)]

    assert [r["train_reduction"] for r in rows] == mean(0)
    assert [r["train_lam_scale"] for r in rows] == mean(2)
    assert rows[0]["train_reg"] > 0
    # the sparsity loss is scaled by the steered weight: at 0 there is none
    monkeypatch.setattr(lc_train, "steer", lambda reduction, goal: 0.0)
    assert _cli(*args, "--out", str(tmp_path / "off"))[0] == 0
    off = [
        json.loads(line) for line in (tmp_path / "off" / "history.jsonl").read_text().splitlines()
    ]
    assert all(r["train_reg"] == 0.0 for r in off)


def test_target_reduction_is_refused_where_it_cannot_steer(tmp_path: Path) -> None:
    out = str(tmp_path / "x")
    assert _cli("lcnet", "train", "--out", out, "--target-reduction", "1")[0] == 2
    assert (
        _cli("lcnet", "train", "--out", out, "--target-reduction", "3", "--method", "aig")[0] == 2
    )
    bad = ("--target-reduction", "3", "--lam-l", "0", "--lam-c", "0")
    assert _cli("lcnet", "train", "--out", out, *bad)[0] == 2
    assert not (tmp_path / "x").exists()


def test_init_starts_from_an_earlier_runs_network(
    prepared: Callable[[str], object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crash_second_call: Callable[[object, str], Callable[..., object]],
) -> None:
    prepared("cifar10-jpeg")
    small = (*SMALL[:3], "1", *SMALL[4:])
    first = tmp_path / "first"
    assert _cli("lcnet", "train", "--out", str(first), *small, "--lam-l", "0.5")[0] == 0
    kept = load_file(first / "dynamic.safetensors")
    started: dict[str, torch.Tensor] = {}

    def stop(model, *a, **k):  # type: ignore[no-untyped-def]
        started.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        raise RuntimeError("stopped before the first step")

    monkeypatch.setattr(lc_train, "fit", stop)
    args = ("lcnet", "train", *small, "--init", str(first))
    with pytest.raises(RuntimeError, match="stopped"):
        _cli(*args, "--out", str(tmp_path / "next"))
    assert started.keys() == kept.keys()
    assert all(torch.equal(started[k], kept[k]) for k in kept)  # backbone and gates
    fresh = lc_train.build(lc_train.GateTrainConfig(model="resnet20_cifar")).state_dict()
    assert not all(torch.equal(fresh[k], kept[k]) for k in kept)  # the first run trained
    config = read_json(tmp_path / "next" / "config.json")["config"]
    assert config["init"] == str(first)
    assert lc_results._label(config)[1].endswith(", started from `first`")  # on the page
    # a run whose gates differ is refused, before anything is written
    assert _cli(*args, "--no-channel", "--out", str(tmp_path / "other"))[0] == 2
    assert not (tmp_path / "other").exists()
    # a continuation that crashed resumes from its checkpoint, without the earlier run
    monkeypatch.undo()
    real = crash_second_call(lc_train, "measure")  # validation of epoch 2 crashes
    go_on = (*args[:5], "2", *args[6:], "--out", str(tmp_path / "go_on"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cli(*go_on)
    shutil.rmtree(first)
    monkeypatch.setattr(lc_train, "measure", real)
    assert _cli(*go_on, "--resume")[0] == 0
    assert (tmp_path / "go_on" / "metrics.json").is_file()


def test_the_committed_page_is_what_its_command_writes(tmp_path: Path) -> None:
    # docs/results/lcnet.md from the small files kept beside it, as scripts/lcnet_results.sh
    # writes it: every figure on the page comes from those files
    docs = Path(__file__).parents[2] / "docs" / "results"
    runs = sorted(p for p in (docs / "lcnet" / "runs").iterdir() if p.is_dir())
    static = sorted(p for p in (docs / "lcnet" / "static").iterdir() if p.is_dir())
    page = lc_results.write_results(runs, tmp_path / "lcnet.md", static)
    assert page.read_text() == (docs / "lcnet.md").read_text()
