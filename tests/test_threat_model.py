"""Threat-model tags: the list form and the mapping form parse to one checked structure; mistakes are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.compose.threat_model import canonical_tags, describe, parse_tags
from engine.errors import ConfigError


def test_list_form_translates_to_the_structure() -> None:
    tm = parse_tags("p", ["white-box", "AML.T0043.000", "AML.T0015"], "attack")
    assert tm.knowledge == ("white-box",) and tm.goal == "untargeted" and tm.stride == "tampering"
    assert tm.atlas == ("AML.T0043.000", "AML.T0015")
    corr = parse_tags("c", ["natural-shift", "non-adversarial", "corruption", "blur"], "corruption")
    assert corr.knowledge == ("none",) and corr.goal == "natural-shift" and corr.stride is None
    assert "blur" in corr.labels
    assert parse_tags("clean", ["baseline"], "clean").goal == "none"


def test_mapping_form_round_trips_through_the_list_form() -> None:
    mapping = {"knowledge": "black-box", "goal": "targeted", "atlas": ["AML.T0043.001", "AML.T0040"],
               "stride": "tampering", "labels": ["api"]}
    listed = canonical_tags(mapping)
    assert "black-box" in listed and "goal:targeted" in listed
    assert parse_tags("p", listed, "attack") == parse_tags("p", mapping, "attack")


@pytest.mark.parametrize(("tags", "needle"), [
    (["white-box", "AML.T0043.9"], "unknown MITRE ATLAS id 'AML.T0043.9'"),
    (["whitebox"], "not a knowledge word; use white-box or black-box"),
    (["goal:steal"], "tags.goal='steal' is not one of"),
    ({"knowledge": "grey-box"}, "tags.knowledge='grey-box'"),
    ({"atlas": ["AML.T0043.000"], "stryde": "tampering"}, "unknown tags key(s) ['stryde']"),
    ({"stride": "tamper"}, "did you mean 'tampering'"),
    ("white-box", "tags must be a list of words or a mapping"),
])
def test_mistakes_are_config_errors(tags: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_tags("perturbation 'x'", tags, "attack")
    assert needle in str(err.value)


def test_every_shipped_perturbation_config_has_a_valid_threat_model() -> None:
    from engine.compose.config import CONFIG_DIR, compose_sweep
    from engine.evaluation.resources import build_perturbation

    names = [p.stem for p in Path(CONFIG_DIR, "perturbation").glob("*.yaml")]
    cfg = compose_sweep([f"perturbation=[{','.join(sorted(names))}]"])
    for name, pcfg in cfg["perturbation"].items():
        tm = build_perturbation(name, pcfg).threat_model
        assert tm.knowledge and all(i.startswith("AML.") for i in tm.atlas), name


def test_a_config_with_an_unknown_atlas_id_fails_when_built() -> None:
    from engine.compose.config import compose_sweep
    from engine.evaluation.resources import build_perturbation

    pcfg = compose_sweep(["perturbation=[pgd_linf]"])["perturbation"]["pgd_linf"]
    with pytest.raises(ConfigError, match=r"unknown MITRE ATLAS id 'AML\.T9999'"):
        build_perturbation("pgd_linf", {**pcfg, "tags": ["white-box", "AML.T9999"]})
    mapped = build_perturbation("pgd_linf", {**pcfg, "tags": {"knowledge": "white-box", "atlas": ["AML.T0015"]}})
    assert "white-box" in mapped.tags and mapped.threat_model.atlas == ("AML.T0015",)


def test_the_statement_names_the_adversary_and_the_gaps() -> None:
    tm = parse_tags("p", ["white-box", "AML.T0043.000", "AML.T0015"], "attack")
    s = describe(tm, "linf", "8/255")
    assert s.startswith("holds for a white-box L∞ adversary with ε = 8/255 who knows the weights")
    assert "black-box API abuse" in s and "poisoning" in s and "extraction" in s
    assert "no adversary" in describe(parse_tags("c", ["natural-shift"], "corruption"), None, None)


def test_sweep_json_records_each_perturbations_threat_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import json

    from engine.sweep import run_sweep
    from tests.conftest import compose_dict, tiny_overrides

    cfg = compose_dict(tiny_overrides(tiny_checkpoint, tmp_path / "o", "perturbation=[clean,fgsm_linf]",
                                      "n_examples=4", "perturbation.fgsm_linf.eps=[0.1]"))
    run_sweep(cfg)
    doc = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert doc["threat_models"]["fgsm_linf"]["knowledge"] == ["white-box"]
    assert "AML.T0015" in doc["threat_models"]["fgsm_linf"]["atlas"]
    assert doc["threat_models"]["clean"]["knowledge"] == ["none"]
