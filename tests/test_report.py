"""``gauntlet report`` and ``gauntlet compare`` on real sweeps of the embedded checkpoints; the page in Chromium."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import REPO, run_cli

SUITE = ("perturbation.autoattack_standard_linf.attacks=[{_target_:engine.perturbations.autoattack.APGD,name:apgd-ce,"
         "n_iter:3,tags:[white-box]},{_target_:engine.perturbations.square.Square,name:square,n_queries:20,"
         "tags:[black-box]}]")
SMALL = ["n_examples=16", "batch_size=16", "progress=false", "wandb=disabled"]


def _sweep(out: Path, *extra: str) -> None:
    proc = run_cli(f"out_dir={out}", *SMALL, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoints: dict[str, str]) -> Path:
    """Both embedded models × clean, FGSM at 3 ε, a 2-member suite at 2 ε, contrast at 2 severities."""
    out = tmp_path_factory.mktemp("report") / "run"
    _sweep(out, "perturbation=[clean,fgsm_linf,autoattack_standard_linf,contrast]",
           "perturbation.fgsm_linf.eps=[0,0.1,0.2]", "perturbation.contrast.severities=[1,3]",
           "perturbation.autoattack_standard_linf.eps=[0.1,0.2]", SUITE)
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Report: {(out / 'report' / 'index.html').resolve()}" in proc.stdout
    return out


class _Counter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tables = 0
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "table":
            self.tables += 1
        self.urls += [v for k, v in attrs if k in ("href", "src") and v and not v.startswith("data:")]


def _parse(text: str) -> _Counter:
    c = _Counter()
    c.feed(text)
    return c


def _assert_matches_parquet(run_dir: Path) -> dict:  # type: ignore[type-arg]
    """Every (model, perturbation, level) accuracy of summary.json equals what the Parquet rows give."""
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    table = ds.dataset(run_dir / "results", format="parquet").to_table()
    expected: dict[tuple[str, str, float], list[int]] = {}
    for r in table.select(["model", "perturbation", "level", "correct"]).to_pylist():
        cell = expected.setdefault((r["model"], r["perturbation"], r["level"]), [0, 0])
        cell[0] += int(r["correct"])
        cell[1] += 1
    got = {(a["model"], a["perturbation"], a["level"]): a for a in summary["accuracy"]}
    assert got.keys() == expected.keys()
    for key, (k, n) in expected.items():
        assert (got[key]["n_correct"], got[key]["n"]) == (k, n)
        assert got[key]["accuracy"] == k / n
        assert got[key]["wilson"][0] <= k / n <= got[key]["wilson"][1]
        assert got[key]["clopper_pearson"][0] <= k / n <= got[key]["clopper_pearson"][1]
    return summary


@pytest.mark.slow
def test_summary_json_matches_the_parquet_rows(run_dir: Path) -> None:
    summary = _assert_matches_parquet(run_dir)
    assert [m["name"] for m in summary["models"]] == ["digits_cnn", "digits_cnn_at"]
    assert all(len(m["checkpoint_sha256"]) == 64 and m["clean"]["n"] == 16 for m in summary["models"])
    assert summary["comparisons"] and all(c["model_a"] == "digits_cnn" for c in summary["comparisons"])  # run order
    assert {w["level"] for w in summary["worst_case"]} == {0.1, 0.2}  # fgsm and the suite share both ε
    assert summary["command"].startswith(f"cd {shlex.quote(str(REPO))} && gauntlet out_dir=")  # as launched
    assert {p["name"]: p["tags"] for p in summary["perturbations"]}["clean"] == ["baseline"]
    assert set(summary["figures"]) == {"eps_fgsm_linf", "eps_autoattack_standard_linf", "corruptions", "heatmap",
                                       "broken_by_autoattack_standard_linf"}


@pytest.mark.slow
def test_html_is_self_contained_with_every_section(run_dir: Path) -> None:
    text = (run_dir / "report" / "index.html").read_text()
    page = _parse(text)
    assert len(page.imgs) == 5 and all(s.startswith("data:image/png;base64,") for s in page.imgs)
    assert page.urls == []  # nothing to fetch: opens from a file without network
    assert page.tables >= 7  # models, accuracy, worst case, AUC, corruption, comparisons, tags
    for needle in ("Models", "Accuracy", "Paired comparisons", "Sanity flags", "Threat models", "Resolved config",
                   "digits_cnn_at is more robust than digits_cnn", "AML.T0043.001", "CP ["):
        assert needle in text, needle
    assert "Claim verdicts" not in text


@pytest.mark.slow
def test_verdicts_render_first_and_tolerate_odd_keys(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    (copy / "verdict.json").write_text(json.dumps({"claims": [
        {"verdict": "REFUTED", "measured_accuracy": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 16,
         "claimed_accuracy": 0.9, "threat_model": {"norm": "linf", "eps": 0.1}, "statement": "vendor says 90 %",
         "indicators": ["silent_success"], "escalations": [{"attack": "square", "accuracy": 0.2}],
         "something_new": 1},
        {"verdict": "INCONCLUSIVE", "statement": "no numbers yet"}]}))
    proc = run_cli("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    text = (copy / "report" / "index.html").read_text()
    assert text.index("id='headline'") < text.index("Claim verdicts") < text.index("<h2>Command") \
        < text.index("<h2>Models")
    # each claim as a short block of sentences: claim, measured, why, what would decide it; the fields folded
    assert "<b>REFUTED</b>: vendor says 90 %, claimed 90.0 % accuracy." in text
    assert "Measured: 25.0 % [10.0, 40.0] (95 % CI) on n = 16." in text
    assert "Decided: a stronger attack can only lower the measured accuracy further." in text
    assert "Indicators of a failing evaluation that fired: silent_success." in text
    assert "<b>INCONCLUSIVE</b>: no numbers yet" in text and "What would decide it: clearing the indicators" in text
    assert "every field of the verdict" in text and "norm: linf; eps: 0.1" in text and "attack: square" in text
    assert "accuracy % at ε = 0.1 (the checked claim&#x27;s)" in text  # the heat map at the claim's ε
    assert json.loads((copy / "report" / "summary.json").read_text())["verdicts"]["claims"][0]["verdict"] == "REFUTED"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = (run_dir / "report" / "index.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,9000"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", *flags, f"--screenshot={shot}", page], capture_output=True, text=True,
                          timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180)
    rendered = _parse(dom.stdout)
    assert len(rendered.imgs) == 5 and rendered.tables >= 7
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 9000)
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # not blank
    # matplotlib's first two line colours (C0 blue, C1 orange) appear: the plots were decoded and drawn
    rgb = {c for _, c in colours}
    assert (31, 119, 180) in rgb and (255, 127, 14) in rgb


@pytest.mark.slow
def test_compare_two_runs_of_different_models_and_refuse_other_data(run_dir: Path, tmp_path: Path) -> None:
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "train"
    for out, model in ((a, "digits_cnn"), (b, "digits_cnn_at")):
        _sweep(out, f"model=[{model}]", "perturbation=[clean,fgsm_linf]", "perturbation.fgsm_linf.eps=[0,0.1]")
    proc = run_cli("compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "A − B pp [CI]" in out and "p (McNemar)" in out and "2 primary rows: Bonferroni" in out
    assert "digits_cnn_at is more robust than digits_cnn under fgsm_linf at ε = 0.1: digits_cnn − digits_cnn_at = -" \
        in out  # A is the first run given, and the sentence keeps the table's sign
    # the same pair, in the same order, as the two-model run computed on the same 16 samples; the interval's
    # level differs only with the number of primary rows, so name that one row primary in both
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    fgsm = next(c for c in summary["comparisons"] if c["perturbation"] == "fgsm_linf" and c["level"] == 0.1)
    assert (fgsm["model_a"], fgsm["model_b"]) == ("digits_cnn", "digits_cnn_at")
    proc = run_cli("compare", str(a), str(b), "--primary", "fgsm_linf@0.1", "--json", str(tmp_path / "c.json"))
    (row,) = [r for r in json.loads((tmp_path / "c.json").read_text()) if r["primary"]]
    assert row["counts"] == fgsm["counts"] and row["difference"] == fgsm["difference"]
    assert row["p_value"] == fgsm["p_value"] and row["ci_level"] == 0.95
    _sweep(other, "model=[digits_cnn]", "perturbation=[clean]", "dataset.split=train")
    proc = run_cli("compare", str(a), str(other))
    assert proc.returncode == 2
    assert "cannot pair runs over different datasets" in proc.stderr and "Traceback" not in proc.stderr


def test_report_and_compare_refuse_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    for cmd in ("report", "compare"):
        proc = run_cli(cmd, str(tmp_path))
        assert proc.returncode == 2 and "is not a Gauntlet run folder (no sweep.json or plan.json)" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoints: dict[str, str]) -> Path:
    """The realistic run: ``gauntlet n_examples=200 out_dir=DIR`` with every default (W&B offline included)."""
    out = tmp_path_factory.mktemp("default") / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    for args in (["n_examples=200", f"out_dir={out}", "progress=false"], ["report", str(out)]):
        proc = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=Path(__file__).parent.parent,
                              capture_output=True, text=True, timeout=1200, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_default_sweep_then_report(default_run: Path) -> None:
    summary = _assert_matches_parquet(default_run)
    assert summary["n_rows"] == sum(a["n"] for a in summary["accuracy"])
    assert {a["n"] for a in summary["accuracy"]} == {200}
    text = (default_run / "report" / "index.html").read_text()
    page = _parse(text)
    assert len(page.imgs) == len(summary["figures"]) == 5  # fgsm, pgd_linf, pgd_l2, corruptions, heat map
    assert page.urls == [] and page.tables >= 6
    pgd = next(c for c in summary["comparisons"] if c["perturbation"] == "pgd_linf" and c["level"] == 0.1)
    assert pgd["sentence"].startswith("digits_cnn_at is more robust than digits_cnn under pgd_linf at ε = 0.1: "
                                      "digits_cnn − digits_cnn_at = -")
    # W&B offline is the default: one run per model of the sweep
    assert len(list((default_run / "wandb" / "wandb").glob("offline-run-*"))) == len(summary["models"]) == 2


@pytest.mark.slow
def test_every_python_snippet_in_results_md_runs(default_run: Path, tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "results.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(snippets) >= 5
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "default").symlink_to(default_run)
    for code in snippets:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{code}\n{proc.stderr[-2000:]}"
        assert proc.stdout.strip(), code


def test_tags_render_lists_and_mappings_alike() -> None:
    from engine.sinks.report import render_tags

    assert render_tags(["white-box", "AML.T0043.000"]) == "white-box, AML.T0043.000"
    assert render_tags({"knowledge": "white-box", "norm": {"name": "linf", "eps": [0.1, 0.2]}}) == (
        "knowledge: white-box; norm: name: linf; eps: 0.1, 0.2")
    assert render_tags(None) == render_tags([]) == "—"
