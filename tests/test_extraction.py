"""``gauntlet extract``: settings, copies per budget, every query through the oracle, reuse, refusals, layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.errors import ConfigError, GauntletError
from engine.extraction.cli import local_oracle, target_oracle
from engine.extraction.run import extract
from engine.extraction.settings import Contract, parse_args
from engine.extraction.transfer import on_grid_in_ball, send_once
from engine.remote.local import LocalOracle
from tests.data_fixtures import smooth_images, write_npz

FAST = ("train_steps=40", "n_test=40", "attack_steps=3", "eps=0.2")


class Recorder:
    """The CLI's oracle factory, keeping every oracle it built (the counts are the oracle's own)."""

    def __init__(self) -> None:
        self.oracles: list[LocalOracle] = []

    def __call__(self, model: torch.nn.Module, contract: Contract, classes: int) -> Any:
        oracle = local_oracle(model, contract, classes)
        self.oracles.append(oracle)  # type: ignore[arg-type]
        return oracle

    @property
    def sent(self) -> int:
        return sum(o.run_stats()["sent"] for o in self.oracles)

    @property
    def rows(self) -> int:
        return sum(o.run_stats()["rows"] for o in self.oracles)


def run(out: Path, *args: str) -> tuple[list[dict[str, Any]], Any, Recorder]:
    rec = Recorder()
    given = {a.partition("=")[0] for a in args}
    fast = [a for a in FAST if a.partition("=")[0] not in given]
    rows, spent, _ = extract(parse_args(["target=digits_cnn", f"out_dir={out}", *fast, *args]), rec)
    return rows, spent, rec


# -- settings ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "match"), [
    (["budgets=[10]", "out_dir=x"], "target= is required"),
    (["target=a", "out_dir=x"], "budgets= is required"),
    (["target=a", "budgets=[10,10]", "out_dir=x"], "repeated"),
    (["target=a", "budgets=[0,5]", "out_dir=x"], "≥ 1 query"),
    (["target=a", "budgets=[ten]", "out_dir=x"], "whole numbers"),
    (["target=a", "budgets=[]", "out_dir=x"], "empty"),
    (["target=a", "budgets=[5]", "out_dir=x", "output=label:2"], "only probabilities can be rounded"),
    (["target=a", "budgets=[5]", "out_dir=x", "output=scores"], "use label, probs"),
    (["target=a", "budgets=[5]", "out_dir=x", "output=[label,label]"], "repeated"),
    (["target=a", "budgets=[5]", "out_dir=x", "eps=8"], "pixel units"),
    (["target=a", "budgets=[5]", "out_dir=x", "epochs=3"], "unknown key 'epochs'"),
    (["target=a", "budgets=[5]", "out_dir=x", "seed=1", "seed=2"], "given twice"),
    (["target=a", "budgets=[5]", "out_dir=x", "--fast"], "not key=value"),
    (["target=a", "budgets=[5]", "out_dir= "], "out_dir= is empty"),
])
def test_bad_arguments_are_one_clear_error(args: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_args(args)


def test_settings_read_fractions_lists_and_contracts() -> None:
    s = parse_args(["target=digits_cnn", "budgets=[500, 250,1000]", "out_dir=x", "eps=8/255",
                    "output=[label,probs:2,probs]"])
    assert s.budgets == (250, 500, 1000)
    assert s.eps == pytest.approx(8 / 255)
    assert [c.label for c in s.contracts] == ["label", "probs:2", "probs"]
    assert s.copy_model == "digits_cnn"


# -- transfer on the grid ----------------------------------------------------------------------------------------

def test_on_grid_in_ball_stays_inside_the_ball_on_the_8_bit_grid() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=gen)  # off the grid, like resized digits
    for eps in (1 / 255, 0.03, 0.1):
        adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
        q = on_grid_in_ball(x, adv, eps)
        assert torch.equal(torch.round(q * 255) / 255, q)
        assert float((q - x).abs().max()) <= eps + 1e-6


class JpegLike(LocalOracle):
    """A contract whose sent pixels differ from the crafted ones (as JPEG would): rows drift by 0.3."""

    def sent(self, x: torch.Tensor) -> torch.Tensor:
        return (super().sent(x) + 0.3).clamp(0, 1)


def test_examples_outside_the_ball_as_sent_never_count_as_successes() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    oracle = JpegLike(model, output="label", num_classes=3)
    x = torch.full((6, 1, 4, 4), 0.2)
    y = torch.full((6,), 99)  # the target is always "wrong" on these: every example would be a success
    result = send_once(oracle, "t", x.clone(), x, y, torch.arange(6), eps=0.05)
    assert (result.attacked, result.fooled, result.outside, result.queries) == (6, 0, 6, 6)


# -- runs against the embedded digits_cnn through LocalOracle ------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoints: dict[str, str]
              ) -> tuple[Path, list[dict[str, Any]], Any, Recorder]:
    out = tmp_path_factory.mktemp("extract") / "run"
    rows, spent, rec = run(out, "budgets=[20,50]", "output=[label,probs:2]")
    return out, rows, spent, rec


def test_every_query_is_the_oracles_and_counted_by_scope(first_run: Any) -> None:
    out, rows, spent, rec = first_run
    # per contract: 40 test answers once (fidelity), 50 stealing queries (the largest budget; 20 is its prefix),
    # and one transfer query per correctly classified test sample for each of 3 models (baseline, 2 copies)
    attacked = sum(r["transfer_attacked"] for r in rows)
    assert spent.fidelity == 2 * 40 and spent.steal == 2 * 50 and spent.transfer == attacked
    assert spent.total == rec.rows  # what the oracles counted, row for row
    assert rec.sent <= rec.rows and rec.sent > 0.9 * rec.rows  # the endpoint's count: cache hits not sent
    copies = [r for r in rows if r["role"] == "copy"]
    assert [(r["contract"], r["budget"], r["queries"]) for r in copies] == [
        ("label", 20, 20), ("label", 50, 50), ("probs:2", 20, 20), ("probs:2", 50, 50)]
    for r in rows:
        assert 0 <= r["fidelity"] <= 1 and 0 <= r["accuracy"] <= 1 and r["n_test"] == 40
        assert r["transfer_queries"] == r["transfer_attacked"] and r["transfer_outside_ball"] == 0
        assert r["atlas"] == ["AML.T0024.002", "AML.T0005.001", "AML.T0043.002", "AML.T0042"]
        assert r["stride"] == "information-disclosure" and '"black-box"' in r["threat_model"]
    table = pq.read_table(out / "extraction.parquet")
    assert table.num_rows == len(rows) == 6


def test_answers_are_kept_as_the_contract_returned_them(first_run: Any) -> None:
    out = first_run[0]
    label = pq.read_table(out / "label" / "answers" / "steal.parquet")
    probs = pq.read_table(out / "probs_2" / "answers" / "steal.parquet")
    assert label.num_rows == probs.num_rows == 50
    assert label.column("scores").null_count == 50  # label-only: no scores ever reached the attacker
    scores = np.array(probs.column("scores").to_pylist())
    assert np.allclose(scores * 100, np.round(scores * 100), atol=1e-4)  # rounded to 2 decimals
    assert label.column("label").to_pylist() == probs.column("label").to_pylist()  # one query sequence


def test_rerun_reuses_finished_budgets_exactly_and_spends_nothing(first_run: Any) -> None:
    out, rows, _, _ = first_run
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again, spent, rec = run(out, "budgets=[20,50]", "output=[label,probs:2]")
    assert again == rows
    assert spent.total == 0 and rec.rows == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps


def test_a_larger_budget_spends_only_the_new_queries(first_run: Any, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "grown"
    shutil.copytree(first_run[0], out)
    rows, spent, _ = run(out, "budgets=[20,50,80]", "output=[label]")
    assert spent.steal == 30 and spent.fidelity == 0
    assert [r["budget"] for r in rows if r["role"] == "copy"] == [20, 50, 80]
    assert [r for r in rows if r["budget"] in (20, 50)] == [r for r in first_run[1]
                                                            if r["contract"] == "label" and r["budget"] in (20, 50)]


@pytest.mark.parametrize("change", ["seed=1", "queries=synthetic", "eps=0.1", "n_test=30", "copy=digits_cnn_at"])
def test_a_changed_set_up_is_refused_never_mixed(first_run: Any, change: str) -> None:
    out = first_run[0]
    before = sorted(p.name for p in (out / "label" / "results").iterdir())
    with pytest.raises(ConfigError, match="holds an extraction of another set-up"):
        run(out, "budgets=[20,50]", "output=[label]", change)
    assert sorted(p.name for p in (out / "label" / "results").iterdir()) == before


def test_a_copy_is_a_model_config_usable_anywhere(first_run: Any) -> None:
    from omegaconf import OmegaConf

    from engine.extraction.train import predict
    from engine.models.loader import build_model

    out, rows = first_run[0], first_run[1]
    row = next(r for r in rows if r["contract"] == "label" and r["budget"] == 50)
    path = Path(row["copy_config"])
    assert path.parent == out / "label" / "configs" / "model" and path.stem == row["copy_model"]
    assert path.read_text().startswith(f"# @package model.{row['copy_model']}\n")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg["sha256"] == row["copy_sha256"] and "_target_" not in cfg and cfg["arch"]["_target_"]
    model = build_model(row["copy_model"], cfg, torch.device("cpu"))
    from engine.data.digits import load_digits

    test = load_digits(split="test").slice(0, 40)
    target = build_model("digits_cnn", {**cfg, "checkpoint": str(Path.home() / ".cache/gauntlet/checkpoints/"
                                                                 "digits_cnn.safetensors"), "sha256": None},
                         torch.device("cpu"))
    agree = float((predict(model, test.images) == predict(target, test.images)).float().mean())
    assert agree == pytest.approx(row["fidelity"], abs=0.05)  # measured on the sent (8-bit) pixels in the run


def test_the_cli_prints_the_table_writes_the_report_and_a_sweep_loads_a_copy(first_run: Any) -> None:
    from tests.conftest import run_cli

    out = first_run[0]
    proc = run_cli("extract", "target=digits_cnn", f"out_dir={out}", "budgets=[20,50]", "output=[label,probs:2]",
                   *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "queries sent now: 0 " in proc.stdout and "label" in proc.stdout
    page = (out / "report" / "index.html").read_text()
    assert "data:image/png;base64," in page and "AML.T0024.002" in page and "probs:2" in page
    name = next(r["copy_model"] for r in first_run[1] if r["budget"] == 50 and r["contract"] == "label")
    sweep = run_cli("--config-dir", str(out / "label" / "configs"), f"model=[{name}]", "perturbation=[clean]",
                    "n_examples=10", f"out_dir={out / 'sweep'}", "progress=false", "wandb=disabled")
    assert sweep.returncode == 0, sweep.stderr
    assert name in sweep.stdout


def test_cli_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    from engine.extraction.cli import main

    assert main(["target=digits_cnn", "budgets=[5]"]) == 2
    assert main(["target=no_such_model", "budgets=[5]", f"out_dir={tmp_path / 'o'}"]) == 2
    assert main([]) == 2 and main(["--help"]) == 0


def test_query_sets_synthetic_and_another_dataset_and_their_limits(tmp_path: Path,
                                                                  embedded_checkpoints: dict[str, str]) -> None:
    rows, spent, _ = run(tmp_path / "syn", "budgets=[30]", "queries=synthetic")
    assert spent.steal == 30 and [r["query_set"] for r in rows] == ["synthetic", "synthetic"]
    npz = write_npz(tmp_path / "q.npz", smooth_images(60, 32, seed=3, channels=1), np.arange(60) % 10)
    rows, spent, _ = run(tmp_path / "npz", "budgets=[25]", "queries=npz", f"queries.path={npz}")
    assert spent.steal == 25 and rows[-1]["query_set"] == "npz"
    with pytest.raises(ConfigError, match="holds 60 images"):
        run(tmp_path / "npz2", "budgets=[61]", "queries=npz", f"queries.path={npz}")
    with pytest.raises(ConfigError, match="holds 1347 images"):
        run(tmp_path / "big", "budgets=[2000]")


def test_a_test_set_without_a_train_split_has_no_baseline_and_no_train_queries(
        tmp_path: Path, embedded_checkpoints: dict[str, str]) -> None:
    npz = write_npz(tmp_path / "t.npz", smooth_images(50, 32, seed=5, channels=1), np.arange(50) % 10)
    with pytest.raises(ConfigError, match="has no train split"):
        run(tmp_path / "a", "budgets=[20]", "dataset=npz", f"dataset.path={npz}")
    rows, _, _ = run(tmp_path / "b", "budgets=[20]", "dataset=npz", f"dataset.path={npz}", "queries=synthetic")
    assert [r["role"] for r in rows] == ["copy"]  # no independent model: nothing labelled to train it on


@pytest.mark.slow
def test_acceptance_label_only_copy_reaches_90_percent_fidelity_within_2000_queries(
        tmp_path: Path, embedded_checkpoints: dict[str, str]) -> None:
    """Issue 21: digits_cnn from label-only answers ≥ 90 % fidelity at ≤ 2,000 queries; three contracts, one
    query sequence and seed; transfer beside the independent model's."""
    rec = Recorder()
    rows, spent, _ = extract(parse_args(["target=digits_cnn", f"out_dir={tmp_path}", "budgets=[250,1000]",
                                         "output=[label,probs:2,probs]", "train_steps=400", "n_test=200"]), rec)
    label = [r for r in rows if r["contract"] == "label" and r["role"] == "copy"]
    assert max(r["fidelity"] for r in label if r["queries"] <= 2000) >= 0.90
    assert spent.total == rec.rows and rec.sent == sum(o.stats.sent for o in rec.oracles)
    for contract in ("label", "probs:2", "probs"):
        base = [r for r in rows if r["contract"] == contract and r["role"] == "baseline"]
        assert len(base) == 1 and base[0]["transfer_attacked"] > 0 and base[0]["queries"] == 0
    answers = [pq.read_table(tmp_path / f / "answers" / "steal.parquet").column("label").to_pylist()
               for f in ("label", "probs_2", "probs")]
    assert answers[0] == answers[1] == answers[2]  # the same queries in the same order under every contract


@pytest.mark.timeout(300)
def test_against_a_served_label_only_model_the_counts_equal_the_servers(
        tmp_path: Path, embedded_checkpoints: dict[str, str]) -> None:
    from tests.remote_servers import serve

    with serve("oip", "--models", "digits_cnn", "--label-only") as server:
        where = [f"model.remote_digits_cnn.remote.url={server.url}", "model.remote_digits_cnn.remote.output=label"]
        with pytest.raises(ConfigError, match="copy=<model config>"):
            extract(parse_args(["target=remote_digits_cnn", "budgets=[30]", f"out_dir={tmp_path}", *where]), Recorder())
        settings = parse_args(["target=remote_digits_cnn", "copy=digits_cnn", "budgets=[30,60]",
                               f"out_dir={tmp_path}", *FAST, *where])
        rec = Recorder()
        rows, spent, _ = extract(settings, rec)
        served, stats = server.stats(), rec.oracles[0].run_stats()
        assert len({id(o) for o in rec.oracles}) == 1  # the remote model's own oracle
        assert served["images"] == stats["sent"] > 0
        assert spent.total == stats["rows"] >= served["images"]
        assert spent.steal == 60 and spent.fidelity == 40
        again, spent2, _ = extract(settings, Recorder())  # reused: the server sees nothing more
        assert again == rows and spent2.total == 0 and server.stats()["images"] == served["images"]
        with pytest.raises(ConfigError, match="answers label"):
            extract(parse_args(["target=remote_digits_cnn", "copy=digits_cnn", "budgets=[30]", "output=probs",
                                f"out_dir={tmp_path / 'p'}", *FAST, *where]), target_oracle)
    identity = (tmp_path / "label" / "extract.json").read_text()
    assert '"remote"' in identity and "remote-" in identity


def test_hostile_sizes_and_other_layouts_are_refused_by_name(tmp_path: Path,
                                                             embedded_checkpoints: dict[str, str]) -> None:
    from tests.data_fixtures import write_cifar_python

    with pytest.raises(ConfigError, match="GiB of generated images"):
        run(tmp_path / "huge", "budgets=[1000000000]", "queries=synthetic")
    root = tmp_path / "cifar"
    write_cifar_python(root, smooth_images(20, 32, seed=1), np.arange(20) % 10)
    with pytest.raises(ConfigError, match=r"its images are \(3, 32, 32\)"):
        run(tmp_path / "c", "budgets=[10]", "queries=cifar10", f"queries.root={root}")
    assert not (tmp_path / "huge").exists() or not any((tmp_path / "huge").iterdir())


def test_another_checkpoint_under_the_same_name_is_refused(first_run: Any) -> None:
    other = Path.home() / ".cache/gauntlet/checkpoints/digits_cnn_at.safetensors"
    with pytest.raises(ConfigError, match="changed: target"):
        run(first_run[0], "budgets=[20,50]", "output=[label]", f"model.digits_cnn.checkpoint={other}")


class Dying:
    """An oracle factory whose oracles fail (as a killed server would) after ``calls`` answered calls."""

    def __init__(self, calls: int) -> None:
        self.calls, self.rows = calls, 0

    def __call__(self, model: torch.nn.Module, contract: Contract, classes: int) -> Any:
        oracle = local_oracle(model, contract, classes)
        inner, outer = oracle.query, self

        def query(x: torch.Tensor, ids: torch.Tensor) -> Any:
            from engine.remote.api import RemoteError

            if outer.calls == 0:
                raise RemoteError("endpoint in-process: connection refused (status: none)")
            outer.calls -= 1
            outer.rows += len(ids)
            return inner(x, ids)

        oracle.query = query  # type: ignore[method-assign]
        return oracle


def test_a_run_killed_mid_stealing_resumes_without_asking_twice(tmp_path: Path,
                                                                embedded_checkpoints: dict[str, str]) -> None:
    from engine.extraction import run as run_module

    settings = parse_args(["target=digits_cnn", f"out_dir={tmp_path}", "budgets=[600,1200]", *FAST])
    dying = Dying(calls=3)  # the test answers, the baseline's transfer, then the first 512 stealing queries
    with pytest.raises(GauntletError, match="connection refused"):
        extract(settings, dying)
    assert run_module.SAVE_EVERY == 512
    assert pq.read_table(tmp_path / "label" / "answers" / "steal.parquet").num_rows == 512
    rec = Recorder()
    rows, spent, _ = extract(settings, rec)
    assert spent.fidelity == 0 and spent.steal == 1200 - 512  # nothing answered before is asked again
    assert [r["budget"] for r in rows if r["role"] == "copy"] == [600, 1200]
