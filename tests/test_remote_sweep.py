"""A remote model in a sweep: answers through a real OIP server, exact accounting, faults, the token kept out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import engine.remote.ledger as ledger_mod
from engine.data.digits import load_digits
from engine.errors import ConfigError, GauntletError
from engine.remote.ledger import LEDGER, RunLedger
from engine.remote.local import LocalOracle
from engine.store.results import read
from engine.sweep import run_sweep
from examples.targets.common import load_model
from tests.conftest import compose_dict
from tests.remote_servers import Server, count_file_totals, serve

pytestmark = pytest.mark.timeout(400)
TOKEN = "tok-9c1e-never-in-any-file-5b7d"


def _overrides(url: str, out: Path, *extra: str) -> list[str]:
    return ["model=[remote_digits_cnn]", f"model.remote_digits_cnn.remote.url={url}", f"out_dir={out}",
            "n_examples=24", "batch_size=8", "progress=false", *extra]


@pytest.fixture(scope="module")
def oip(embedded_checkpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    count = tmp_path_factory.mktemp("oip") / "count.jsonl"
    with serve("oip", "--models", "digits_cnn", "--count-file", str(count), env={"TARGET_TOKEN": TOKEN}) as server:
        server.count_file = count  # type: ignore[attr-defined]
        yield server


def _auth(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("DIGITS_API_TOKEN", TOKEN)
    return ["+model.remote_digits_cnn.remote.auth={env: DIGITS_API_TOKEN}"]


def test_a_remote_sweep_matches_the_model_on_the_pixels_sent_and_the_servers_count(
        oip: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = oip.stats()
    out = tmp_path / "run"
    cfg = compose_dict(_overrides(oip.url, out, "perturbation=[clean,gaussian_noise]", *_auth(monkeypatch)))
    outcome = run_sweep(cfg)
    rows = read(out).to_pandas()
    clean = rows[rows["perturbation"] == "clean"].sort_values("sample_id")
    data = load_digits()
    local = LocalOracle(load_model("digits_cnn"), num_classes=10)
    want = local.query(data.images[:24], torch.arange(24)).labels.numpy()
    assert np.array_equal(clean["pred"].to_numpy(), want)  # the endpoint's answers on the 8-bit grid, row for row
    after = oip.stats()
    entry = RunLedger(out).targets()
    (target,) = entry.values()
    assert target["spent"] == after["images"] - before["images"]  # every image the endpoint received
    assert target["sent"] == target["spent"] - 1  # finished tasks; the plan's fit check sent one grey image
    assert target["calls"] == after["requests"] - before["requests"] - 1
    assert "remote targets" in outcome.summary and "upper bound" in outcome.summary
    assert f"received {target['spent']} image(s)" in outcome.summary
    again = run_sweep(cfg)  # everything reused: no query spent
    assert again.evaluated == 0 and oip.stats()["images"] == after["images"]
    assert f"received 0 image(s) ({target['spent']} in earlier runs of this folder)" in again.summary
    for path in out.rglob("*"):  # the token is nowhere in the run folder
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_the_token_is_in_no_file_of_a_cli_run_even_when_the_run_fails(
        oip: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the command line (Hydra's own files and logs included), a finished run and a failing one."""
    from tests.conftest import run_cli

    out = tmp_path / "cli"
    ok = run_cli(*_overrides(oip.url, out, "perturbation=[clean]", *_auth(monkeypatch)))
    assert ok.returncode == 0, ok.stderr[-2000:]
    monkeypatch.setenv("DIGITS_API_TOKEN", TOKEN + "-wrong")  # the server answers 401: the run fails
    bad = run_cli(*_overrides(oip.url, tmp_path / "cli_bad", "perturbation=[clean]",
                              "+model.remote_digits_cnn.remote.auth={env: DIGITS_API_TOKEN}"))
    assert bad.returncode == 2 and "HTTP 401" in bad.stderr
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert TOKEN not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "remote_ledger.json" for p in files)
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path


def test_gradient_attacks_are_refused_naming_what_fits(tmp_path: Path) -> None:
    perts = "perturbation=[clean,pgd_linf,square_linf,square_linf_remote]"
    cfg = compose_dict(_overrides("http://127.0.0.1:9", tmp_path / "r", perts))
    with pytest.raises(ConfigError, match=r"pgd_linf needs gradients; square_linf needs per-sample query budgets.*"
                                          r"that fit: clean, square_linf_remote"):
        run_sweep(cfg)
    label_only = [*_overrides("http://127.0.0.1:9", tmp_path / "r2", "perturbation=[clean,square_linf_remote]"),
                  "model.remote_digits_cnn.remote.output=label"]
    with pytest.raises(ConfigError, match=r"square_linf_remote needs scores.*that fit: clean"):
        run_sweep(compose_dict(label_only))
    for url in ("http://user:pw@127.0.0.1:9", "http://127.0.0.1:9/infer?api_key=abc"):
        with pytest.raises(ConfigError, match=r"remote.url .*(password|credentials).*auth: \{env"):
            run_sweep(compose_dict(_overrides(f"'{url}'", tmp_path / "r4", "perturbation=[clean]")))
    bad_key = [*_overrides("http://127.0.0.1:9", tmp_path / "r3", "perturbation=[clean]"),
               "+model.remote_digits_cnn.remote.tokenn=x"]
    with pytest.raises(ConfigError, match=r"remote: unknown key\(s\) \['tokenn'\]"):
        run_sweep(compose_dict(bad_key))


def test_server_killed_mid_sweep_then_resumed_spends_no_query_twice(
        embedded_checkpoints: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = tmp_path / "count.jsonl"
    out = tmp_path / "run"
    with serve("oip", "--models", "digits_cnn", "--count-file", str(count)) as server:
        cfg = compose_dict(_overrides(server.url, out, "perturbation=[clean,gaussian_noise]", "shard_size=8",
                                      "model.remote_digits_cnn.remote.retries=1",
                                      "model.remote_digits_cnn.remote.backoff_s=0.05"))
        finished: list[str] = []
        real = ledger_mod.record_task

        def kill_after_two(out_dir: Path, models: Any, name: str, remote: Any) -> None:
            real(out_dir, models, name, remote)
            finished.append(name)
            if len(finished) == 2:
                server.stop()  # the endpoint dies between tasks: the next one fails

        monkeypatch.setattr("engine.sweep.record_task", kill_after_two)
        with pytest.raises(GauntletError, match=r"127\.0\.0\.1:\d+/v2/models/digits_cnn/infer: connection failed"
                                                r"[\s\S]*2 of 6 task\(s\)"):
            run_sweep(cfg)
        first = count_file_totals(count)
        spent = RunLedger(out).targets()
        assert [t["spent"] for t in spent.values()] == [first["images"]]  # what reached the server, no more
        monkeypatch.setattr("engine.sweep.record_task", real)
        server.start()  # same port
        outcome = run_sweep(cfg)
    assert outcome.evaluated == 4 and len(outcome.plan.done) == 2  # the two finished tasks are not re-run
    total = count_file_totals(count)
    (target,) = RunLedger(out).targets().values()
    assert target["spent"] == total["images"]  # killed and resumed: the ledger counts every image sent
    rows = read(out)
    assert rows.num_rows == 24 + 24 * 5  # every task exactly once
    assert (ledger_path := out / LEDGER).exists() and ledger_path.stat().st_size < 10_000


def test_429_slows_the_sweep_down_and_it_completes(embedded_checkpoints: dict[str, str], tmp_path: Path) -> None:
    with serve("upload", "--rate-limit", "20", "--jpeg-quality", "0") as server:
        overrides = [*_overrides(server.url + "/classify", tmp_path / "run", "perturbation=[clean]"),
                     "model.remote_digits_cnn.remote.protocol=upload",
                     "+model.remote_digits_cnn.remote.upload={scores_path: scores}"]
        outcome = run_sweep(compose_dict(overrides))
        counts = server.stats()
    (target,) = RunLedger(tmp_path / "run").targets().values()
    assert counts["throttled"] > 0 and target["throttled"] == counts["throttled"]
    assert target["spent"] == counts["images"] and "throttled: the endpoint answered HTTP 429" in outcome.summary
    assert read(tmp_path / "run").num_rows == 24


def test_on_error_skip_excludes_and_counts_the_samples(embedded_checkpoints: dict[str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    with serve("oip", "--models", "digits_cnn") as server:
        cfg = compose_dict(_overrides(server.url, out, "perturbation=[clean]", "shard_size=8",
                                      "model.remote_digits_cnn.remote.on_error=skip",
                                      "model.remote_digits_cnn.remote.retries=0"))
        real = ledger_mod.record_task

        def kill_after_first(out_dir: Path, models: Any, name: str, remote: Any) -> None:
            real(out_dir, models, name, remote)
            server.stop()

        monkeypatch.setattr("engine.sweep.record_task", kill_after_first)
        outcome = run_sweep(cfg)
    (target,) = RunLedger(out).targets().values()
    assert target["excluded"] == 16 and target["failed"] == 2  # two shards of 8 could not be answered
    assert read(out).num_rows == 8  # no made-up prediction for them
    assert "excluded: 16 sample(s)" in outcome.summary
    from engine.sinks.report import write_report

    page = write_report(out).html.read_text()
    assert "Remote targets" in page and "excluded: 16 sample(s)" in page and "upper bound" in page


def test_sizes_are_measured_on_the_pixels_sent() -> None:
    """A corruption's rows on a JPEG target: the size is the one between the decoded files sent, not the one the
    perturbation computed on its floats (tests/test_remote_ball.py: the ε ball of attacks, on the same pixels)."""
    from types import SimpleNamespace

    from engine.evaluation.evaluate import _batch_rows
    from engine.evaluation.resources import build_perturbation
    from engine.perturbations.base import BatchContext
    from engine.perturbations.norms import NORMS
    from engine.remote.model import RemoteModel

    data = load_digits()
    x, y, ids = data.images[:4], data.labels[:4], torch.arange(4)
    pert = build_perturbation("gaussian_noise", compose_dict()["perturbation"]["gaussian_noise"])
    jpeg = RemoteModel("m", LocalOracle(load_model("digits_cnn"), num_classes=10, encoding="jpeg", jpeg_quality=50))
    ctx = BatchContext(model=jpeg, seed=0, sample_ids=ids)
    task = SimpleNamespace(quantize="none", model_name="m")
    scored = _batch_rows(task, jpeg, pert, ctx, x, y, 10, "")  # type: ignore[arg-type]
    sent = jpeg.oracle.sent
    for row, x_pert in scored:
        want = NORMS["linf"].measure(sent(x_pert) - sent(x)).double().numpy()
        as_computed = NORMS["linf"].measure(x_pert - x).double().numpy()
        assert np.array_equal(row["perturbation_size"], want)
        assert not np.allclose(want, as_computed)  # JPEG moved the pixels: the size sent is not the size computed


def test_operational_keys_leave_task_ids_alone(tmp_path: Path) -> None:
    """A resumed sweep with a lower rate limit, longer timeout or new token variable reuses its finished tasks;
    a different endpoint, output or encoding is a different target."""
    from engine.planning.plan import make_plan

    def ids(*extra: str) -> list[str]:
        cfg = compose_dict(_overrides("http://127.0.0.1:9", tmp_path / "r", "perturbation=[clean]", *extra))
        return [t.task_id for t in make_plan(cfg, lambda _: False).tasks]

    base = ids()
    assert ids("model.remote_digits_cnn.remote.rate_limit=2", "model.remote_digits_cnn.remote.timeout_s=60",
               "model.remote_digits_cnn.remote.concurrency=1", "+model.remote_digits_cnn.remote.auth={env: T}") == base
    assert ids("model.remote_digits_cnn.remote.encoding=jpeg") != base
    assert ids("model.remote_digits_cnn.remote.url=http://127.0.0.1:10") != base


def test_a_claim_file_may_declare_a_remote_model_inline() -> None:
    from engine.claims.schema import parse_claim_file

    remote = {"protocol": "oip", "url": "http://127.0.0.1:8080", "model_name": "digits_cnn", "num_classes": 10,
              "output": "label"}
    doc = {"model": {"name": "vendor_api", "remote": remote}, "dataset": "digits",
           "claims": [{"threat_model": {"norm": "linf", "eps": 0.1}, "claimed_accuracy": 0.5}]}
    claim = parse_claim_file("vendor.yaml", doc)
    assert claim.model_name == "vendor_api" and claim.model["remote"]["output"] == "label"  # type: ignore[index]
    doc["model"] = {"name": "vendor_api", "remote": {**remote, "tokn": "x"}}
    with pytest.raises(ConfigError, match=r"model.vendor_api.remote: unknown key\(s\) \['tokn'\]"):
        parse_claim_file("vendor.yaml", doc)
