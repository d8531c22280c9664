"""Which split fits (policies, checkpoints, lambdas) and which split reports, per backbone.

Anything chosen from data (a policy, a checkpoint, a trade-off) must be chosen on images
the weights did not train on. ``val`` when the backbone's weights held val out; else the
halves of test (``test-a`` to choose, ``test-b`` to report once): the shipped CIFAR
ResNets started from weights that saw all 50,000 training images.
"""

from __future__ import annotations


def heldout(model: str) -> bool:
    """True when the shipped weights of ``model`` did not train on val."""
    from dyve.models.weights import shipped_meta

    return shipped_meta(model).get("val_heldout") is True


def choose_splits(fit: str, report: str, heldout: bool) -> tuple[str, str]:
    """(fit, report) splits; ``auto`` avoids choosing on images the weights trained on."""
    fit = fit if fit != "auto" else ("val" if heldout else "test-a")
    report = report if report != "auto" else ("test" if fit == "val" else "test-b")
    if fit == report:
        raise ValueError(f"fit and report splits must differ, both are {fit!r}")
    return fit, report
