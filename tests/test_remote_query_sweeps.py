"""Issue 20's accounting acceptance at sweep level: a label-only HopSkipJump sweep and a Square sweep against the
served digits_cnn (examples/targets/oip_server.py on 127.0.0.1, which counts requests and images). Gauntlet's
reported totals (the run ledger, the summary) equal the server's count; no sample exceeds its budget; answers the
oracle already had are reported as cached; a second, identical run sends nothing and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.remote.ledger import RunLedger
from engine.store.results import read
from engine.sweep import run_sweep
from tests.conftest import compose_dict
from tests.remote_servers import count_file_totals, serve

pytestmark = pytest.mark.timeout(600)
N = 6


@pytest.mark.parametrize(("attack", "budget", "server_args", "remote_keys"), [
    ("hopskipjump_linf", 3000, ("--label-only",), ["model.remote_digits_cnn.remote.output=label"]),
    ("square_linf_remote", 120, (), []),
], ids=["hopskipjump_label_only", "square"])
def test_query_attack_sweep_totals_equal_the_servers_count(attack: str, budget: int, server_args: tuple[str, ...],
                                                           remote_keys: list[str], tmp_path: Path,
                                                           embedded_checkpoints: dict[str, str]) -> None:
    count = tmp_path / "count.jsonl"
    out = tmp_path / "run"
    with serve("oip", "--models", "digits_cnn", "--count-file", str(count), *server_args) as server:
        cfg = compose_dict(["model=[remote_digits_cnn]", f"model.remote_digits_cnn.remote.url={server.url}",
                            *remote_keys, f"perturbation=[{attack}]", f"perturbation.{attack}.eps=[0.2]",
                            f"perturbation.{attack}.budget={budget}", f"n_examples={N}", "batch_size=3",
                            "progress=false", f"out_dir={out}"])
        outcome = run_sweep(cfg)
        server_total = count_file_totals(count)
        (entry,) = RunLedger(out).targets().values()
        assert entry["spent"] == server_total["images"]  # every image the endpoint received, the plan check too
        assert entry["sent"] == entry["spent"] - 1  # finished tasks' images; the plan's fit check sent one
        assert entry["calls"] == server_total["requests"] - 1
        assert entry["sent"] == entry["rows"] - entry["cached"] and entry["cached"] > 0  # cache hits reported
        rows = read(out).to_pylist()
        assert len(rows) == N and all(r["queries"] <= budget for r in rows)  # no sample over its budget
        assert sum(not r["correct"] for r in rows) >= 1  # the attack broke samples: real queries were counted
        assert f"received {entry['spent']} image(s)" in outcome.summary
        lines = [ln for ln in outcome.summary.splitlines() if ln.startswith("remote_digits_cnn ") and "/infer" in ln]
        assert lines and str(entry["sent"]) in lines[0].split() and str(entry["cached"]) in lines[0].split()
        again = run_sweep(cfg)  # the same run again: finished rows are its answers, nothing is sent
        assert again.evaluated == 0 and count_file_totals(count) == server_total
        assert (f"received 0 image(s) ({entry['spent']} in earlier runs of this folder); every answer came from "
                "finished rows or the cache") in again.summary
        assert np.array_equal([r["pred"] for r in read(out).to_pylist()], [r["pred"] for r in rows])
