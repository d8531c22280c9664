"""The D2NN results page's classification of runs, including configs written before
``--freeze`` existed (they have no ``freeze`` field)."""

from __future__ import annotations

from dyve.mechanisms.d2nn.results import _epochs, _kind


def test_each_run_is_classified_once() -> None:
    assert _kind({"route": "learned", "init": "pre", "freeze": True}) == "frozen"
    assert _kind({"route": "learned", "init": "pre", "freeze": False}) == "joint"
    assert _kind({"route": "learned", "init": "pre"}) == "joint"  # written before --freeze
    assert _kind({"route": "static", "init": None}) == "alone"
    assert _kind({"route": "all", "init": None}) == "pre"
    assert _kind({"route": "random", "init": "runs/pre"}) == "again"


def test_epochs_per_kind_as_a_range() -> None:
    runs = [
        {"cfg": {"route": "learned", "init": "p", "epochs": 3}},  # old joint run
        {"cfg": {"route": "learned", "init": "p", "freeze": False, "epochs": 5}},
        {"cfg": {"route": "learned", "init": "p", "freeze": True, "epochs": 12}},
    ]
    assert _epochs(runs, "joint") == "3-5"
    assert _epochs(runs, "frozen") == "12"
    assert _epochs(runs, "alone") == "?"
