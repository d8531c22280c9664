"""What a report compares: *subjects*, each a runnable model with its dense reference.

A subject is read from a run directory (:func:`load_run`): a saved dynamic network
(``dynamic.json``, any mechanism: DyVEDeep, early exit, LC-Net, ConvNet-AIG, D2NN, block
skip) or a network-selection run (``selection.json``). Its *reference* is the dense network
its cost reduction and speedup are measured against: the dynamic network's own backbone
with every gate removed (:meth:`DynamicNet.detach`), or the most expensive network of a
selection. :func:`dense_subject` wraps a zoo model as a subject of its own (the baseline
row). Whatever the run was saved with, subjects run on the ``fast`` back-end: a report
shows what executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dyve._io import read_json
from dyve.data.loader import Normalization
from dyve.dynamic.net import DynamicNet
from dyve.errors import DyveError

#: Display names of the mechanisms (registry name -> what a reader knows it as).
METHOD_NAMES = {
    "dyvedeep": "DyVEDeep",
    "early_exit": "early exit",
    "lcnet": "LC-Net",
    "aig": "ConvNet-AIG",
    "skipnet": "SkipNet-style",
    "d2nn": "D2NN",
    "block_skip": "block skip",
}


@dataclass(frozen=True)
class StoredCurve:
    """A run's own accuracy-versus-cost sweep: (mean MACs, top-1 %) points, on its split."""

    points: list[tuple[float, float]]
    split: str
    cost_mode: str


@dataclass
class Subject:
    """One row of a report: a model that returns a trace from ``run(x)``, and its reference."""

    label: str
    method: str
    #: a DynamicNet or a Selection (both ``run(x) -> DynamicResult``)
    model: nn.Module
    #: the dense network the costs and speedups compare to
    reference: nn.Module
    reference_name: str
    norm: Normalization
    input_shape: tuple[int, int, int]
    run_dir: Path | None = None
    #: the run's own stored files, shown beside the measurement when present
    curve: StoredCurve | None = None
    bench: dict[str, Any] | None = None

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"


def dense_subject(model_name: str) -> Subject:
    """The zoo model ``model_name`` with its shipped weights, as a dense baseline subject."""
    from dyve.models import create

    return _dense(create(model_name, pretrained=True), model_name, f"dense {model_name}")


def _dense(backbone: nn.Module, name: str, label: str) -> Subject:
    from dyve.models import model_info

    info = model_info(backbone)
    net = DynamicNet(backbone, backbone_id=name)
    return Subject(
        label=label,
        method="dense",
        model=net,
        reference=net.detach(),
        reference_name=name,
        norm=info.norm,
        input_shape=info.input_size,
    )


def with_dense(subjects: list[Subject]) -> list[Subject]:
    """``subjects`` after one dense row per reference architecture that has none.

    The dense row is the zoo model with its shipped weights when there are any (the
    baseline a user starts from), else the first subject's own reference (for example a
    D2NN graph run statically with its trained weights).
    """
    from dyve.models import shipped_models

    shipped = set(shipped_models())
    have = {s.reference_name for s in subjects if s.is_dense}
    dense: list[Subject] = []
    for s in subjects:
        name = s.reference_name
        if name in have:
            continue
        have.add(name)
        if name in shipped:
            dense.append(dense_subject(name))
        else:
            dense.append(_dense(s.reference, name, f"dense ({s.label}'s weights)"))
    return dense + subjects


def load_run(run_dir: str | Path, label: str | None = None) -> Subject:
    """The subject saved in ``run_dir`` (see module docstring); a clear error otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DyveError(f"{run_dir}: no such run directory")
    if (run_dir / "selection.json").is_file():
        subject = _selection(run_dir)
    elif (run_dir / "dynamic.json").is_file():
        subject = _dynamic(run_dir)
    else:
        raise DyveError(
            f"{run_dir}: neither dynamic.json (a saved dynamic network) nor selection.json "
            "(a network-selection run); this command needs one of them"
        )
    subject.label = label or run_dir.name
    subject.run_dir = run_dir
    subject.curve = stored_curve(run_dir)
    if (run_dir / "bench.json").is_file():
        subject.bench = read_json(run_dir / "bench.json")
    return subject


def stored_curve(run_dir: Path) -> StoredCurve | None:
    """The sweep a run stored in ``curve.json`` (a sweep's or a DyVEDeep calibration's)."""
    path = run_dir / "curve.json"
    if not path.is_file():
        return None
    doc = read_json(path)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == "dyve.curve/1":
        from dyve.eval.curve import TradeoffCurve

        curve = TradeoffCurve.from_json(path)
        pts = [(p.macs_mean, p.top1) for p in curve.points]
        split = curve.points[0].split if curve.points else "?"
        return StoredCurve(pts, split, curve.cost_mode)
    if fmt == "dyve.dyvedeep-curve/1":
        pts = [(float(p["macs_mean"]), float(p["top1"])) for p in doc["points"]]
        cfg = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
        split = cfg.get("split", "calibration split") if isinstance(cfg, dict) else "?"
        return StoredCurve(pts, str(split), "simulated")
    return None  # a curve this report does not know how to read: left out, not guessed


def _dynamic(run_dir: Path) -> Subject:
    from dyve.dynamic import load
    from dyve.models import create, model_info

    net = load(run_dir)
    net.backend = "fast"
    if net.backbone_id is None:
        raise DyveError(f"{run_dir}: the backbone is not a zoo model")
    info = model_info(create(net.backbone_id, **net.backbone_kwargs))
    names = [METHOD_NAMES.get(m.name, m.name) for m in net.mechanisms]
    return Subject(
        label=run_dir.name,
        method=" + ".join(names) or "dense",
        model=net,
        reference=net.detach(),
        reference_name=net.backbone_id,
        norm=info.norm,
        input_shape=info.input_size,
    )


def _selection(run_dir: Path) -> Subject:
    from dyve.cost import static_cost
    from dyve.mechanisms.adaptive.select_job import load_selection
    from dyve.models import model_info

    sel = load_selection(run_dir)
    nets = dict(sel.networks.items())
    infos = {k: model_info(v) for k, v in nets.items()}
    norms = {(i.norm.mean, i.norm.std) for i in infos.values()}
    if len(norms) != 1:
        raise DyveError(f"{run_dir}: the selected networks normalise inputs differently")
    biggest = max(nets, key=lambda k: static_cost(nets[k]).total_macs)
    info = infos[biggest]
    return Subject(
        label=run_dir.name,
        method="network selection",
        model=sel,
        reference=nets[biggest],
        reference_name=biggest,
        norm=info.norm,
        input_shape=info.input_size,
    )
