"""Static references on the LC-Net page: epochs along init chains, and a same-recipe
control set against the runs of its cost that trained as many epochs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dyve.errors import DyveError
from dyve.eval.paired import PairedLoss
from dyve.mechanisms.lcnet.static import chain_epochs, load_static, static_lines

WHERE = {"dataset": "cifar10-jpeg", "split": "test-b", "n": 5000}


def test_epochs_add_up_along_the_init_chain() -> None:
    steps = {"a": (22, None), "b": (26, "a"), "c": (14, "b"), "d": (3, "gone"), "e": (1, "e")}
    assert [chain_epochs(n, steps) for n in "abc"] == [22, 48, 62]
    assert chain_epochs("d", steps) is None  # started from a run that is not on the page
    assert chain_epochs("e", steps) is None  # a loop is no chain
    assert chain_epochs("x", steps) is None


def _static(
    tmp: Path,
    name: str,
    top1: float,
    trained: dict[str, Any] | None,
    macs: float = 40.6e6,
    model: str = "resnet20_cifar",
) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "metrics.json").write_text(
        json.dumps(WHERE | {"model": model, "top1": top1, "macs_per_sample": macs})
    )
    weights = "shipped" if trained is None else f"runs/c/{name}/model.safetensors"
    (d / "config.json").write_text(json.dumps({"weights": weights}))
    if trained is not None:
        (d / "model.json").write_text(json.dumps({"config": trained}))
    return d


def _run(name: str, top1: float, epochs: int, init: str | None, macs: float = 41e6) -> dict:  # type: ignore[type-arg]
    cfg = {"model": "resnet56_cifar", "epochs": epochs, "init": init and f"runs/lcnet/{init}"}
    m = WHERE | {"top1": top1, "macs_per_sample": macs, "baseline_macs_per_sample": 125.5e6}
    return {"run": name, "dir": Path("/nowhere") / name, "kind": "LC-Net", "cfg": cfg, "m": m}


def test_a_control_is_set_against_the_runs_that_trained_as_long(tmp_path: Path) -> None:
    kd = {
        "model": "resnet20_cifar",
        "distill": 0.5,
        "temperature": 4.0,
        "teacher": "resnet56_cifar",
    }
    dirs = [
        _static(tmp_path, "shipped", 88.68, None),
        _static(tmp_path, "k22", 89.0, kd | {"epochs": 22, "lr": 0.01, "init": "shipped"}),
        _static(
            tmp_path,
            "k48",
            89.5,
            kd | {"epochs": 26, "lr": 0.002, "init": "runs/c/k22/model.safetensors"},
        ),
    ]
    rows = [
        _run("r22", 88.84, 22, None),
        _run("r48", 89.44, 26, "r22"),
        _run("r62", 89.74, 14, "r48"),
        _run("far48", 80.0, 26, "r22", macs=60e6),  # as many epochs, another cost
    ]
    refs = [load_static(d, rows[0]["m"]) for d in dirs]
    shipped, k22, k48, paired = (line for line in static_lines(refs, rows, ("LC-Net",)) if line)
    assert paired.endswith(
        "*unpaired*: a run reported before those files were kept (re-report "
        "it with `--resume`, or rerun `dyve eval`)."
    )  # said once, at the end
    shipped_only = [line for line in static_lines(refs[:1], rows, ("LC-Net",)) if line]
    assert shipped_only == [shipped, paired]  # the note follows any differences
    assert shipped.startswith("Static `resnet20_cifar` (`dyve eval`, shipped weights;")
    assert shipped.endswith(  # every run of about its cost
        "of its cost: `r22` 88.84 % at 41.0 M (+0.16 pp, unpaired), "
        "`r48` 89.44 % at 41.0 M (+0.76 pp, unpaired), "
        "`r62` 89.74 % at 41.0 M (+1.06 pp, unpaired)."
    )
    assert k22.startswith(
        "Same-recipe control `k22`: static `resnet20_cifar` (`dyve train` from its shipped "
        "weights: distill 0.5 (T=4.0) from resnet56_cifar, 22 epochs from lr 0.01, 22 epochs"
    )
    assert k22.endswith("trained as many epochs: `r22` 88.84 % at 41.0 M (-0.16 pp, unpaired).")
    assert (
        "from `k22`: distill 0.5 (T=4.0) from resnet56_cifar, 26 epochs from lr 0.002, "
        "48 epochs from the shipped weights in all" in k48
    )
    assert k48.endswith("trained as many epochs: `r48` 89.44 % at 41.0 M (-0.06 pp, unpaired).")
    # the chain broken (its start not on the page): no epoch count, so no run to match
    alone = [r for r in refs if r["name"] != "k22"]
    k48_alone = [line for line in static_lines(alone, rows, ("LC-Net",)) if line][1]
    assert "in all" not in k48_alone
    assert k48_alone.endswith("trained as many epochs: none.")


def test_a_static_run_on_other_images_or_with_other_metadata_is_refused(tmp_path: Path) -> None:
    d = _static(tmp_path, "s", 88.0, None)
    with pytest.raises(DyveError, match="evaluated on cifar10-jpeg test-b"):
        load_static(d, WHERE | {"split": "test"})
    (d / "model.json").write_text(json.dumps({"model": "resnet20_cifar"}))
    with pytest.raises(DyveError, match="not the metadata of `dyve train` weights"):
        load_static(d, WHERE)


def test_a_control_trained_from_scratch_matches_no_run(tmp_path: Path) -> None:
    cfg = {"model": "resnet20_cifar", "distill": 0.0, "epochs": 22, "lr": 0.1, "init": None}
    refs = [load_static(_static(tmp_path, "scratch", 85.0, cfg), WHERE)]
    line = static_lines(refs, [_run("r22", 88.84, 22, None)], ("LC-Net",))[0]
    assert "(`dyve train` from random initialisation: 22 epochs from lr 0.1; scored" in line
    assert line.endswith("trained as many epochs: none.")


KD = {"model": "resnet56_cifar", "distill": 0.5, "temperature": 4.0, "teacher": None}


def test_a_control_of_the_backbone_meets_the_runs_of_any_cost(tmp_path: Path) -> None:
    cfg = KD | {"epochs": 22, "lr": 0.01, "init": "shipped"}
    r56 = _static(tmp_path, "r56", 91.0, cfg, macs=125.5e6, model="resnet56_cifar")
    # another network of about the backbone's cost is no control of the backbone
    wide = [load_static(_static(tmp_path, "wide", 91.0, cfg, macs=125.5e6), WHERE)]
    line = static_lines(wide, [_run("r22", 88.84, 22, None)], ("LC-Net",))[0]
    assert line.endswith("LC-Net runs within 5% of its cost that trained as many epochs: none.")
    refs = [load_static(r56, WHERE)]
    rows = [
        _run("r22", 88.84, 22, None),
        _run("cheap22", 87.0, 22, None, macs=30e6),
        _run("r48", 89.44, 26, "r22"),  # trained longer: not this control's match
    ]
    line = static_lines(refs, rows, ("LC-Net",))[0]
    assert "distill 0.5 (T=4.0) from resnet56_cifar, 22 epochs from lr 0.01" in line
    assert "91.00 % at 125.5 M MACs, the dense backbone's cost; LC-Net runs of" in line
    assert line.endswith(
        "any cost that trained as many epochs, set against the backbone trained as they were: "
        "`cheap22` 87.00 % at 30.0 M (-4.00 pp, unpaired), `r22` 88.84 % at 41.0 M "
        "(-2.16 pp, unpaired)."
    )


def _correct(d: Path, right: np.ndarray) -> None:
    np.save(d / "correct.npy", right)


def test_a_difference_is_paired_when_both_runs_kept_their_correctness(tmp_path: Path) -> None:
    # the static network right on the first 4,450 images; the run loses 184 of them and
    # wins 137 others: 4,403 right, -0.94 pp
    ref = np.arange(5000) < 4450
    run = ref.copy()
    run[:184], run[4450 : 4450 + 137] = False, True
    static = _static(tmp_path, "s", 89.0, None)
    _correct(static, ref)
    row = _run("r", 88.06, 22, None) | {"dir": tmp_path / "r"}
    row["dir"].mkdir()
    row["dir"].joinpath("metrics.json").write_text(json.dumps(row["m"]))
    _correct(row["dir"], run)
    lo, hi = PairedLoss(5000, 184, 137).interval_pp(0.95)
    refs = [load_static(static, WHERE)]
    line, _, note, _ = static_lines(refs, [row], ("LC-Net",))
    assert line.endswith(
        f"`r` 88.06 % at 41.0 M (-0.94 pp, 95% interval {-hi:+.2f} to {-lo:+.2f})."
    )
    assert (-hi, -lo) == pytest.approx((-1.64, -0.24), abs=0.005)
    assert note.endswith("the images on which the two differ (each run's `correct.npy`).")
    # the same images right and wrong: no difference, and no "-0.00"
    twin = row | {"m": row["m"] | {"top1": 89.0}}
    _correct(row["dir"], ref)
    row["dir"].joinpath("metrics.json").write_text(json.dumps(twin["m"]))
    assert static_lines(refs, [twin], ("LC-Net",))[0].endswith(
        "(+0.00 pp, 95% interval +0.00 to +0.00)."
    )
    # a file that disagrees with its run's metrics (another report's) is refused, not shown
    row["dir"].joinpath("metrics.json").write_text(json.dumps(row["m"]))
    with pytest.raises(DyveError, match=r"r/correct.npy: 5000 images at 89.00 %, its metrics"):
        static_lines(refs, [row], ("LC-Net",))


def test_the_shipped_backbone_meets_its_same_recipe_controls(tmp_path: Path) -> None:
    # the shipped ResNet-56 right on the first 4,534 images; its control loses 22 of them
    # and wins 18 others: -0.08 pp, paired
    ref = np.arange(5000) < 4534
    ctl = ref.copy()
    ctl[:22], ctl[4534 : 4534 + 18] = False, True
    cfg = KD | {"epochs": 22, "lr": 0.01, "init": "shipped"}
    dirs = [
        _static(tmp_path, "resnet56_cifar", 90.68, None, macs=125.5e6, model="resnet56_cifar"),
        _static(tmp_path, "k22", 90.60, cfg, macs=125.5e6, model="resnet56_cifar"),
        _static(tmp_path, "r20k22", 89.30, cfg | {"model": "resnet20_cifar"}),
    ]
    for d, right in zip(dirs, (ref, ctl), strict=False):  # the ResNet-20's unused
        _correct(d, right)
    refs = [load_static(d, WHERE) for d in dirs]
    lo, hi = PairedLoss(5000, 22, 18).interval_pp(0.95)
    line = static_lines(refs, [_run("r22", 88.84, 22, None)], ("LC-Net",))[0]
    assert line == (
        "Static `resnet56_cifar` (`dyve eval`, shipped weights: the dense backbone): 90.68 % "
        "at 125.5 M MACs, the dense backbone's cost; the same-recipe controls of the backbone, "
        "set against it: "  # not the ResNet-20 control (another model), nor any LC-Net run
        f"`k22` 90.60 % at 125.5 M (-0.08 pp, 95% interval {-hi:+.2f} to {-lo:+.2f})."
    )
    assert (-hi, -lo) == pytest.approx((-0.33, 0.17), abs=0.005)
    # without controls: none to set against it
    alone = static_lines(refs[:1], [_run("r22", 88.84, 22, None)], ("LC-Net",))[0]
    assert alone.endswith("the same-recipe controls of the backbone, set against it: none.")
    # the backbone with other weights (no `dyve train` metadata) is a plain reference
    other = _static(tmp_path, "other", 90.0, None, macs=125.5e6, model="resnet56_cifar")
    other.joinpath("config.json").write_text(json.dumps({"weights": "runs/x/w.safetensors"}))
    plain = static_lines([load_static(other, WHERE)], [_run("r22", 88.84, 22, None)], ("LC-Net",))
    assert plain[0].startswith(
        "Static `resnet56_cifar` (`dyve eval`, runs/x/w.safetensors weights; the README's"
    )
    assert plain[0].endswith("the dense backbone's cost; LC-Net runs within 5% of its cost: none.")
