"""``dyve exits fit``, ``dyve select fit`` and ``dyve adaptive results`` on real CIFAR-10 images."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import dyve.dynamic
from dyve._io import read_json
from dyve.cli.main import main
from dyve.eval.latency import num_threads
from dyve.mechanisms.dyvedeep import native

REQUIRED = ("top1", "baseline_top1", "macs_per_sample", "cost_reduction", "split", "speedup_b1")


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), num_threads(1):
        rc = main(list(argv))
    return rc, out.getvalue()


def test_exits_and_select_write_runs_and_a_page(
    prepared: Callable[[str], object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared("cifar10-jpeg")
    import dyve.mechanisms.adaptive.exits_job as exits_job
    import dyve.mechanisms.adaptive.select_job as select_job
    from dyve.mechanisms.adaptive.latency import stage_latency

    frozen: list[tuple[bool, bool]] = []  # (the system, a forced path) as each job times them

    def spy(graph: Any, forced: Any, alone: Any, dynamic: Any, images: Any) -> Any:
        path = next(iter(graph.cheapest_paths().values()))[1]
        system = forced(path)
        frozen.append((dynamic.frozen, getattr(system, "frozen", dynamic.frozen)))
        return stage_latency(graph, forced, alone, dynamic, images)

    monkeypatch.setattr(exits_job, "stage_latency", spy)
    monkeypatch.setattr(select_job, "stage_latency", spy)
    # 300 images: policies fitted on 150 and judged on the other 150 (cross-fitting) lose
    # about 1 pp even at lambda 0, so the budget is wider than the default, and held to the
    # per-lambda bound (Bonferroni's wider one passes nothing on so few images)
    small = ("--limit", "300", "--latency-images", "5", "--no-progress", "--lams", "0,0.1,0.3")
    small += ("--budget", "2", "--rule", "bound")
    rc, text = _cli(
        "exits", "fit", "--model", "resnet20_cifar", "--out", str(tmp_path / "e"), *small
    )
    assert rc == 0
    assert "fewer MACs (executed)" in text
    assert ("same native runtime" in text) == native.available()
    m = read_json(tmp_path / "e" / "metrics.json")
    assert set(REQUIRED) <= set(m)
    assert m["head_convs"] == {"layer1": 0, "layer2": 0}
    assert m["fit_split"] == "test-a"
    assert m["split"] == "test-b"
    assert m["rule"] == "bound"
    curves = read_json(tmp_path / "e" / "curves.json")
    lams = [p["lam"] for p in curves["learned"]]
    assert lams == sorted(lams)
    assert {0.0, 0.1, 0.3} <= set(lams)  # the grid, and up to 4 bisected lambdas
    assert len(lams) <= 7
    # the executed run is the cached prediction at the chosen lambda (lambda 0 weighs no
    # cost, so one is within the budget; bisection between grid points may refine it)
    assert 0.0 <= m["chosen_lam"] <= 0.3
    assert abs(m["top1"] - m["cache_prediction"]["top1"]) < 1e-3
    assert abs(m["macs_per_sample"] - m["cache_prediction"]["macs_mean"]) < 1e-6
    _check_latency(curves, m, ["layer1", "layer2", "final"], "final")
    if native.available():  # the backbone ran as native segments: timed in both runtimes
        alone = curves["latency"]["alone_ms"]
        _check_eager(m, alone, "resnet20_cifar")
        assert m["baseline_native_latency_ms_b1"] == alone["final"]
    net = dyve.dynamic.load(tmp_path / "e")
    assert net.mechanism("early_exit").config.lams == tuple(lams)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    rc, _ = _cli(
        "select",
        "fit",
        "--models",
        "caffe_cifar10,resnet20_cifar",
        "--out",
        str(tmp_path / "s"),
        *small,
        "--no-crossfit",  # on 150 images a half's selection policy loses 3-6 pp
    )
    assert rc == 0
    s = read_json(tmp_path / "s" / "metrics.json")
    assert s["crossfit"] is False
    assert set(REQUIRED) <= set(s)
    assert s["baseline"] == "resnet20_cifar"
    assert 0.0 <= s["chosen_lam"] <= 0.3
    assert abs(s["top1"] - s["cache_prediction"]["top1"]) < 1e-3
    assert abs(s["macs_per_sample"] - s["cache_prediction"]["macs_mean"]) < 1e-6
    sc = read_json(tmp_path / "s" / "curves.json")
    _check_latency(sc, s, ["caffe_cifar10", "resnet20_cifar"], "resnet20_cifar")
    if native.available():  # its networks ran natively: the reference timed in both runtimes
        alone = sc["latency"]["alone_ms"]
        _check_eager(s, alone, "resnet20_cifar")
        assert s["baseline_native_latency_ms_b1"] == alone["resnet20_cifar"]
        assert s["speedup_vs_native_b1"] == pytest.approx(
            s["baseline_native_latency_ms_b1"] / s["latency_ms_b1"]
        )
    for run in ("e", "s"):
        rc, _ = _cli("bench", str(tmp_path / run), "--no-compile", "--repeats", "2")
        assert rc == 0
    page = tmp_path / "adaptive.md"
    rc, _ = _cli(
        "adaptive", "results", str(tmp_path / "e"), str(tmp_path / "s"), "--out", str(page)
    )
    text = page.read_text()
    assert rc == 0
    assert "Early exit on resnet20_cifar (exits after layer1, layer2; linear heads)" in text
    assert "Network selection" in text
    assert ("the method's own share" in text) == native.available()
    assert (tmp_path / "adaptive" / "e.png").is_file()
    assert text.count("Stage latencies") == 2
    assert "est. speedup" in text
    # each section states how its point was chosen: budget, bound, the point's fit loss
    chosen = read_json(tmp_path / "e" / "curves.json")
    point = chosen["learned"][chosen["chosen"]]
    assert point["fit_loss_bound_pp"] <= 2.0
    assert (
        "Budget 2 pp (90% bound, cross-fitted, bound rule) on test-a: "
        f"loss {point['fit_loss_pp']:.2f} pp, bound {point['fit_loss_bound_pp']:.2f} pp." in text
    )
    assert frozen == [(True, True), (True, True)], "both jobs time as deployed: frozen"
    assert text.count("images; frozen; ") == 2
    assert text.count("`dyve bench` against") == 2
    assert "`dyve bench` against resnet20_cifar (2 interleaved batch-1 calls over 1" in text
    # a different configuration in the same directory is refused
    rc2, _ = _cli(
        "exits",
        "fit",
        "--model",
        "resnet20_cifar",
        "--out",
        str(tmp_path / "e"),
        "--limit",
        "200",
        "--no-progress",
    )
    assert rc2 == 2


def _check_eager(metrics: dict[str, Any], alone: dict[str, float], ref: str) -> None:
    """The speedup is against the faster of the reference in eager PyTorch as given and
    tuned (BN folded, channels_last), both timed in the same run."""
    given, tuned = alone[f"{ref} (PyTorch)"], alone[f"{ref} (PyTorch, tuned)"]
    assert metrics["baseline_as_given_ms_b1"] == given
    assert metrics["baseline_tuned_ms_b1"] == tuned
    assert metrics["baseline_latency_ms_b1"] == min(given, tuned)
    assert metrics["speedup_b1"] == pytest.approx(min(given, tuned) / metrics["latency_ms_b1"])


def _check_latency(
    curves: dict[str, Any], metrics: dict[str, Any], nodes: list[str], reference: str
) -> None:
    """The stage table covers every node, was timed with the executed point, and every
    curve point carries its estimate."""
    lat = curves["latency"]
    assert list(lat["stage_ms"]) == nodes
    assert lat["images"] == metrics["latency_images"] == 5
    # the reference alone in the system's runtime (native for a selection's networks)
    base = metrics.get("baseline_native_latency_ms_b1", metrics["baseline_as_given_ms_b1"])
    assert lat["alone_ms"][reference] == base
    root = nodes[0]
    assert lat["stage_ms"][root] == lat["path_ms"][root] > 0
    pts = [*curves["learned"], *curves["baselines"]["max_prob"], curves["oracle"]]
    for p in pts:
        assert p["ran_fraction"][root] == 1.0
        assert p["latency_ms"] > 0
        assert abs(p["speedup_est"] * p["latency_ms"] - lat["alone_ms"][reference]) < 1e-9


def test_conv_heads_are_trained_and_named_on_the_page(
    prepared: Callable[[str], object], tmp_path: Path
) -> None:
    prepared("cifar10-jpeg")
    small = ("--limit", "200", "--latency-images", "3", "--no-progress", "--lams", "0,0.3")
    rc, _ = _cli(
        "exits",
        "fit",
        "--model",
        "resnet20_cifar",
        "--convs",
        "-1",
        "--out",
        str(tmp_path / "e"),
        "--budget",
        "10",
        *small,
    )
    assert rc == 0
    assert read_json(tmp_path / "e" / "config.json")["convs"] == -1
    m = read_json(tmp_path / "e" / "metrics.json")
    assert m["head_convs"] == {"layer1": 2, "layer2": 1}
    net = dyve.dynamic.load(tmp_path / "e")
    heads = net.mechanism("early_exit").heads()
    assert m["head_macs"] == {p: h.macs for p, h in heads.items()}
    assert heads["layer1"].macs > 2 * 16 * 32 * 9 * 16 * 16  # its convolutions are counted
    assert m["head_train_top1"]["layer1"] > m["head_top1"]["layer1"]  # fitted on train
    page = tmp_path / "adaptive.md"
    assert _cli("adaptive", "results", str(tmp_path / "e"), "--out", str(page))[0] == 0
    title = "exits after layer1, layer2; conv heads: 2, 1 conv layers, then pooling and a linear"
    assert title in page.read_text()


def test_selection_needs_two_different_networks_before_any_work(tmp_path: Path) -> None:
    for models in ("resnet20_cifar", "resnet20_cifar,resnet20_cifar", "nope,resnet20_cifar"):
        out = tmp_path / "s"
        assert _cli("select", "fit", "--models", models, "--out", str(out))[0] == 2
        assert not out.exists(), "a refused job must not leave a run directory behind"


def test_bad_exit_points_and_budgets_are_refused_before_a_run_exists(tmp_path: Path) -> None:
    out = tmp_path / "e"
    base = ("exits", "fit", "--model", "resnet20_cifar", "--out", str(out), "--no-progress")
    assert _cli(*base, "--exits", "nope")[0] == 2
    assert _cli(*base, "--budget", "-1")[0] == 2
    assert _cli(*base, "--confidence", "0.2")[0] == 2
    assert not out.exists(), "a corrected rerun must not meet a config it never ran"


def test_a_run_resumes_with_another_sweep_but_not_other_caches(tmp_path: Path) -> None:
    """The lambda grid, the features, the budget and its confidence only shape the policies
    fitted from the caches: a run resumes with other values (and runs from before the
    bound, without one, resume too); settings the caches or heads depend on refuse."""
    from dataclasses import replace

    from dyve._io import write_json
    from dyve.mechanisms.adaptive.job import JobConfig, _jsonable, load_config

    cfg = JobConfig(models=("resnet20_cifar",))
    load_config(tmp_path, cfg)
    load_config(tmp_path, replace(cfg, budget_pp=0.5, confidence=None))
    assert read_json(tmp_path / "config.json")["confidence"] is None
    old = _jsonable(cfg)
    del old["confidence"], old["convs"]  # runs from before the bound and the conv heads
    write_json(tmp_path / "config.json", old)
    load_config(tmp_path, cfg)
    load_config(tmp_path, replace(cfg, features="softmax", lams=(0.0, 0.1)))
    assert read_json(tmp_path / "config.json")["lams"] == [0.0, 0.1]
    for changed in ({"convs": -1}, {"pool": 2}, {"limit": 100}, {"models": ("resnet56_cifar",)}):
        with pytest.raises(ValueError, match="another configuration"):
            load_config(tmp_path, replace(cfg, **changed))


def _expected(model: Any, reference: Any, split: str, limit: int, norm: Any) -> tuple[float, ...]:
    """Top-1 and mean executed MACs of ``model.run``, and the reference's top-1, computed
    directly on the images ``evaluate`` reads."""
    from dyve import data

    ds = data.load("cifar10-jpeg", split).subset(slice(0, limit))
    x, y = next(data.batches(ds, limit, norm))
    with torch.no_grad():
        res = model.run(x)
        ref = reference(x)
    top1 = 100.0 * float((res.logits.argmax(1) == y).double().mean())
    base = 100.0 * float((ref.argmax(1) == y).double().mean())
    return top1, float(res.trace.cost.per_sample.mean()), base


def test_exits_evaluate_executes_a_stored_lambda_or_a_threshold_policy(
    prepared: Callable[[str], object], tmp_path: Path
) -> None:
    from dyve.demo import runs_dir
    from dyve.models import model_info

    prepared("cifar10-jpeg")
    run = runs_dir() / "early_exit_resnet56"
    net = dyve.dynamic.load(run)
    net.backend = "fast"
    mech = net.mechanism("early_exit")
    other = next(v for v in mech.config.lams if v != mech.config.lam)
    norm = model_info(net.backbone).norm
    for args, knobs in (
        ((), {"policy": "learned", "lam": mech.config.lam}),
        (("--lam", str(other)), {"policy": "learned", "lam": other}),
        (("--policy", "entropy", "--threshold", "0.3"), {"policy": "entropy", "threshold": 0.3}),
    ):
        out = tmp_path / f"e{len(args)}"
        rc, text = _cli("exits", "evaluate", str(run), "--out", str(out), "--limit", "64", *args)
        assert rc == 0, text
        m = read_json(out / "metrics.json")
        assert set(REQUIRED) - {"speedup_b1"} <= set(m)
        assert {k: m[k] for k in knobs} == knobs
        assert m["split"] == "test-b"
        assert m["n"] == 64
        assert m["cost_mode"] == "executed"
        net.set_knobs(**knobs)
        top1, macs, base = _expected(net, net.detach(), "test-b", 64, norm)
        assert m["top1"] == pytest.approx(top1)
        assert m["macs_per_sample"] == pytest.approx(macs)
        assert m["baseline_top1"] == pytest.approx(base)
        assert m["cost_reduction"] == pytest.approx(net.graph.total_macs / macs)
        assert read_json(out / "config.json")["run"] == str(run)
    out = tmp_path / "timed"
    rc, _ = _cli("exits", "evaluate", str(run), "--out", str(out), "--limit", "8",
                 "--latency-images", "2")  # fmt: skip
    m = read_json(out / "metrics.json")
    assert m["speedup_b1"] > 0
    assert m["latency_frozen"] is True
    assert ("speedup_vs_native_b1" in m) == native.available()


def test_select_evaluate_and_its_errors(
    prepared: Callable[[str], object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyve.demo import runs_dir
    from dyve.mechanisms.adaptive.policy import ThresholdPolicy
    from dyve.mechanisms.adaptive.select_job import load_selection
    from dyve.models import model_info

    prepared("cifar10-jpeg")
    run = runs_dir() / "select_caffe_r20_r56"
    out = tmp_path / "s"
    rc, _ = _cli("select", "evaluate", str(run), "--out", str(out), "--limit", "64",
                 "--policy", "max_prob", "--threshold", "0.9")  # fmt: skip
    assert rc == 0
    m = read_json(out / "metrics.json")
    assert m["baseline"] == "resnet56_cifar"
    assert m["policy"] == "max_prob"
    sel = load_selection(run)
    sel.policy, sel.policy_macs = ThresholdPolicy("max_prob", 0.9), 0.0
    ref = sel.networks["resnet56_cifar"]
    top1, macs, base = _expected(sel, ref, "test-b", 64, model_info(ref).norm)
    assert (m["top1"], m["macs_per_sample"], m["baseline_top1"]) == pytest.approx(
        (top1, macs, base)
    )
    assert m["cost_reduction"] > 1, "cheaper networks answer some images"
    sel_run, new = ("select", "evaluate", str(run)), ("--out", str(tmp_path / "x"))
    bad = [
        ((*sel_run, *new, "--threshold", "0.5"), "needs a policy"),
        ((*sel_run, *new, "--policy", "entropy"), "needs a threshold"),
        (
            (*sel_run, *new, "--policy", "entropy", "--threshold", "0.5", "--lam", "0.03"),
            "not both",
        ),
        ((*sel_run, *new, "--lam", "0.123"), "was not fitted"),
        ((*sel_run, "--out", str(run)), "new directory"),
        (("exits", "evaluate", str(tmp_path), *new), "not a fitted"),
        (("exits", "evaluate", str(runs_dir() / "dyvedeep_resnet56"), *new), "dyve exits fit"),
    ]
    capsys.readouterr()
    for argv, message in bad:
        rc, _ = _cli(*argv)
        assert rc != 0, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x").exists(), "a refused evaluation leaves no run directory"
    assert _cli(*sel_run, *new, "--split", "test-a", "--lam", "0.123")[0] == 2  # after it
    assert "warning: test-a is the split the policies were fitted on" in capsys.readouterr().err
