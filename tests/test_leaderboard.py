"""The leaderboard (``stats/leaderboard.py``) and the headline sentences: numbers against hand computation and the
metrics modules, interval/test agreement, and ``gauntlet report A B C`` on three digits checkpoints in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engine.errors import GauntletError
from engine.stats import corruption as cm
from engine.stats import leaderboard as lb
from engine.stats.compare import ATTACKED_NOTE, pair_headline, paired_comparison, paired_rows
from engine.stats.intervals import trapezoid_area, wilson_interval
from tests.conftest import run_cli

N = 120
CORRUPTIONS = (("contrast", 1), ("contrast", 3), ("gaussian_noise", 1), ("gaussian_noise", 3))


def _draw(rng: np.random.Generator, p: float) -> dict[tuple[str, int], bool]:
    return {("digits", i): bool(x) for i, x in enumerate(rng.random(N) < p)}


def _synthetic(seed: int = 0, gap: float = 0.25) -> dict[str, dict[tuple[str, str, float], Any]]:
    """Three models: a (robust), b, c (no pgd at ε 0.2); clean, FGSM/PGD at ε 0.1 and 0.2, two corruptions."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[tuple[str, str, float], Any]] = {}
    for i, model in enumerate("abc"):
        base = 0.9 - i * gap / 2
        o: dict[tuple[str, str, float], Any] = {("clean", "clean", 0.0): _draw(rng, 0.97 - 0.03 * i)}
        for eps in (0.1, 0.2):
            o[("fgsm_linf", "attack", eps)] = _draw(rng, base - eps)
            if not (model == "c" and eps == 0.2):
                o[("pgd_linf", "attack", eps)] = _draw(rng, base - 2 * eps)
        for name, sev in CORRUPTIONS:
            o[(name, "corruption", float(sev))] = _draw(rng, 0.95 - 0.1 * sev - 0.05 * i)
        out[model] = o
    return out


NORMS = {"clean": None, "fgsm_linf": "linf", "pgd_linf": "linf", "contrast": None, "gaussian_noise": None}


def _errors(o: dict[tuple[str, str, float], Any]) -> dict[str, np.ndarray]:
    keys = [(n, "corruption", float(s)) for n, s in CORRUPTIONS]
    rows = [(n, int(s), ok) for n, _, s in keys for ok in o[(n, "corruption", s)].values()]
    return cm.error_by_severity([r[2] for r in rows], [r[0] for r in rows], [r[1] for r in rows])


def test_cells_match_hand_computation_and_the_corruption_metrics() -> None:
    data = _synthetic()
    board = lb.build(data, NORMS)
    assert [c.key for c in board.columns] == ["clean", "linf@0.1", "linf@0.2", "auc:linf", "corruption", "mce"]
    for m, o in data.items():
        clean = board.cell(m, "clean")
        k = sum(o[("clean", "clean", 0.0)].values())
        assert (clean.k, clean.n, clean.value) == (k, N, k / N)
        assert (clean.ci_low, clean.ci_high) == wilson_interval(k, N)
        wc = [sum(o[("fgsm_linf", "attack", 0.1)][s] and o[("pgd_linf", "attack", 0.1)][s]
                  for s in o[("clean", "clean", 0.0)]) / N]
        members = ("fgsm_linf",)  # c has no PGD at ε 0.2: left out for everyone, so all face the same attacks
        wc.append(sum(all(o[(p, "attack", 0.2)][s] for p in members) for s in o[("clean", "clean", 0.0)]) / N)
        assert board.cell(m, "linf@0.1").value == wc[0] and board.cell(m, "linf@0.2").value == wc[1]
        area = trapezoid_area([0.0, 0.1, 0.2], [k / N, *wc]) / 0.2  # the mean of per-sample areas is this exactly
        assert board.cell(m, "auc:linf").value == pytest.approx(area, abs=1e-12)
        assert board.cell(m, "corruption").value == pytest.approx(cm.mean_corruption_accuracy(_errors(o)), abs=1e-12)
        assert board.cell(m, "mce").value == pytest.approx(cm.mean_corruption_error(_errors(o), _errors(data["a"])),
                                                           abs=1e-12)
        for key in ("auc:linf", "corruption", "mce"):
            c = board.cell(m, key)
            assert c.ci_low is not None and c.ci_high is not None and c.value is not None
            assert c.ci_low <= c.value <= c.ci_high
    assert board.cell("a", "mce").value == 1.0 and board.mce_baseline == "a"
    assert next(c for c in board.columns if c.key == "linf@0.2").members == ("fgsm_linf",)
    assert any("pgd_linf not run for every model" in n for n in board.notes)
    assert lb.build(data, NORMS).cells == board.cells  # the bootstrap is seeded: the same page every time


def test_wilson_at_a_mean_is_wilson_for_counts_and_stays_inside_0_1() -> None:
    for k, n in ((0, 10), (3, 10), (10, 10), (57, 64)):
        assert lb.wilson_mean(k / n, n) == pytest.approx(wilson_interval(k, n), abs=1e-12)
    lo, hi = lb.wilson_mean(1.0, 64)
    assert hi == 1.0 and 0.9 < lo < 1.0  # a normal interval would collapse to [1, 1]


def test_ranking_sort_keys_and_refusal() -> None:
    data = _synthetic()
    board = lb.build(data, NORMS, "clean")
    clean = {m: board.cell(m, "clean").value for m in "abc"}
    assert board.ranking == sorted("abc", key=lambda m: -float(clean[m] or 0))
    assert lb.build(data, NORMS, "linf@1/10").sort.key == "linf@0.1"
    assert lb.build(data, NORMS, "mce").ranking[0] == min("abc", key=lambda m: board.cell(m, "mce").value or 9)
    assert lb.build(data, NORMS).sort.key == "linf@0.1"  # default: the robust column with the most attacks
    with pytest.raises(GauntletError, match=r"--sort 'linf@0\.3' is not a leaderboard column; columns: clean, "
                                            r"linf@0\.1, linf@0\.2, auc:linf, corruption, mce"):
        lb.build(data, NORMS, "linf@0.3")


def test_binary_neighbour_tests_are_compares_tests() -> None:
    """The clean column's neighbour tests equal ``gauntlet compare``'s rows for the same pairs (Bonferroni over 2)."""
    data = _synthetic(gap=0.05)
    board = lb.build(data, NORMS, "clean")
    pairs = list(zip(board.ranking, board.ranking[1:], strict=False))
    rows = paired_rows({m: {("clean", "clean", 0.0): data[m][("clean", "clean", 0.0)]} for m in data}, pairs, False)
    assert len(board.tests) == len(rows) == 2
    for t, r in zip(board.tests, rows, strict=True):
        assert (t.upper, t.lower) == (r.model_a, r.model_b) and t.n == r.n == N
        assert (t.difference, t.ci_low, t.ci_high, t.ci_level) == (r.difference, r.ci_low, r.ci_high, r.ci_level)
        assert (t.p_value, t.p_adjusted, t.m) == (r.p_value, r.p_adjusted, r.n_primary) and t.ci_level == 0.975


def test_every_neighbour_interval_agrees_with_its_test() -> None:
    """Whatever the column (McNemar/Tango, paired z, paired bootstrap), the interval excludes 0 exactly when the
    Bonferroni-adjusted p is below 0.05, and the decision follows the sign; over the data sets drawn, every
    column has both a significant and a non-significant neighbour pair (the check is not vacuous)."""
    seen = set()
    for seed in range(10):
        data = _synthetic(seed, gap=[0.0, 0.08, 0.16, 0.3, 0.5][seed % 5])
        for key in ("clean", "linf@0.1", "linf@0.2", "auc:linf", "corruption", "mce"):
            for t in lb.build(data, NORMS, key).tests:
                excludes = t.ci_low > 0 or t.ci_high < 0
                assert excludes == (t.p_adjusted < 0.05), (seed, key, t)
                assert t.ci_low <= t.difference <= t.ci_high and t.m == 2
                if t.decision != "none":
                    assert (t.decision == "upper") == ((t.difference > 0) == (key != "mce"))
                seen.add((key, "none" if t.decision == "none" else "significant"))
    for key in ("clean", "linf@0.1", "linf@0.2", "auc:linf", "corruption", "mce"):
        assert {(key, "significant"), (key, "none")} <= seen, key


def _table(outcomes: dict[str, dict[tuple[str, str, float], dict[tuple[str, int], bool]]]) -> pa.Table:
    rows = [{"model": m, "perturbation": p, "family": f, "level": lv, "dataset": s[0], "sample_id": s[1],
             "correct": ok} for m, o in outcomes.items() for (p, f, lv), cell in o.items() for s, ok in cell.items()]
    return pa.Table.from_pylist(rows)


def test_pair_headline_counts_levels_and_names_where() -> None:
    rng = np.random.default_rng(1)
    new_ = {("clean", "clean", 0.0): _draw(rng, 0.97)}
    old = {("clean", "clean", 0.0): _draw(rng, 0.97)}
    for eps, (p_new, p_old) in {0.1: (0.9, 0.88), 0.2: (0.8, 0.3), 0.3: (0.7, 0.1)}.items():
        new_[("pgd_linf", "attack", eps)], old[("pgd_linf", "attack", eps)] = _draw(rng, p_new), _draw(rng, p_old)
    rows = paired_comparison(_table({"old": old, "new": new_}), [("old", "new")])
    assert [r.decision for r in rows] == ["none", "none", "b", "b"]
    assert pair_headline(rows) == ("new is more robust than old at 2 of the 3 attack levels (ε ≥ 0.2), never less; "
                                   "no significant difference on clean inputs (paired McNemar tests, Bonferroni over "
                                   "4 primary rows).")
    rows = paired_comparison(_table({"old": old, "new": new_}), [("old", "new")], [("pgd_linf", 0.3)])
    assert pair_headline(rows) == ("new is more robust than old under pgd_linf at ε = 0.3 (paired McNemar tests, one "
                                   "primary comparison: no adjustment; 3 secondary rows not in this sentence).")
    rows = paired_comparison(_table({"old": old, "new": new_}), [("old", "new")], [("pgd_linf", None), ("clean", None)])
    assert pair_headline(rows).startswith("new is more robust than old at 2 of the 3 attack levels (ε ≥ 0.2), never "
                                          "less; no significant difference on clean inputs")


def test_ranking_sentence_marks_significant_neighbours() -> None:
    board = lb.build(_synthetic(gap=0.3), NORMS)
    sentence = lb.ranking_sentence(board)
    assert sentence.startswith("Ranked by L∞ ε = 0.1 robust accuracy (worst case of fgsm_linf, pgd_linf): a ")
    signs = [{"upper": ">", "lower": "<"}.get(t.decision, "≈") for t in board.tests]
    assert f" {signs[0]} {board.ranking[1]} " in sentence and "Bonferroni over 2 pairs" in sentence
    text = lb.render_text(board)
    assert text.splitlines()[0] == sentence and "linf@0.1: L∞ ε = 0.1 robust accuracy" in text


# --- `gauntlet report A B C` over three digits checkpoints -------------------------------------------------------

SWEEP = ["perturbation=[clean,fgsm_linf,pgd_linf,contrast]", "perturbation.fgsm_linf.eps=[0.1,0.2]",
         "perturbation.pgd_linf.eps=[0.1,0.2]", "perturbation.pgd_linf.steps=5",
         "perturbation.contrast.severities=[3,5]", "n_examples=64", "batch_size=64", "progress=false"]


def _sweep(out: Path, *extra: str) -> None:
    proc = run_cli(f"out_dir={out}", *SWEEP, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoints: dict[str, str]) -> dict[str, Path]:
    """digits_cnn, digits_cnn_at, and a third checkpoint from the same train: recipe at ε = 0.1 (2 epochs)."""
    root = tmp_path_factory.mktemp("board")
    runs = {"cnn": root / "cnn", "at": root / "at", "at01": root / "at01"}
    _sweep(runs["cnn"], "model=[digits_cnn]")
    _sweep(runs["at"], "model=[digits_cnn_at]")
    _sweep(runs["at01"], "model=[digits_cnn_at]", f"model.digits_cnn_at.checkpoint={root / 'at01.safetensors'}",
           "model.digits_cnn_at.train_if_missing=true", "model.digits_cnn_at.train.adv_eps=0.1",
           "model.digits_cnn_at.train.epochs=2")
    proc = run_cli("report", *(f"{k}={v}" for k, v in runs.items()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Report: {(root / 'leaderboard' / 'index.html').resolve()}" in proc.stdout
    return runs


def _worst_case_from_parquet(run: Path, eps: float) -> tuple[int, int]:
    rows = ds.dataset(run / "results", format="parquet").to_table().to_pylist()
    per: dict[int, list[bool]] = {}
    for r in rows:
        if r["family"] == "attack" and r["level"] == eps:
            per.setdefault(r["sample_id"], []).append(r["correct"])
    assert {len(v) for v in per.values()} == {2}  # FGSM and PGD
    return sum(all(v) for v in per.values()), len(per)


@pytest.mark.slow
def test_leaderboard_numbers_are_the_parquet_rows(three_runs: dict[str, Path]) -> None:
    summary = json.loads((three_runs["cnn"].parent / "leaderboard" / "summary.json").read_text())
    board = summary["leaderboard"]
    assert summary["schema_version"] == "3" and [r["label"] for r in summary["runs"]] == ["cnn", "at", "at01"]
    assert [m["name"] for m in summary["models"]] == ["cnn", "at", "at01"]
    rows = {r["model"]: r for r in board["rows"]}
    for label, run in three_runs.items():
        for eps in (0.1, 0.2):
            cell = rows[label]["cells"][f"linf@{eps:g}"]
            assert (cell["k"], cell["n"]) == _worst_case_from_parquet(run, eps)
        clean = [r for r in ds.dataset(run / "results", format="parquet").to_table().to_pylist()
                 if r["family"] == "clean"]
        assert rows[label]["cells"]["clean"]["k"] == sum(r["correct"] for r in clean) and len(clean) == 64
    values = [rows[m]["cells"][board["sort"]]["value"] for m in [r["model"] for r in board["rows"]]]
    assert board["sort"] == "linf@0.1" and values == sorted(values, reverse=True)
    assert [(t["upper"], t["lower"]) for t in board["tests"]] == list(zip([r["model"] for r in board["rows"]][:2],
                                                                          [r["model"] for r in board["rows"]][1:],
                                                                          strict=True))
    assert all(t["m"] == 2 and t["ci_level"] == 0.975 for t in board["tests"])
    assert summary["headline"][0] == board["ranking_sentence"] and len(summary["headline"]) == 3
    assert summary["headline"][2] == ATTACKED_NOTE  # attacked accuracies are upper bounds, said under the headline
    assert summary["headline"][1].startswith(f"{board['rows'][0]['model']} is more robust than")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs = 0
        self.rows_in_board = 0
        self._in_board = False
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.ids += [a["id"]] if a.get("id") else []
        self.imgs += tag == "img"
        if tag == "table":
            self._in_board = a.get("id") == "leaderboard"
        if tag == "tr" and self._in_board:
            self.rows_in_board += 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_leaderboard_page_in_headless_chromium(three_runs: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    page = (three_runs["cnn"].parent / "leaderboard" / "index.html").resolve()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400"]
    shot = tmp_path / "leaderboard.png"
    proc = subprocess.run(["chromium", *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True,
                          timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180).stdout
    rendered = _Page()
    rendered.feed(dom)
    assert rendered.ids[:1] == ["headline"] and {"leaderboard", "neighbour-tests", "fig-heatmap"} <= set(rendered.ids)
    assert rendered.rows_in_board == 2 + 3  # header, sample counts, one row per model
    assert rendered.imgs == 4  # FGSM and PGD vs ε, corruptions, heat map
    summary = json.loads((page.parent / "summary.json").read_text())
    text = "".join(rendered.text)
    for needle in (*summary["headline"], summary["leaderboard"]["tests"][0]["sentence"], "Bonferroni over the 2 "
                   "neighbour pairs shown", "at01: cd "):
        assert needle in text, needle
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    rgb = {c for _, c in img.getcolors(maxcolors=1 << 20) or []}
    assert len(rgb) > 50 and (0xEE, 0xF4, 0xFB) in rgb  # drawn, with the headline box's background at the top
    top = img.crop((0, 0, 1200, 300)).getcolors(maxcolors=1 << 20) or []
    assert any(c == (0xEE, 0xF4, 0xFB) and k > 10_000 for k, c in top)  # the headline is in the first screen


@pytest.mark.slow
def test_compare_three_runs_prints_the_headline_first(three_runs: dict[str, Path]) -> None:
    proc = run_cli("compare", *(f"{k}={v}" for k, v in three_runs.items()), "--sort", "clean")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("Ranked by clean accuracy: ") and "leaderboard (% [95 % CI]" in proc.stdout
    proc = run_cli("report", *map(str, three_runs.values()), "--sort", "linf@0.5")
    assert proc.returncode == 2 and "--sort 'linf@0.5' is not a leaderboard column" in proc.stderr
    assert "Traceback" not in proc.stderr
    # unlabelled: a name two runs share is told apart by its folder, a unique one stays bare
    page = three_runs["cnn"].parent / "unlabelled"
    proc = run_cli("report", *map(str, three_runs.values()), "--out", str(page), "--sort", "auc:linf")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((page / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["digits_cnn", "digits_cnn_at@at", "digits_cnn_at@at01"]
    assert summary["leaderboard"]["sort"] == "auc:linf" and summary["headline"][0].startswith(
        "Ranked by L∞ area under accuracy vs ε (normalised), ε = 0, 0.1, 0.2: digits_cnn_at@at ")


@pytest.mark.slow
def test_report_refuses_runs_over_other_samples(three_runs: dict[str, Path], tmp_path: Path) -> None:
    """Same dataset config, 16 samples instead of 64: the accuracies would not be comparable, so no leaderboard."""
    other = tmp_path / "other"
    proc = run_cli(f"out_dir={other}", "model=[digits_cnn]", "perturbation=[clean]", "n_examples=16",
                   "progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("report", str(three_runs["cnn"]), str(other), "--out", str(tmp_path / "page"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"error: cannot rank runs over different samples: {three_runs['cnn']} has 64 samples and {other} has "
            "16 (48 only in the first, 0 only in the second; e.g. sample_id ") in proc.stderr
    assert not (tmp_path / "page").exists()
