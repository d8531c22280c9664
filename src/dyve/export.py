"""``dyve export``: a dynamic model for deployment, its static segments compiled, routing kept.

A dynamic network is static code between decision points. :func:`segments` finds the
largest submodules that hold no decision (no dyve unit, site, tail or tap inside, no module
a mechanism drives itself, such as D2NN's graph) and do real work (a convolution or a linear
layer): a stem, the blocks a gate may skip, the stages between exits, the nodes of a D2NN
graph, each network of a selection. Sites (DyVEDeep's layers, LC-Net's channel-gated
convolutions) run their own kernels and stay as they are. A model that runs as native
programs (:func:`runs_native`) is not compiled at all: it is exported as it is and loads
frozen. Otherwise :func:`compile_segments`
compiles each segment of at least :data:`MIN_SEGMENT_MACS` in place with
``torch.compile`` (inductor, ``freezing``: BN folded, weights pre-packed, as for the
dense baseline of ``dyve bench``), while the gates, the gather/scatter of rows and the
trace stay in eager Python; smaller segments stay eager, as compiling them does not pay.
Module identity is kept, so everything that reaches into a block (a skip path, a tap)
still works.

``export(run_dir, out)`` copies the run's model files into ``out``, compiles, checks the
compiled model against the eager one on real images (logits within ``tol``, every sample's
executed cost identical, i.e. the same decisions) and writes ``export.json``; ``load(out)``
gives the compiled model back (compilation happens on the first calls). The weights are
frozen into the compiled code, and native programs are frozen too
(:mod:`dyve.dynamic.frozen`): export for inference, after training.

Mechanism & limitations: compiled code is cached per process, not written to disk, so a
fresh process compiles again on its first calls (seconds per segment); TorchScript and ONNX
files are not written. A segment holding a hook that routes (early exit) is compiled with a
graph break at the hook.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyve._io import check_out, file_digest, read_json, write_json
from dyve.dynamic.frozen import Freezable
from dyve.errors import DyveError

FORMAT = "dyve.export/1"
#: inductor options of every segment (those of the compiled dense baseline of ``dyve bench``)
OPTIONS: dict[str, Any] = {"freezing": True}
#: segments below this many MACs per sample stay eager: a compiled call costs about what
#: it saves there (D2NN's nodes of a few M MACs ran slower compiled, stages of 40 M faster;
#: docs/results/export.md, measured on a 2-core CPU)
MIN_SEGMENT_MACS = 10e6
#: the files that make a run's model (everything else in a run directory stays behind)
MODEL_FILES = ("dynamic.json", "dynamic.safetensors", "selection.json", "policies.safetensors")


def _routes(m: nn.Module) -> bool:
    """True for a module that decides or is driven by a mechanism (never compiled whole)."""
    from dyve.dynamic.site import SiteUnit, Tail
    from dyve.dynamic.taps import Tap
    from dyve.dynamic.unit import Unit

    return isinstance(m, Unit | SiteUnit | Tail | Tap) or hasattr(m, "dyve_detach")


def _works(m: nn.Module) -> bool:
    return any(isinstance(x, nn.Conv2d | nn.Linear) for x in m.modules())


def segments(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The static segments of a DynamicNet or a Selection, by qualified name, in order."""
    trees = [(n, getattr(model, n, None)) for n in ("backbone", "networks", "exit_points")]
    found = [(n, t) for n, t in trees if isinstance(t, nn.Module)]
    if not found or found[0][0] == "exit_points":
        raise DyveError(f"{type(model).__name__}: neither a DynamicNet nor a Selection")
    return [seg for name, tree in found for seg in _walk(tree, name + ".")]


def _walk(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    from dyve.dynamic.site import SiteUnit, Tail
    from dyve.dynamic.unit import Unit

    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if isinstance(module, Unit) and name == "gates":
            continue  # asked through decide(), never called
        if isinstance(child, SiteUnit | Tail):
            continue  # a site runs its own kernels (DyVEDeep, LC-Net's channels)
        dynamic = any(_routes(x) for x in child.modules())
        container = isinstance(child, nn.ModuleDict | nn.ModuleList)
        if dynamic or container:
            out += _walk(child, f"{prefix}{name}.")
        elif _works(child):
            out.append((prefix + name, child))
    return out


@torch.no_grad()
def segment_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """MACs per sample of each static segment: a network of a selection by its static
    count, a segment of a dynamic network counted while the emulated back-end runs every
    unit on one blank image."""
    from dyve.cost import CostCounter, static_cost
    from dyve.dynamic.net import DynamicNet
    from dyve.graph.discover import subtree_macs

    found = segments(model)
    if not isinstance(model, DynamicNet):  # a selection: whole zoo networks
        return {n: float(static_cost(m).total_macs) for n, m in found}
    old = model.backend
    model.backend = "emulated"
    try:
        with CostCounter(model) as cc:
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.backend = old
    per_module = cc.by_module()
    return {n: float(subtree_macs(n, per_module)) for n, _ in found}


def compile_segments(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Compile the static segments of ``model`` in place (``names``: only those); their
    names."""
    found = [(n, m) for n, m in segments(model) if names is None or n in names]
    # identical blocks share their forward's code: one compiled graph per block and shape
    limit = max(torch._dynamo.config.recompile_limit, 8 * len(found))
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 16 * limit
    )
    for _, m in found:
        m.compile(options=OPTIONS)
    return [n for n, _ in found]


def model_digests(folder: Path) -> dict[str, str]:
    """sha256 of each model file in ``folder`` (those :func:`export` copies): what
    identifies an exported network, where a folder's path does not. Backbone weights that
    a run loads by name from the zoo are in :func:`zoo_digests`."""
    return {f: file_digest(folder / f) for f in MODEL_FILES if (folder / f).is_file()}


def zoo_digests(folder: Path) -> dict[str, str]:
    """sha256 of the shipped zoo weights that the model in ``folder`` loads by name, by
    model: a dynamic network saved without its backbone's tensors (exit heads, DyVEDeep's
    knobs), every network of a selection. With :func:`model_digests`, all the weights an
    export runs: shipping new zoo weights changes what such a run computes, not its files."""
    from dyve.dynamic.save import DESCRIPTION, SHIPPED
    from dyve.models.weights import shipped_path

    names: list[str] = []
    if (folder / "selection.json").is_file():
        desc = read_json(folder / "selection.json")
        names = list(desc.get("networks", [])) if isinstance(desc, dict) else []
    elif (folder / DESCRIPTION).is_file():
        desc = read_json(folder / DESCRIPTION)
        if isinstance(desc, dict) and desc.get("backbone_weights") == SHIPPED:
            names = [str(desc["backbone"])]
    digests = {}
    for name in names:
        path = shipped_path(name)
        if path is None:
            raise DyveError(f"{folder}: loads the shipped weights of {name}, which dyve lacks")
        digests[name] = file_digest(path)
    return digests


def load(folder: str | Path) -> nn.Module:
    """The exported model in ``folder`` (written by :func:`export`), segments compiled."""
    from dyve.report.subjects import load_run

    folder = Path(folder)
    desc = read_json(folder / "export.json") if (folder / "export.json").is_file() else None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise DyveError(f"{folder}: not a dyve export (no {FORMAT} export.json)")
    model = load_run(folder).model
    compile_segments(model, list(desc["compiled"]))
    if isinstance(model, Freezable):  # its native programs take the weights as constants too
        model.freeze()
    return model.eval()


@torch.no_grad()
def check(eager: nn.Module, compiled: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Compiled against eager on ``x``, one image at a time and as one batch."""
    worst, same = 0.0, True
    for batch in [*(x[i : i + 1] for i in range(len(x))), x]:
        a, b = eager.run(batch), compiled.run(batch)  # type: ignore[operator]
        scale = float(a.logits.abs().max()) or 1.0
        worst = max(worst, float((a.logits - b.logits).abs().max()) / scale)
        same &= torch.equal(a.trace.cost.macs, b.trace.cost.macs)
    return {"images": len(x), "max_rel_diff": worst, "same_costs": bool(same)}


@torch.no_grad()
def runs_native(model: nn.Module, x: torch.Tensor) -> bool:
    """True when ``model``'s forward runs as native programs on inputs like ``x``: a
    DynamicNet's whole-network runner (DyVEDeep, LC-Net, ConvNet-AIG, early exit, D2NN) or every
    network of a selection. Compiling its segments in place would take
    it off that path (torch.fx cannot lower a compiled module; early exit then ran 2.5x
    slower), so :func:`export` leaves such a model as it is, to run frozen."""
    from dyve.dynamic.net import DynamicNet
    from dyve.mechanisms.adaptive.select import Selection

    one = x[:1]
    if isinstance(model, DynamicNet):
        return model.backend == "fast" and model.eval()._runner((one,), {}) is not None
    if isinstance(model, Selection):
        return all(model._network(n, one) is not m for n, m in model.networks.items())
    return False


def export(
    run_dir: str | Path,
    out: str | Path,
    images: torch.Tensor,
    *,
    tol: float = 1e-4,
    min_macs: float = MIN_SEGMENT_MACS,
) -> dict[str, Any]:
    """Copy ``run_dir``'s model into ``out``, compile the segments of at least ``min_macs``
    MACs per sample (none when the model runs as native programs: :func:`runs_native`),
    check on ``images``, write export.json."""
    from dyve.report.subjects import load_run

    run_dir, out = Path(run_dir), Path(out)
    files = [f for f in MODEL_FILES if (run_dir / f).is_file()]
    if not files:
        raise DyveError(f"{run_dir}: no dynamic.json or selection.json to export")
    if out.resolve() == run_dir.resolve():
        raise DyveError("--out must be a new folder, not the run itself")
    check_out(out, {"source": str(run_dir)}, record="export.json")  # may be exported again
    out.mkdir(parents=True, exist_ok=True)
    # an earlier export's record first, then its files and timing: a crash before the new
    # export.json is written leaves a folder that claims no export (load refuses it)
    for f in ("export.json", *MODEL_FILES, "bench.json"):
        (out / f).unlink(missing_ok=True)
    for f in files:
        shutil.copyfile(run_dir / f, out / f)
    eager = load_run(out).model.eval()
    compiled = load_run(out).model.eval()
    macs = segment_macs(compiled, tuple(images.shape[1:]))
    native = runs_native(compiled, images)
    big = [n for n, v in macs.items() if v >= min_macs]
    names = [] if native else compile_segments(compiled, big)
    result = check(eager, compiled, images)
    desc = {
        "format": FORMAT,
        "source": str(run_dir),
        "files": files,
        # the run's model files by content: a page built from this export can be checked
        # against the run it claims to show (a path names a folder whose files change)
        "sha256": model_digests(out),
        # and the zoo weights it loads by name (none when its files hold every tensor)
        "zoo_sha256": zoo_digests(out),
        "compiler": "torch.compile (inductor)",
        "options": OPTIONS,
        "torch": torch.__version__,
        "segments": macs,
        "min_segment_macs": min_macs,
        # True: the model runs as native programs, so nothing was compiled; it loads frozen
        "native": native,
        "compiled": names,
        "check": {**result, "tol": tol},
    }
    if result["max_rel_diff"] > tol or not result["same_costs"]:
        raise DyveError(
            f"the compiled model departs from the eager one on {result['images']} images "
            f"(max relative logit difference {result['max_rel_diff']:.2e}, same decisions: "
            f"{result['same_costs']}); not exported"
        )
    write_json(out / "export.json", desc)
    return desc
