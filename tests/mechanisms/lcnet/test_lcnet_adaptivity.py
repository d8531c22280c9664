"""The LC-Net page's adaptivity section: blocks decided per image, and the cost's spread."""

from __future__ import annotations

from typing import Any

from dyve.mechanisms.lcnet.adaptivity import adaptivity_lines


def _row(name: str, ran: list[float], method: str = "lcnet", lam_l: float = 0.1, **m: Any) -> dict:  # type: ignore[type-arg]
    cfg = {"method": method, "layer": True, "lam_l": lam_l}
    fractions = {f"layer1.{i}": f for i, f in enumerate(ran)}
    kind = "ConvNet-AIG" if method == "aig" else "LC-Net"
    return {"run": name, "kind": kind, "cfg": cfg, "m": {"ran_fraction": fractions, **m}}


SPREAD = {"macs_min": 20e6, "macs_p50": 40e6, "macs_p95": 45e6, "macs_max": 50e6}


def test_blocks_and_spread_per_run_and_what_they_say() -> None:
    rows = [
        _row("fixed", [1.0, 0.0, 0.0008, 1.0], **SPREAD),  # one block for 4 images in 5,000
        _row("old", [1.0, 1.0, 0.0, 0.0]),  # reported before the spread was kept
        _row("open", [1.0, 1.0, 1.0, 1.0], lam_l=0.0),  # no sparsity loss: not counted
        _row("aig", [0.5, 0.98, 0.995, 1.0], method="aig"),
    ]
    lines = adaptivity_lines(rows)
    assert "| fixed | LC-Net | 2 | 1 | 1 | 20.0 | 40.0 | 45.0 | 50.0 | 2.50x |" in lines
    assert "| old | LC-Net | 2 | 2 | 0 | - | - | - | - | - |" in lines
    assert any(line.endswith("is re-reported with `--resume`).") for line in lines)
    assert (
        "- Runs with L-Net's block gates: in 2 of 2, every block runs for fewer than 1% of "
        "the images or is skipped by fewer than 1%: L-Net's decisions are the same for "
        "(nearly) every image, a learned static choice of blocks." in lines
    )
    assert (
        "- ConvNet-AIG (`aig`): 2 of its 4 blocks are run by between 1% and 99% of the images."
        in lines
    )
    # one block that a tenth of the images skip: no longer the same for every image
    rows[1] = _row("old", [1.0, 0.9, 0.0, 0.0])
    said = [line for line in adaptivity_lines(rows) if line.startswith("- Runs with")]
    assert said == [
        "- Runs with L-Net's block gates: in 1 of 2, every block runs for fewer than 1% of "
        "the images or is skipped by fewer than 1%; blocks decided per image in `old`."
    ]
    # all spreads kept: no note on re-reporting
    assert not any("re-report" in line for line in adaptivity_lines([rows[0]]))


def test_an_image_that_ran_nothing_and_a_run_without_blocks_break_nothing() -> None:
    free = _row("free", [0.0, 0.0], **(SPREAD | {"macs_min": 0.0}))
    empty = _row("empty", [])  # no gated block: not counted among L-Net's runs
    lines = adaptivity_lines([free, empty])
    assert "| free | LC-Net | 0 | 2 | 0 | 0.0 | 40.0 | 45.0 | 50.0 | - |" in lines
    assert [line for line in lines if line.startswith("- Runs with")] == [
        "- Runs with L-Net's block gates: in 1 of 1, every block runs for fewer than 1% of "
        "the images or is skipped by fewer than 1%: L-Net's decisions are the same for "
        "(nearly) every image, a learned static choice of blocks."
    ]
