"""``dyve export``: which segments compile, the compiled model equals the eager one, bench
times it, and a departing model is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import dyve
from dyve import data
from dyve.cli.main import main
from dyve.demo import runs_dir
from dyve.errors import DyveError
from dyve.export import export, load, model_digests, segments, zoo_digests
from dyve.mechanisms.dyvedeep import native
from dyve.models import create
from dyve.models.weights import shipped_path
from dyve.report import load_run


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    ds = data.load_images("sample", "test", limit=8)
    x, _ = next(data.batches(ds, 8, dyve.models.model_info(create("resnet20_cifar")).norm))
    return x


def test_segments_are_the_static_code_between_decisions(skip_run: Path) -> None:
    names = [n for n, _ in segments(load_run(skip_run).model)]
    blocks = [f"backbone.layer{s}.{b}.module" for s in (1, 2, 3) for b in range(3)]
    assert names == ["backbone.conv1", *blocks, "backbone.linear"]  # gates left out
    # DyVEDeep's sites run their own kernels: only the layers outside them compile
    dyvedeep = [n for n, _ in segments(load_run(runs_dir() / "dyvedeep_resnet56").model)]
    assert dyvedeep == ["backbone.conv1", "backbone.linear"]
    selection = [n for n, _ in segments(load_run(runs_dir() / "select_caffe_r20_r56").model)]
    assert selection == [
        "networks.caffe_cifar10",
        "networks.resnet20_cifar",
        "networks.resnet56_cifar",
    ]


def test_exported_equals_eager_and_is_benched(
    skip_run: Path, images: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = export(skip_run, tmp_path / "exp", images, min_macs=1e6)
    assert desc["check"]["same_costs"]
    assert desc["check"]["max_rel_diff"] <= 1e-4
    weights = hashlib.sha256((skip_run / "dynamic.safetensors").read_bytes()).hexdigest()
    assert desc["sha256"] == {**model_digests(skip_run), "dynamic.safetensors": weights}
    assert set(desc["files"]) == {"dynamic.json", "dynamic.safetensors"}
    assert desc["zoo_sha256"] == {}  # its files hold every tensor
    # every block of resnet20 (1.2-4.7 M MACs) compiles; the stem and the classifier not
    assert desc["compiled"] == [n for n in desc["segments"] if n.endswith(".module")]
    assert len(desc["compiled"]) == 9
    eager, compiled = load_run(skip_run).model, load(tmp_path / "exp")
    assert compiled.frozen, "an export is loaded for inference: frozen"
    assert not eager.frozen
    with torch.no_grad():
        a, b = eager.run(images), compiled.run(images)
    assert torch.allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.trace.cost.macs, b.trace.cost.macs)
    assert torch.equal(a.trace.units["layer2.1"], b.trace.units["layer2.1"])
    rc = main(["bench", str(tmp_path / "exp"), "--repeats", "2", "--no-compile"])
    assert rc == 0
    bench = json.loads((tmp_path / "exp" / "bench.json").read_text())
    assert bench["exported"] is True
    assert bench["b1"]["exported_ms"] > 0
    assert bench["b1"]["exported_vs_dynamic"] > 0
    assert "vs the eager dynamic network" in capsys.readouterr().out
    # exported again: the timing of the earlier export does not stay beside the new one
    assert export(skip_run, tmp_path / "exp", images, min_macs=1e6)["sha256"] == desc["sha256"]
    assert not (tmp_path / "exp" / "bench.json").exists()


def _sha(path: Path | None) -> str:
    assert path is not None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zoo_digests_name_the_shipped_weights_a_run_loads_by_name(tmp_path: Path) -> None:
    """A backbone saved without its tensors and a selection's networks load the zoo's
    shipped weights: those are hashed; a run holding every tensor loads none."""
    early = runs_dir() / "early_exit_resnet56"
    assert zoo_digests(early) == {"resnet56_cifar": _sha(shipped_path("resnet56_cifar"))}
    names = ["caffe_cifar10", "resnet20_cifar", "resnet56_cifar"]
    assert zoo_digests(runs_dir() / "select_caffe_r20_r56") == {
        n: _sha(shipped_path(n)) for n in names
    }
    assert zoo_digests(runs_dir() / "lcnet_resnet56") == {}
    # a description naming weights dyve does not ship is refused, not hashed as nothing
    fake = tmp_path / "fake"
    fake.mkdir()
    desc = json.loads((early / "dynamic.json").read_text())
    (fake / "dynamic.json").write_text(json.dumps({**desc, "backbone": "resnet32_cifar"}))
    with pytest.raises(DyveError, match="resnet32_cifar"):
        zoo_digests(fake)


def test_segment_macs_add_up_and_small_segments_stay_eager(
    skip_run: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    from dyve.export import segment_macs

    net = load_run(skip_run).model
    macs = segment_macs(net, (3, 32, 32))
    # the segments hold every conv and linear of resnet20: their sum is the static cost
    assert sum(macs.values()) == pytest.approx(net.static_macs)
    assert net.backend == "fast"  # restored after counting
    desc = export(skip_run, tmp_path / "exp", images)  # default: 10 M MACs
    assert desc["compiled"] == []  # resnet20's blocks are all smaller
    assert desc["min_segment_macs"] == 10e6


def test_export_refuses_what_departs_or_is_not_a_run(
    skip_run: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    with pytest.raises(DyveError, match="departs from the eager one"):
        export(skip_run, tmp_path / "strict", images, tol=-1.0, min_macs=1e6)
    assert not (tmp_path / "strict" / "export.json").exists()
    with pytest.raises(DyveError, match=r"no dynamic\.json or selection\.json"):
        export(tmp_path, tmp_path / "x", images)
    with pytest.raises(DyveError, match="not a dyve export"):
        load(skip_run)


def test_a_model_that_runs_natively_is_exported_frozen_not_compiled(
    images: torch.Tensor, tmp_path: Path
) -> None:
    """Compiling early exit's stages in place took it off its native segments (torch.fx
    cannot lower a compiled module): the export ran 2.5x slower than the run itself."""
    if not native.available():
        pytest.skip("the native kernels are unavailable")
    desc = export(runs_dir() / "early_exit_resnet56", tmp_path / "exp", images[:4])
    assert desc["native"] is True
    assert desc["compiled"] == []
    model = load(tmp_path / "exp")
    assert model.frozen
    with torch.no_grad():
        model(images[:1])
    mech = model.mechanism("early_exit")
    assert mech.program_unsupported is None
    assert mech._program is not None
    assert mech._program.frozen


def test_the_export_page_shows_the_shipped_runs() -> None:
    """docs/results/export.md benches exports of the runs `dyve demo` ships: each kept
    export.json's digests are the shipped model files' and the zoo weights' they load (a
    run or zoo model shipped anew and not re-exported fails here), and the page names them."""
    root = Path(__file__).resolve().parents[1] / "docs" / "results"
    page = (root / "export.md").read_text()
    kept = sorted((root / "export").iterdir())
    assert {p.name for p in kept} == {p.name for p in runs_dir().iterdir() if p.is_dir()}
    for folder in kept:
        exp = json.loads((folder / "export.json").read_text())
        shipped = runs_dir() / folder.name
        assert exp["sha256"] == model_digests(shipped), folder.name
        assert exp["zoo_sha256"] == zoo_digests(shipped), folder.name
        assert exp["files"] == list(exp["sha256"])
        for h in [*exp["sha256"].values(), *exp["zoo_sha256"].values()]:
            assert f" {h[:12]}" in page
