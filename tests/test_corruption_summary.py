"""The corruption block of the summary: numbers recomputed by hand from synthetic accuracy rows."""

from __future__ import annotations

from engine.sinks.corruption_summary import render_corruption_summary
from engine.stats.aggregate import AccuracyRow
from engine.stats.corruption import ALEXNET_CLEAN_ERROR, ALEXNET_IMAGENET_C


def _row(model: str, pert: str, family: str, level: float, k: int, n: int = 100) -> AccuracyRow:
    return AccuracyRow(model, pert, family, None, level, n, k, 0.0, 1.0)


def _rows() -> list[AccuracyRow]:
    rows = [_row("a", "clean", "clean", 0, 90), _row("b", "clean", "clean", 0, 95)]
    for s in range(1, 6):
        rows += [_row("a", "ic_fog", "corruption", s, 80 - 10 * s), _row("b", "ic_fog", "corruption", s, 90 - 5 * s)]
    return rows


def _cells(text: str, model: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(model + " "))
    return line.split()[1:]


def test_mce_relative_to_the_first_model() -> None:
    text = render_corruption_summary(_rows(), ["a", "b"], None)
    assert "mCE % (vs a)" in text
    # a: errors 0.3..0.7 (sum 2.5), clean error 0.1; b: errors 0.15..0.35 (sum 1.25), clean 0.05
    assert _cells(text, "a") == ["90.0", "50.0", "100.0", "100.0"]
    rel_b = (1.25 - 5 * 0.05) / (2.5 - 5 * 0.1)
    assert _cells(text, "b") == ["95.0", "75.0", "50.0", f"{100 * rel_b:.1f}"]


def test_alexnet_baseline_maps_ic_prefixed_keys() -> None:
    text = render_corruption_summary(_rows(), ["a", "b"], "alexnet")
    mce_a = 2.5 / (5 * ALEXNET_IMAGENET_C["fog"])
    rel_a = (2.5 - 5 * 0.1) / (5 * ALEXNET_IMAGENET_C["fog"] - 5 * ALEXNET_CLEAN_ERROR)
    assert _cells(text, "a")[2:] == [f"{100 * mce_a:.1f}", f"{100 * rel_a:.1f}"]


def test_undefined_ce_says_na_and_no_corruptions_prints_nothing() -> None:
    perfect = [_row("p", "clean", "clean", 0, 100)] + [_row("p", "fog", "corruption", s, 100) for s in range(1, 6)]
    other = [_row("q", "fog", "corruption", s, 50) for s in range(1, 6)]
    text = render_corruption_summary(perfect + other, ["p", "q"], None)
    assert _cells(text, "q") == ["n/a", "50.0", "n/a", "n/a"]
    assert render_corruption_summary([_row("p", "clean", "clean", 0, 100)], ["p"], None) == ""
