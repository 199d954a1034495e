"""Acceptance of ``gauntlet verify`` with the real AutoAttack standard suite (slow: minutes on a 2-core CPU).

Shards of 10 samples let the 20-sample check reuse the 50-sample run's finished tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
HOUR = 3600


def _verify(claim: Path, out: Path, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = run_cli("verify", str(claim), f"out_dir={out}", "shard_size=10", "progress=false", *extra, timeout=HOUR)
    assert proc.returncode != 2, proc.stderr[-3000:]
    doc = json.loads((out / "verdict.json").read_text())
    assert doc["exit_code"] == proc.returncode
    return proc.returncode, doc["claims"], proc.stdout


def _at_claims(path: Path, *claimed: float) -> Path:
    # L∞ ε = 0.2 (≈ 50 %): 50 samples refute a claim 15 points above the measurement; a claim at the
    # measurement needs the interval within ±15 points there (the ±10-point default would need ≈ 100 samples)
    lines = ["model: digits_cnn_at", "dataset: digits", "n_examples: 50", "resolution: 0.15", "claims:"]
    for c in claimed:
        lines += ["  - threat_model: {norm: linf, eps: 0.2}", f"    claimed_accuracy: {c!r}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_digits_cnn_at_claims_consistent_refuted_inconclusive(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _, (first,), _ = _verify(_at_claims(tmp_path / "probe.yaml", 0.5), out)
    measured = round(first["measured_accuracy"], 4)
    assert 0.3 <= measured <= 0.7  # AutoAttack standard on digits_cnn_at at L∞ 0.2: 49-50 % on 100 samples
    rc, (at, raised), text = _verify(_at_claims(tmp_path / "claims.yaml", measured, measured + 0.15), out)
    assert at["verdict"] == "CONSISTENT", at["reason"]
    assert raised["verdict"] == "REFUTED" and raised["ci_high"] < raised["claimed_accuracy"]
    assert rc == 1 and "CONSISTENT" in text and "REFUTED" in text
    assert at["n"] == 50 and at["ci_low"] <= measured <= at["ci_high"]
    assert at["strongest_attack"] in {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert "white-box L∞ adversary with ε = 0.2" in at["statement"] and "poisoning" in at["statement"]
    assert all(i["cleared"] for i in at["indicators"] if i["fired"])
    rc, (few,), text = _verify(_at_claims(tmp_path / "few.yaml", measured), out, "n_examples=20")
    assert few["verdict"] == "INCONCLUSIVE" and few["n"] == 20 and rc == 3
    assert few["samples_needed"] is not None and few["samples_needed"] > 20
    assert f"about {few['samples_needed']}" in text


def test_a_gradient_masking_model_is_never_consistent(tmp_path: Path) -> None:
    rc, (v,), _ = _verify(REPO / "examples/claims/quantised_defence.yaml", tmp_path / "q", "n_examples=20")
    assert v["verdict"] != "CONSISTENT" and v["verdict"] == "REFUTED" and rc == 1
    fired = {i["check"] for i in v["indicators"] if i["fired"]}
    assert fired & {"gradients", "zero_gradients_path"}
    kinds = {e["kind"] for e in v["escalations"]}
    assert "bpda" in kinds
    bpda = next(e for e in v["escalations"] if e["kind"] == "bpda")
    assert bpda["changed"]["0.1"]["broke"] > 0  # BPDA broke samples AutoAttack's gradients could not
    assert any(k.startswith(("escalation_bpda", "square", "escalation_square")) for k in v["broken_by"])


def test_a_randomised_model_is_caught_through_eot(tmp_path: Path) -> None:
    rc, (v,), _ = _verify(REPO / "examples/claims/noisy_defence.yaml", tmp_path / "n", "n_examples=20")
    assert v["verdict"] == "REFUTED" and rc == 1
    assert "eot" in {e["kind"] for e in v["escalations"]}
    fired = {i["check"] for i in v["indicators"] if i["fired"]}
    assert fired & {"randomised_without_eot", "silent_success"}


def test_a_corruption_claim_is_the_mean_over_the_suite(tmp_path: Path) -> None:
    claim = tmp_path / "corr.yaml"
    claim.write_text("model: digits_cnn_at\ndataset: digits\nn_examples: 20\nclaims:\n"
                     "  - {threat_model: {corruptions: cifar10_c}, claimed_accuracy: 0.5, clean_accuracy: 0.9}\n")
    rc, (v,), _ = _verify(claim, tmp_path / "c")
    assert v["verdict"] == "CONSISTENT" and rc == 0 and v["n"] == 20
    assert len(v["threat_model"]["members"]) == 15 and v["threat_model"]["knowledge"] == ["none"]
    assert v["ci_low"] <= v["measured_accuracy"] <= v["ci_high"] and v["clean"]["verdict"] == "CONSISTENT"
    assert "natural distribution shift" in v["statement"] and not v["escalations"]
