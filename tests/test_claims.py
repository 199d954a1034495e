"""Claim checking: claim-file validation, the verdict rule, each indicator (a model that triggers it, a healthy
one that does not), BPDA / transfer members, subsets, and ``gauntlet verify`` refusing bad files with exit 2."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.claims.decide import Blockers, Rule, decide, estimate, thin_margin
from engine.claims.schema import parse_claim_file
from engine.errors import ConfigError

DIGITS_ARCH = {"_target_": "engine.models.cnn.SmallCNN", "in_channels": 1, "num_classes": 10, "width": 16}
MEAN, STD = [0.3051], [0.3237]


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": "digits_cnn_at", "dataset": "digits", "n_examples": 50,
                           "claims": [{"threat_model": {"norm": "linf", "eps": 0.1}, "claimed_accuracy": 0.8}]}
    doc.update(over)
    return doc


# -- claim files -----------------------------------------------------------------------------------------------


def test_a_valid_claim_file_parses_with_fractions_and_corruptions() -> None:
    cf = parse_claim_file("c.yaml", _doc(claims=[
        {"threat_model": {"norm": "Linf", "eps": "8/255"}, "claimed_accuracy": 0.6, "clean_accuracy": 0.9,
         "source": "table 3"},
        {"threat_model": {"corruptions": "cifar10_c"}, "claimed_accuracy": 0.85},
    ]))
    adv, corr = cf.claims
    assert adv.norm == "linf" and adv.eps == pytest.approx(8 / 255) and adv.eps_text == "8/255"
    assert adv.clean_accuracy == 0.9 and adv.source == "table 3"
    assert corr.corruptions == "cifar10_c" and not corr.adversarial


@pytest.mark.parametrize(("doc", "needle"), [
    (_doc(n_exmples=3), "unknown key 'n_exmples'; did you mean 'n_examples'?"),
    (_doc(model="resnet_vendor"),
     "unknown model 'resnet_vendor'; valid choices: autoattack_resnet18, digits_cnn, digits_cnn_at,"),
    (_doc(dataset="cifar11"), "unknown dataset 'cifar11'"),
    (_doc(claims=[{"threat_model": {"norm": "linf", "eps": 8}, "claimed_accuracy": 0.5}]),
     "eps=8 is outside [0, 1]: ε is in pixel units ([0, 1] scale), not 0-255; write 8/255"),
    (_doc(claims=[{"threat_model": {"norm": "l2", "eps": 128}, "claimed_accuracy": 0.5}]), "0-255 units"),
    (_doc(claims=[{"threat_model": {"norm": "linf", "eps": "8/0"}, "claimed_accuracy": 0.5}]), "not a number"),
    (_doc(claims=[{"threat_model": {"norm": "linf", "eps": 0.1}, "claimed_accuracy": 85}]),
     "claimed_accuracy=85 is above 1: accuracies are fractions; write 0.85 for 85 %"),
    (_doc(claims=[{"threat_model": {"norm": "l1", "eps": 0.1}, "claimed_accuracy": 0.5}]), "valid norms: linf, l2"),
    (_doc(claims=[{"threat_model": {"norm": "linf", "epsilon": 0.1}, "claimed_accuracy": 0.5}]),
     "unknown key 'epsilon'"),
    (_doc(claims=[{"threat_model": {"corruptions": "cifar100_c"}, "claimed_accuracy": 0.5}]),
     "not a corruption suite"),
    (_doc(claims=[{"threat_model": {"norm": "linf", "eps": 0.1}, "claimed_acc": 0.5}]), "unknown key 'claimed_acc'"),
    (_doc(claims=[]), "claims must be a non-empty list"),
    (_doc(subset={"mode": "random", "n": 10}), "give n_examples or subset, not both"),
    (_doc(n_examples=0), "n_examples=0 must be a positive integer"),
    (_doc(model={"arch": DIGITS_ARCH}), "needs 'checkpoint'"),
    (_doc(model={"arch": DIGITS_ARCH, "checkpoint": "x", "memory": "c"}), "unknown key 'memory'"),
    (_doc(defence={"non_differentiable": "net; rm"}), "dotted module path"),
    (_doc(resolution=10), "resolution=10 must be a fraction"),
])
def test_claim_file_mistakes_name_the_key_and_the_fix(doc: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_claim_file("c.yaml", doc)
    assert needle in str(err.value)


def test_overrides_cannot_change_what_the_claim_is_about() -> None:
    from engine.claims.build import split_overrides

    claim, hydra = split_overrides(["n_examples=20", "out_dir=/tmp/x", "device=cpu"])
    assert claim == {"n_examples": "20"} and hydra == ["out_dir=/tmp/x", "device=cpu"]
    with pytest.raises(ConfigError, match="the claim file decides"):
        split_overrides(["perturbation.autoattack_standard_linf.attacks=[]"])
    with pytest.raises(ConfigError, match="not key=value"):
        split_overrides(["--fast"])


def test_base_config_is_the_composed_sweep_with_the_claims_eps(tmp_path: Path) -> None:
    from engine.claims.build import base_config

    cf = parse_claim_file(str(tmp_path / "v.yaml"), _doc(
        model={"name": "vendor", "arch": DIGITS_ARCH, "mean": MEAN, "std": STD,
               "checkpoint": "${cache_dir}/checkpoints/digits_cnn.safetensors"},
        n_examples=None, subset={"mode": "random", "n": 30, "seed": 1},
        claims=[{"threat_model": {"norm": "linf", "eps": e}, "claimed_accuracy": 0.5} for e in ("8/255", 0.1)]
        + [{"threat_model": {"corruptions": "cifar10_c"}, "claimed_accuracy": 0.5}]))
    cfg = base_config(cf, ["out_dir=/tmp/o"], None)
    assert list(cfg["model"]) == ["vendor"] and "${" not in cfg["model"]["vendor"]["checkpoint"]
    assert cfg["model"]["vendor"]["memory_format"] == "contiguous"  # schema defaults filled in
    assert cfg["perturbation"]["autoattack_standard_linf"]["eps"] == [8 / 255, 0.1]
    assert {"clean", "gaussian_noise", "jpeg_compression"} <= set(cfg["perturbation"])
    assert cfg["dataset"]["_target_"] == "engine.claims.subset.subset_of" and cfg["n_examples"] == 30
    assert cfg["out_dir"] == "/tmp/o"


def test_subsets_keep_sample_ids() -> None:
    from engine.claims.subset import subset_of
    from engine.data.digits import load_digits

    d = load_digits(split="test")
    a, b = subset_of(d, "random", 10, 3), subset_of(d, "random", 10, 3)
    assert torch.equal(a.sample_ids, b.sample_ids) and not torch.equal(a.sample_ids, d.sample_ids[:10])
    picked = subset_of(d, ids=[8, 0])
    assert picked.sample_ids.tolist() == [8, 0] and torch.equal(picked.images[1], d.images[0])
    with pytest.raises(ConfigError, match="not in dataset"):
        subset_of(d, ids=[1])  # train ids are not in the test split


# -- the verdict rule ----------------------------------------------------------------------------------------------


def test_verdict_rule() -> None:
    # every boundary of the rule: tests/test_decide.py; here, the shape of it on a 100-sample measurement
    half = estimate([1.0] * 50 + [0.0] * 50)  # 50 % of 100: Wilson [40.4 %, 59.6 %]
    rule = Rule(resolution=0.10)
    assert decide(half, 0.65, rule).verdict == "REFUTED"
    assert decide(half, 0.50, rule).verdict == "CONSISTENT"
    assert decide(half, 0.30, rule).verdict == "CONSISTENT"  # below the interval
    d = decide(half, 0.58, rule)  # inside the interval, 8 pp above the measurement: leans against the claim
    assert d.verdict == "INCONCLUSIVE" and d.rule == "leans_below_claim" and "samples would decide it" in d.reason
    d = decide(half, 0.50, rule, Blockers(uncleared=["zero_gradients_path"]))
    assert d.verdict == "INCONCLUSIVE" and "zero_gradients_path" in d.reason
    assert decide(half, 0.65, rule, Blockers(uncleared=["zero_gradients_path"])).verdict == "REFUTED"
    small = estimate([1.0] * 10 + [0.0] * 10)
    d = decide(small, 0.50, rule)
    assert d.verdict == "INCONCLUSIVE" and d.samples_needed is not None and d.samples_needed > 20
    assert d.rule == "interval_too_wide"


def test_thin_margin_means_a_small_drop_would_refute() -> None:
    big = estimate([1.0] * 5000 + [0.0] * 5000)
    assert thin_margin(big, 0.505, 0.03) and not thin_margin(big, 0.40, 0.03)
    assert not thin_margin(estimate([1.0] * 25 + [0.0] * 25), 0.5, 0.03)  # too few samples to matter


def test_exit_codes() -> None:
    from engine.claims.verdict import exit_code

    def v(s: str) -> Any:
        return SimpleNamespace(verdict=s)

    assert exit_code([v("CONSISTENT"), v("CONSISTENT")]) == 0
    assert exit_code([v("CONSISTENT"), v("INCONCLUSIVE")]) == 3
    assert exit_code([v("INCONCLUSIVE"), v("REFUTED")]) == 1


def test_corruption_means_get_an_interval_over_samples() -> None:
    est = estimate([0.8, 0.6, 1.0, 0.4] * 25)
    assert not est.binary and est.ci_low < 0.7 < est.ci_high and est.n == 100


# -- indicators -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(embedded_checkpoints: dict[str, str]) -> dict[str, torch.nn.Module]:
    from engine.models.loader import build_model
    from tests.conftest import compose_dict

    cfg = compose_dict()["model"]
    cpu = torch.device("cpu")

    def wrap(base: str, kind: str, **kw: Any) -> torch.nn.Module:
        m = dict(cfg[base], train=None)
        m["arch"] = {"_target_": f"engine.models.testing.{kind}", "net": dict(m["arch"]), "mean": MEAN, "std": STD,
                     **kw}
        return build_model(f"{base}_{kind}", m, cpu)

    return {"healthy": build_model("digits_cnn_at", cfg["digits_cnn_at"], cpu),
            "quantised": wrap("digits_cnn", "InputQuantised", levels=16),
            "binarised": wrap("digits_cnn", "InputQuantised", levels=2),
            "noisy": wrap("digits_cnn_at", "InputNoise", sigma=0.1),
            "rippled": wrap("digits_cnn_at", "InputRipple", amplitude=0.1, frequency=300.0)}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    from engine.data.digits import load_digits

    d = load_digits(split="test")
    return d.images[:16], d.labels[:16], d.sample_ids[:16].tolist()


_TRACES: dict[tuple[int, int, int, tuple[int, ...]], dict[str, Any]] = {}


def _trace(model: torch.nn.Module, batch: Any, eps: float = 0.2, n_iter: int = 100, seed: int = 0) -> dict[str, Any]:
    """Indicators of one traced APGD-CE run (cached: several tests read the same run)."""
    from engine.claims.indicators import run_trace, trace_indicators
    from engine.perturbations.autoattack import APGD

    x, y, ids = batch
    key = (id(model), n_iter, seed, tuple(ids))
    if key not in _TRACES:
        torch.manual_seed(seed)  # the noisy model draws from the global RNG
        t = run_trace(model, APGD(name="apgd-ce", loss="ce", n_iter=n_iter), x, y, ids, "linf", eps, seed, 10)
        _TRACES[key] = {i.check: i for i in trace_indicators(t)} | {"_trace": t}
    return _TRACES[key]


def test_zero_gradients_along_the_path_fire_on_quantisation_only(models: dict[str, Any], batch: Any) -> None:
    assert _trace(models["quantised"], batch, n_iter=20)["zero_gradients_path"].fired
    assert not _trace(models["healthy"], batch)["zero_gradients_path"].fired


def test_silent_success_fires_on_a_randomised_model_only(models: dict[str, Any], batch: Any) -> None:
    noisy = _trace(models["noisy"], batch)
    assert noisy["silent_success"].fired and noisy["silent_success"].details["sample_ids"]
    healthy = _trace(models["healthy"], batch)
    assert not healthy["silent_success"].fired and healthy["silent_success"].count == 0


def test_non_converging_loss_fires_on_rugged_gradients_only(models: dict[str, Any], batch: Any) -> None:
    assert _trace(models["rippled"], batch)["non_converging_loss"].fired
    assert not _trace(models["healthy"], batch)["non_converging_loss"].fired


def test_bad_initialisation_fires_when_a_restart_breaks_what_the_main_run_left(models: dict[str, Any],
                                                                               batch: Any) -> None:
    x, y, ids = batch

    def restart_after(main: Any) -> Any:
        left = [i for i in range(len(ids)) if not bool(main.broken[i])]
        return _trace(models["healthy"], (x[left], y[left], [ids[i] for i in left]), seed=1)["bad_initialisation"]

    # a 2-iteration main run leaves samples that a fresh 100-iteration start breaks
    assert restart_after(_trace(models["healthy"], batch, n_iter=2)["_trace"]).fired
    # after a full 100-iteration run, another start finds (almost) nothing more on a healthy model
    assert not restart_after(_trace(models["healthy"], batch)["_trace"]).fired


def test_transfer_failure_fires_when_the_surrogate_is_not_faithful(models: dict[str, Any], batch: Any) -> None:
    from engine.claims.transfer import transfer_indicator
    from engine.data.digits import load_digits
    from engine.perturbations.autoattack import APGD
    from engine.perturbations.suite import AttackSuite

    data = load_digits(split="test")
    suite = AttackSuite(name="s", norm="linf", eps=(0.1,), attacks=(APGD(name="apgd-ce", n_iter=20),))
    nc = SimpleNamespace(eps=[0.1], base_robust={0.1: batch[2]}, at="net", norm="linf")
    binarised = transfer_indicator(nc, models["binarised"], data, suite, torch.device("cpu"))
    assert binarised.fired and binarised.details["surrogate_fooled"] >= 2
    quantised = transfer_indicator(nc, models["quantised"], data, suite, torch.device("cpu"))
    assert not quantised.fired and quantised.details["real_fooled"] >= quantised.details["surrogate_fooled"] / 2


def test_the_gradient_probe_locates_the_non_differentiable_front_end(models: dict[str, Any], batch: Any) -> None:
    from engine.claims.indicators import locate_nondifferentiable

    x, y, _ = batch
    assert locate_nondifferentiable(models["quantised"], x, y) == "net"
    assert locate_nondifferentiable(models["healthy"], x, y) is None
    assert locate_nondifferentiable(models["noisy"], x, y) is None


# -- BPDA and transfer members -------------------------------------------------------------------------------------


def test_bpda_keeps_the_forward_pass_and_breaks_what_plain_apgd_cannot(models: dict[str, Any], batch: Any) -> None:
    from engine.perturbations.adaptive import Adaptive, GradientView
    from engine.perturbations.autoattack import APGD
    from engine.perturbations.base import BatchContext
    from engine.perturbations.suite import AttackSuite

    x, y, ids = batch
    q = models["quantised"]
    with torch.no_grad():
        assert torch.equal(GradientView(q, "net", "bpda")(x), q(x))  # bit-identical forward
    plain = AttackSuite(name="p", norm="linf", eps=(0.1,), attacks=(APGD(name="apgd-ce", n_iter=20),))
    bpda = AttackSuite(name="b", norm="linf", eps=(0.1,), attacks=(
        Adaptive(name="bpda-apgd-ce", member=APGD(name="apgd-ce", n_iter=20), at="net", mode="bpda"),))
    ctx = BatchContext(q, 0, torch.tensor(ids))

    def acc(suite: AttackSuite) -> float:
        (out,) = list(suite.run(x, y, ctx))
        with torch.no_grad():
            return float((q(out.x).argmax(1) == y).float().mean())

    assert acc(bpda) < acc(plain) - 0.3
    with pytest.raises(ConfigError, match="not inside the model"):
        GradientView(q, "nope", "bpda")


def test_adaptive_members_build_from_config() -> None:
    from engine.evaluation.resources import build_perturbation

    cfg = {"_target_": "engine.perturbations.suite.AttackSuite", "norm": "linf", "eps": [0.1],
           "attacks": [{"_target_": "engine.perturbations.adaptive.Adaptive", "name": "t", "at": "net",
                        "mode": "transfer", "tags": ["white-box", "AML.T0043.002"],
                        "member": {"_target_": "engine.perturbations.autoattack.APGD", "name": "apgd-ce"}}]}
    suite = build_perturbation("x", cfg)
    assert suite.threat_model.atlas == () and suite.threat_of("t") == "white-box"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="mode"):
        build_perturbation("x", {**cfg, "attacks": [{**cfg["attacks"][0], "mode": "magic"}]})


# -- the CLI refuses bad files before any compute -------------------------------------------------------------


def test_verify_refuses_bad_claim_files_with_exit_2_before_compute(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    cases = {
        "typo": ("model: digits_cnn_at\ndataset: digits\nclaimz: []\n", "unknown key 'claimz'; did you mean 'claims'?"),
        "model": ("model: vendor_resnet\ndataset: digits\nclaims:\n  - {threat_model: {norm: linf, eps: 0.1}, "
                  "claimed_accuracy: 0.5}\n",
                  "unknown model 'vendor_resnet'; valid choices: autoattack_resnet18, digits_cnn, "),
        "units": ("model: digits_cnn_at\ndataset: digits\nclaims:\n  - {threat_model: {norm: linf, eps: 8}, "
                  "claimed_accuracy: 0.5}\n", "write 8/255"),
    }
    for name, (text, needle) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out = tmp_path / f"out_{name}"
        proc = run_cli("verify", str(path), f"out_dir={out}")
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()  # nothing was computed or written


# -- escalation choice --------------------------------------------------------------------------------------------


def test_escalations_follow_the_indicators() -> None:
    from engine.claims.escalate import build, choose

    assert choose([], False, None) == {}
    masked = choose(["gradients", "zero_gradients_path"], False, "net")
    assert list(masked) == ["bpda", "transfer", "square"] and masked["bpda"] == ["gradients", "zero_gradients_path"]
    assert list(choose(["black_box_beats_white_box"], False, None, gradients_alive=True)) == ["plus", "square"]
    assert list(choose(["gradients"], False, None, gradients_alive=False)) == ["square"]  # nothing to bypass
    assert list(choose(["silent_success", "bad_initialisation"], True, None)) == ["eot"]
    assert list(choose(["bad_initialisation", "thin_margin"], False, None)) == ["plus"]
    assert list(choose([], False, "net")) == ["bpda", "transfer"]  # declared by the claim file
    assert list(choose(["some_new_sanity_flag"], False, None)) == ["plus"]
    base = {"norm": "linf", "attacks": [
        {"_target_": "engine.perturbations.autoattack.APGD", "name": "apgd-ce", "loss": "ce", "n_iter": 100,
         "n_restarts": 1, "rho": 0.75, "tags": ["white-box", "AML.T0043.000"]}]}
    bpda = build("bpda", base, "linf", [0.1], "net", randomised=True).config
    assert bpda["attacks"][0]["member"]["eot"] == 20 and bpda["attacks"][0]["at"] == "net"
    plus = build("plus", base, "linf", [0.1], None, False).config
    assert {m["name"] for m in plus["attacks"]} >= {"apgd-dlr", "fab"} and plus["eps"] == [0.1]
    assert build("square", base, "linf", [0.1], None, False).config["attacks"][0]["n_queries"] == 20000


# -- the ladder and the rule, end to end (budget=0.05: seconds; the full-budget runs: test_claims_acceptance.py) ---


def _front(kind: str, **kw: Any) -> dict[str, Any]:
    pixel = {} if kind == "LogitScaled" else {"mean": MEAN, "std": STD}
    return {"name": f"digits_cnn_at_{kind.lower()}", "mean": MEAN, "std": STD,
            "arch": {"_target_": f"engine.models.testing.{kind}", "net": dict(DIGITS_ARCH), **pixel, **kw},
            "checkpoint": "${cache_dir}/checkpoints/digits_cnn_at.safetensors"}


def _verify(tmp_path: Path, model: dict[str, Any], claims: list[tuple[float, float]], *extra: str,
            out: str = "out", n: int = 12) -> tuple[int, dict[str, Any], str]:
    import io
    import json
    from contextlib import redirect_stderr, redirect_stdout

    import yaml

    from engine.claims.cli import main

    path = tmp_path / "claim.yaml"
    path.write_text(yaml.safe_dump({"model": model, "dataset": "digits", "n_examples": n, "claims": [
        {"threat_model": {"norm": "linf", "eps": e}, "claimed_accuracy": c} for e, c in claims]}))
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        rc = main([str(path), f"out_dir={tmp_path / out}", "budget=0.05", "progress=false", *extra])
    assert rc != 2, stderr.getvalue()[-3000:]
    return rc, json.loads((tmp_path / out / "verdict.json").read_text()), stdout.getvalue()


def test_a_claim_refuted_by_the_base_run_skips_the_whole_ladder(embedded_checkpoints: dict[str, str],
                                                                tmp_path: Path) -> None:
    # logit scaling: cross-entropy gradients vanish, APGD-T's DLR loss does not: refuted before any escalation
    rc, doc, text = _verify(tmp_path, _front("LogitScaled", scale=1000.0), [(0.2, 0.97)])
    (v,) = doc["claims"]
    assert v["verdict"] == "REFUTED" and rc == 1 and v["rule"] == "interval_below_claim"
    assert v["reason"].startswith("rule interval_below_claim:")
    assert v["escalations"] and all(e["status"] == "skipped" for e in v["escalations"])
    assert all("already refuted" in e["why"] for e in v["escalations"])
    assert v["ladder"]["stopped"] == "refuted" and v["ladder"]["spent_evals"] == 0
    assert not (tmp_path / "out" / "escalations").exists()  # nothing ran
    assert "ladder: stopped: every claim it could still change is refuted" in text


def test_a_randomised_model_climbs_the_ladder_rescored(embedded_checkpoints: dict[str, str], tmp_path: Path) -> None:
    model = _front("InputNoise", sigma=0.1)
    rc, doc, text = _verify(tmp_path, model, [(0.2, 0.4)])
    (v,) = doc["claims"]
    assert v["verdict"] != "CONSISTENT" and doc["rule"]["rescore"] == 20
    assert "classified 20 times" in text and f"rule {v['rule']}" in v["reason"]
    ran = [e for e in v["escalations"] if e["status"] == "ran"]
    assert ran and ran[0]["kind"] == "eot" and ran[0]["rung"] == 1
    for e in ran:
        assert e["samples"] > 0 and e["cost"] > 0 and 0 <= e["broke"] <= e["samples"]
        assert e["cost"] <= e["cost_estimate"] and {"changed", "wall_s", "attack", "still_breaking_at"} <= set(e)
    lad = v["ladder"]
    assert lad["stopped"] in ("converged", "top_rung", "refuted", "nothing_left")
    assert lad["spent_evals"] == sum(e["cost"] for e in ran) <= lad["budget_evals"] == 50_000 * 12 * 0.05
    assert (tmp_path / "out" / "escalations" / "escalation_eot_linf").is_dir()

    # the same run with no ladder budget: nothing escalates, so the randomness is not cleared and nothing converged
    rc, doc, text = _verify(tmp_path, model, [(0.2, 0.0)], "ladder_budget=0")
    (v,) = doc["claims"]
    assert v["verdict"] == "INCONCLUSIVE" and rc == 3 and v["ladder"]["stopped"] == "budget"
    assert v["ladder"]["converged"] is False and "budget" in v["ladder"]["not_converged"]
    assert v["rule"] == "attack_failure" and "did not converge" in v["reason"]  # the first rule decides; all named
    assert "NOT converged at this ε" in text


def test_settings_come_from_the_claim_file_and_the_command_line() -> None:
    from engine.claims.settings import settings

    cf = parse_claim_file("c.yaml", _doc(tolerance=0.01, resolution=0.05))
    st = settings(cf, {})
    assert (st.tolerance, st.resolution, st.budget, st.ladder_evals) == (0.01, 0.05, 1.0, 50_000)
    st = settings(cf, {"tolerance": "0", "ladder_budget": "2000", "budget": "0.5"})
    assert (st.tolerance, st.ladder_evals, st.budget) == (0.0, 2000, 0.5) and st.rule().tolerance == 0.0
    assert not st.rule(upper_bound=False).upper_bound
    for over, needle in (({"tolerance": "0.5"}, "tolerance='0.5' must be a fraction in [0, 0.5)"),
                         ({"tolerance": "x"}, "tolerance='x'"), ({"ladder_budget": "-1"}, "ladder_budget='-1'"),
                         ({"ladder_budget": "lots"}, "model evaluations per sample")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            settings(cf, over)
    with pytest.raises(ConfigError, match=r"tolerance=0\.6 must be a fraction"):
        parse_claim_file("c.yaml", _doc(tolerance=0.6))
