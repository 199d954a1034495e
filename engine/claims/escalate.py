"""Which stronger evaluations a claim needs, and their perturbation configs (AutoAttack plus, EOT, BPDA,
transfer from a surrogate, Square with a larger budget).

An escalation is chosen for a reason (an indicator that fired, a thin margin, a
declared defence) and is an ordinary perturbation config, so it runs through the
same planner, evaluator, verification and result store as the base run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from engine.claims.build import compose, scale_budget

SQUARE_BUDGET = 4  # the escalated Square gets this many times the base suite's query budget
EOT_SAMPLES = 20  # AutoAttack rand's EOT count, also used inside BPDA for a randomised model
ORDER = ("eot", "bpda", "transfer", "plus", "square")  # cheap and targeted first; each sees what is left

# Which escalations address which indicator (docs/claims.md): an indicator is cleared when they ran.
ADDRESSED_BY: dict[str, tuple[str, ...]] = {
    "randomised_without_eot": ("eot",),
    "randomised": ("eot",),
    "gradients": ("bpda",),
    "zero_gradients_path": ("bpda",),
    "black_box_beats_white_box": ("bpda",),
    "silent_success": ("plus",),
    "non_converging_loss": ("plus",),
    "bad_initialisation": ("plus",),
    "non_monotonic": ("plus",),
    "unbounded_eps_above_chance": ("plus",),
    "thin_margin": ("plus",),
    "probability_output": (),  # needs logits: no attack fixes it
    "transfer_failure": (),  # no faithful surrogate: a hand-written adaptive attack is needed
}
MASKING = ("gradients", "zero_gradients_path", "black_box_beats_white_box")
# On a randomised model these are what the randomness does to a plain attack: EOT clears them.
RANDOMNESS = ("silent_success", "bad_initialisation", "non_converging_loss")


@dataclass
class Escalation:
    """One escalation for one norm: its name, why it runs, and its perturbation config."""

    kind: str
    perturbation: str
    config: dict[str, Any]
    reasons: list[str] = field(default_factory=list)


def addressed_by(check: str) -> tuple[str, ...]:
    """Escalations that clear ``check``; an unknown sanity check (added later) is addressed by ``plus``."""
    return ADDRESSED_BY.get(check, ("plus",))


def choose(fired: list[str], randomised: bool, at: str | None, gradients_alive: bool = False,
           ) -> dict[str, list[str]]:
    """Escalation kind → the reasons it runs, from the fired checks, randomness, a located pre-processing and
    whether the model's input gradients are alive."""
    out: dict[str, list[str]] = {}
    for check in fired:
        kinds = list(addressed_by(check))
        if check in RANDOMNESS and randomised:  # noise, not a weak optimiser: EOT is the remedy, not restarts
            kinds = ["eot"]
        if check in MASKING:
            # a located pre-processing: attack through it; live gradients (nothing to bypass): the white-box
            # attack may just be weak, so stronger white-box (plus) and black-box (square) attacks
            kinds = ["bpda", "transfer", "square"] if at else ["square"]
            if not at and gradients_alive:  # nothing to bypass: a weak (or, randomised, a noisy) white-box attack
                kinds = ["eot"] if randomised else ["plus", "square"]
        for k in kinds:
            out.setdefault(k, []).append(check)
    if randomised:
        out.setdefault("eot", []).append("randomised forward pass")
    if at and "bpda" not in out:
        out.setdefault("bpda", []).append(f"declared non-differentiable pre-processing before {at!r}")
        out.setdefault("transfer", []).append(f"declared non-differentiable pre-processing before {at!r}")
    return {k: out[k] for k in ORDER if k in out}


def _apgd_members(base_suite: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    apgd = [m for m in base_suite["attacks"] if str(m.get("_target_", "")).endswith(".APGD")]
    return apgd or [scale_budget({"_target_": "engine.perturbations.autoattack.APGD", "name": "apgd-ce",
                                  "loss": "ce", "n_iter": 100, "tags": ["white-box", "AML.T0043.000"]}, budget)]


def _wrapped(base_suite: dict[str, Any], eps: list[float], at: str, mode: str, eot: int,
             budget: float) -> dict[str, Any]:
    members = []
    for m in _apgd_members(base_suite, budget):
        inner = copy.deepcopy(m)
        if eot > 1:
            inner["eot"] = eot
        tags = ["white-box", "AML.T0043.000"] if mode == "bpda" else ["white-box", "AML.T0043.002"]
        members.append({"_target_": "engine.perturbations.adaptive.Adaptive", "name": f"{mode}-{m['name']}",
                        "member": inner, "at": at, "mode": mode, "tags": tags})
    tags = ["white-box", "AML.T0043.000" if mode == "bpda" else "AML.T0043.002", "AML.T0015"]
    return {"_target_": "engine.perturbations.suite.AttackSuite", "norm": base_suite["norm"], "eps": eps,
            "attacks": members, "tags": tags}


def _plus(base_suite: dict[str, Any], norm: str, eps: list[float], budget: float) -> dict[str, Any]:
    """AutoAttack plus without the members the base run already ran with the same parameters."""
    plus = compose([f"perturbation=[autoattack_plus_{norm}]"])["perturbation"][f"autoattack_plus_{norm}"]
    plus = scale_budget(plus, budget)  # as the base suite was, so identical members still compare equal
    plus["attacks"] = [m for m in plus["attacks"] if m not in base_suite["attacks"]]
    plus["eps"] = eps
    return dict(plus)


def _square(base_suite: dict[str, Any], norm: str, eps: list[float]) -> dict[str, Any]:
    sq = compose([f"perturbation=[square_{norm}]"])["perturbation"][f"square_{norm}"]
    base_q = max([int(m.get("n_queries", 5000)) for m in base_suite["attacks"] if "n_queries" in m] or [5000])
    sq["attacks"][0]["n_queries"] = SQUARE_BUDGET * base_q
    sq["attacks"][0]["name"] = f"square-{SQUARE_BUDGET * base_q}"
    sq["eps"] = eps
    return dict(sq)


def build(kind: str, base_suite: dict[str, Any], norm: str, eps: list[float], at: str | None,
          randomised: bool, budget: float = 1.0) -> Escalation:
    """The perturbation config of escalation ``kind`` for ``norm`` at ``eps``; ``budget`` < 1 scales the
    iterations and queries of the suites composed here (``base_suite`` is already scaled)."""
    name = f"escalation_{kind}_{norm}"
    if kind == "eot":
        cfg = compose([f"perturbation=[autoattack_rand_{norm}]"])["perturbation"][f"autoattack_rand_{norm}"]
        cfg = scale_budget(cfg, budget)
        cfg["eps"] = eps
    elif kind in ("bpda", "transfer"):
        assert at is not None
        cfg = _wrapped(base_suite, eps, at, kind, EOT_SAMPLES if randomised else 1, budget)
    elif kind == "plus":
        cfg = _plus(base_suite, norm, eps, budget)
    elif kind == "square":
        cfg = _square(base_suite, norm, eps)
    else:
        raise ValueError(kind)
    return Escalation(kind, name, dict(cfg))
