"""``gauntlet verify`` on black-box claims: ``threat_model: {norm, eps, access: label_only | score_based, queries}``.

The claim file is validated (access and queries), the base perturbations are the query-based attacks matching
the access instead of AutoAttack, and the verdict states the access and the budget, and that a black-box
number is an upper bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.claims.blackbox import blackbox_outcome
from engine.claims.build import base_config
from engine.claims.schema import parse_claim_file
from engine.errors import ConfigError
from tests.conftest import run_cli


def _doc(*threats: dict[str, Any]) -> dict[str, Any]:
    return {"model": "digits_cnn", "dataset": "digits", "n_examples": 5,
            "claims": [{"threat_model": t, "claimed_accuracy": 0.8} for t in threats]}


def test_access_and_queries_parse_with_defaults(tmp_path: Path) -> None:
    cf = parse_claim_file(str(tmp_path / "c.yaml"), _doc(
        {"norm": "linf", "eps": "8/255", "access": "label_only", "queries": 10000},
        {"norm": "linf", "eps": 0.1, "access": "score-based"},
        {"norm": "l2", "eps": 0.5}))
    a, b, c = cf.claims
    assert (a.access, a.queries, a.black_box) == ("label_only", 10000, True)
    assert (b.access, b.queries) == ("score_based", 5000)  # AutoAttack's Square budget
    assert (c.access, c.queries, c.black_box) == ("white_box", None, False)
    assert a.label() == "L∞ ε=8/255, label-only, 10,000 queries"


@pytest.mark.parametrize("threat, needle", [
    ({"norm": "linf", "eps": 0.1, "access": "grey_box"}, "valid: white_box, score_based, label_only"),
    ({"norm": "linf", "eps": 0.1, "queries": 100}, "applies to access: label_only or score_based"),
    ({"norm": "linf", "eps": 0.1, "access": "label_only", "queries": 1e4}, "must be an integer"),
    ({"norm": "linf", "eps": 0.1, "access": "label_only", "queries": 0}, "must be an integer"),
    ({"norm": "linf", "eps": 0.1, "access": "label_only", "querys": 10}, "did you mean 'queries'"),
])
def test_bad_access_or_budget_is_one_config_error(tmp_path: Path, threat: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_claim_file(str(tmp_path / "c.yaml"), _doc(threat))


def test_the_base_suite_of_a_black_box_claim_is_the_matching_query_attacks(tmp_path: Path) -> None:
    cf = parse_claim_file(str(tmp_path / "c.yaml"), _doc(
        {"norm": "linf", "eps": 0.1, "access": "label_only", "queries": 3000},
        {"norm": "linf", "eps": 0.2, "access": "label_only", "queries": 800},
        {"norm": "l2", "eps": 1.0, "access": "score_based"}))
    cfg = base_config(cf, ["out_dir=/tmp/o"], None)
    assert set(cfg["perturbation"]) == {"clean", "hopskipjump_linf", "rays_linf", "square_l2_remote"}
    assert cfg["perturbation"]["rays_linf"]["eps"] == [0.1, 0.2]
    assert cfg["perturbation"]["rays_linf"]["budget"] == 3000  # the largest; each claim is judged at its own
    assert cfg["perturbation"]["square_l2_remote"]["budget"] == 5000
    half = base_config(cf, ["out_dir=/tmp/o"], None, budget=0.5)
    assert half["perturbation"]["hopskipjump_linf"]["budget"] == 1500


def test_a_claim_is_judged_at_its_own_budget() -> None:
    rows = [{"model": "m", "perturbation": p, "level": 0.1, "sample_id": s, "correct": c, "broken_by": b,
             "margin": -1.0 if not c else 1.0, "queries_to_success": q}
            for p, s, c, b, q in [("hsj", 0, False, "hsj", 500), ("rays", 0, True, "", None),
                                  ("hsj", 1, True, "", None), ("rays", 1, False, "rays", 2000),
                                  ("hsj", 2, False, "", None), ("rays", 2, False, "", None)]]
    at_1000 = blackbox_outcome(rows, "m", ["hsj", "rays"], 0.1, 1000)
    assert at_1000.correct == {0: False, 1: True, 2: False} and at_1000.breaker[0] == "hsj"
    assert blackbox_outcome(rows, "m", ["hsj", "rays"], 0.1, 5000).correct[1] is False


def test_verify_states_access_and_budget_in_the_verdict(tmp_path: Path, embedded_checkpoints: dict[str, str]
                                                         ) -> None:
    claim = tmp_path / "bb.yaml"
    claim.write_text("model: digits_cnn\ndataset: digits\nn_examples: 4\nclaims:\n"
                     "  - threat_model: {norm: linf, eps: 0.2, access: label_only, queries: 120}\n"
                     "    claimed_accuracy: 0.9\n")
    out = tmp_path / "out"
    proc = run_cli("verify", str(claim), f"out_dir={out}", "progress=false", "wandb=disabled")
    assert proc.returncode in (0, 1, 3), proc.stderr[-3000:]
    (v,) = json.loads((out / "verdict.json").read_text())["claims"]
    tm = v["threat_model"]
    assert tm["access"] == "label_only" and tm["queries"] == 120 and "AML.T0040" in tm["atlas"]
    assert tm["attacks"] == ["hopskipjump_linf", "rays_linf"] and "autoattack" not in json.dumps(v["broken_by"])
    assert ("a black-box L∞ adversary with ε = 0.2 with query access to the top-1 label only, at most 120 queries"
            in v["statement"])
    assert "upper bound on robust accuracy" in v["caveat"]
    text = (out / "verdict.txt").read_text()
    assert "label-only, 120 queries" in text and "autoattack_standard" not in text
    assert "attacks: rays_linf (RayS) at ε ['51/255']: 120 queries per sample through the oracle" in text
