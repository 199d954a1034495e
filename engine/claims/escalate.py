"""The escalation ladder's steps: which families of stronger evaluation a claim needs (EOT, BPDA, transfer from a
surrogate, AutoAttack plus, Square with a larger budget), their rungs from weaker to stronger, their perturbation
configs, and what a step costs.

A family is chosen for a reason (an indicator that fired, a thin margin, a
declared defence). Each rung is an ordinary perturbation config, so it runs
through the same planner, evaluator, verification and result store as the base
run; engine.claims.ladder decides which rung runs next, and when to stop.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.claims.build import compose, scale_budget

SQUARE_BUDGET = 4  # the first escalated Square gets this many times the base suite's query budget
SQUARE_TOP = 10  # ... and its last rung this many times
EOT_SAMPLES = 20  # AutoAttack rand's EOT count, also used inside BPDA for a randomised model
EOT_TOP = 50  # EOT count of the last EOT rung
RESCORE = 20  # classifications per example on a randomised model (AutoAttack pull request #105's eval_iter)
ORDER = ("eot", "bpda", "transfer", "plus", "square")  # ties in cost: targeted and cheap first
RUNGS = {"eot": 3, "bpda": 2, "transfer": 1, "plus": 2, "square": 2}
WB = ["white-box", "AML.T0043.000"]
APGD_TARGET = "engine.perturbations.autoattack.APGD"

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
    """One rung of one escalation family for one norm: its config and its estimated cost per sample attacked."""

    kind: str
    perturbation: str
    config: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    rung: int = 1
    cost: int = 0  # model evaluations (forward or backward passes) per sample attacked, at most


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


def _apgd(name: str, loss: str, n_iter: int = 100, restarts: int = 1, eot: int = 1) -> dict[str, Any]:
    m: dict[str, Any] = {"_target_": APGD_TARGET, "name": name, "loss": loss, "n_iter": n_iter,
                         "n_restarts": restarts, "rho": 0.75, "tags": list(WB)}
    if loss == "dlr-targeted":
        m.update(n_target_classes=9, target_batch=9)
    if eot > 1:
        m["eot"] = eot
    return m


def _suite(norm: str, eps: list[float], members: list[dict[str, Any]], tags: list[str]) -> dict[str, Any]:
    return {"_target_": "engine.perturbations.suite.AttackSuite", "norm": norm, "eps": eps, "attacks": members,
            "tags": tags}


def _eot(norm: str, eps: list[float], rung: int) -> dict[str, Any]:
    """Rung 1: AutoAttack rand (APGD-CE, APGD-DLR, EOT 20); 2: with 3 restarts; 3: with 3 restarts and EOT 50.
    (APGD-T under EOT 20 broke 1 of 34 samples left by rung 2 on the σ = 0.1 noisy digits model at twice the cost
    of rung 3, which broke as many: docs/BENCHMARKS.md, so it is not a rung.)"""
    if rung == 1:
        cfg = compose([f"perturbation=[autoattack_rand_{norm}]"])["perturbation"][f"autoattack_rand_{norm}"]
        cfg["eps"] = eps
        return dict(cfg)
    tags = [*WB, "AML.T0015"]
    if rung == 2:
        return _suite(norm, eps, [_apgd("apgd-ce", "ce", restarts=3, eot=EOT_SAMPLES),
                                  _apgd("apgd-dlr", "dlr", restarts=3, eot=EOT_SAMPLES)], tags)
    return _suite(norm, eps, [_apgd("apgd-ce", "ce", restarts=3, eot=EOT_TOP),
                              _apgd("apgd-dlr", "dlr", restarts=3, eot=EOT_TOP)], tags)


def _base_apgd(base_suite: Mapping[str, Any], budget: float) -> list[dict[str, Any]]:
    apgd = [dict(m) for m in base_suite["attacks"] if str(m.get("_target_", "")).endswith(".APGD")]
    return apgd or [scale_budget(_apgd("apgd-ce", "ce"), budget)]


def _wrapped(base_suite: Mapping[str, Any], eps: list[float], at: str, mode: str, eot: int, budget: float,
             rung: int) -> dict[str, Any]:
    """The base suite's APGD members (rung 2 of BPDA: APGD-CE and APGD-DLR with 5 restarts, then APGD-T) through a
    gradient view of the model at ``at`` (engine.perturbations.adaptive); EOT ``eot`` inside for a randomised
    model."""
    inner = _base_apgd(base_suite, budget) if rung == 1 else [
        scale_budget(m, budget) for m in (_apgd("apgd-ce", "ce", restarts=5), _apgd("apgd-dlr", "dlr", restarts=5),
                                          _apgd("apgd-t", "dlr-targeted"))]
    members = []
    tags = WB if mode == "bpda" else ["white-box", "AML.T0043.002"]
    for m in inner:
        m = copy.deepcopy(m)
        if eot > 1:
            m["eot"] = eot
        members.append({"_target_": "engine.perturbations.adaptive.Adaptive", "name": f"{mode}-{m['name']}",
                        "member": m, "at": at, "mode": mode, "tags": list(tags)})
    return _suite(str(base_suite["norm"]), eps, members, [*tags, "AML.T0015"])


def _plus(base_suite: Mapping[str, Any], norm: str, eps: list[float], budget: float, rung: int) -> dict[str, Any]:
    """Rung 1: AutoAttack plus without the members the base run already ran with the same parameters; rung 2:
    APGD-CE and APGD-DLR with 1,000 iterations and 5 restarts."""
    if rung == 2:
        return _suite(norm, eps, [_apgd("apgd-ce", "ce", n_iter=1000, restarts=5),
                                  _apgd("apgd-dlr", "dlr", n_iter=1000, restarts=5)], [*WB, "AML.T0015"])
    plus = compose([f"perturbation=[autoattack_plus_{norm}]"])["perturbation"][f"autoattack_plus_{norm}"]
    plus = scale_budget(plus, budget)  # as the base suite was, so identical members still compare equal
    plus["attacks"] = [m for m in plus["attacks"] if m not in base_suite["attacks"]]
    plus["eps"] = eps
    return dict(plus)


def _square(base_suite: Mapping[str, Any], norm: str, eps: list[float], rung: int) -> dict[str, Any]:
    """Square with SQUARE_BUDGET (rung 1) or SQUARE_TOP (rung 2) times the base suite's query budget."""
    sq = compose([f"perturbation=[square_{norm}]"])["perturbation"][f"square_{norm}"]
    base_q = max([int(m.get("n_queries", 5000)) for m in base_suite["attacks"] if "n_queries" in m] or [5000])
    q = (SQUARE_BUDGET if rung == 1 else SQUARE_TOP) * base_q
    sq["attacks"][0]["n_queries"] = q
    sq["attacks"][0]["name"] = f"square-{q}"
    sq["eps"] = eps
    return dict(sq)


def perturbation_name(kind: str, norm: str, rung: int = 1) -> str:
    """``escalation_<kind>_<norm>`` for the first rung, ``escalation_<kind><rung>_<norm>`` above it."""
    return f"escalation_{kind}{'' if rung == 1 else rung}_{norm}"


def build(kind: str, base_suite: Mapping[str, Any], norm: str, eps: list[float], at: str | None,
          randomised: bool, budget: float = 1.0, rung: int = 1, num_classes: int = 10) -> Escalation:
    """Rung ``rung`` of escalation ``kind`` for ``norm`` at ``eps``; ``budget`` < 1 scales the iterations and
    queries of the suites composed here (``base_suite`` is already scaled). On a randomised model every example
    is classified RESCORE times (engine.perturbations.suite)."""
    if not 1 <= rung <= RUNGS.get(kind, 0):
        raise ValueError(f"{kind} has no rung {rung}")
    if kind == "eot":
        cfg = scale_budget(_eot(norm, eps, rung), budget)
    elif kind in ("bpda", "transfer"):
        assert at is not None
        cfg = _wrapped(base_suite, eps, at, kind, EOT_SAMPLES if randomised else 1, budget, rung)
    elif kind == "plus":
        cfg = _plus(base_suite, norm, eps, budget, rung)
        cfg = scale_budget(cfg, budget) if rung > 1 else cfg
    else:
        cfg = _square(base_suite, norm, eps, rung)  # a multiple of the (already scaled) base suite's queries
    if randomised:
        cfg["rescore"] = RESCORE
    return Escalation(kind, perturbation_name(kind, norm, rung), dict(cfg), rung=rung,
                      cost=estimate_cost(cfg, num_classes))


def estimate_cost(cfg: Mapping[str, Any], num_classes: int) -> int:
    """Most model evaluations (forward or backward passes, as the result rows count them) one sample can cost in
    suite ``cfg``: at each of its ε, every iteration, restart, EOT draw and target class of every member and the
    re-scorings of each example; the clean classification once."""
    rescore = int(cfg.get("rescore", 1))
    per_eps = sum(_member_cost(m, num_classes) + rescore for m in cfg.get("attacks", []))
    return max(1, len(cfg.get("eps", [])) or 1) * per_eps + rescore


def _member_cost(m: Mapping[str, Any], k: int) -> int:
    if isinstance(m.get("member"), Mapping):
        return _member_cost(m["member"], k)
    target = str(m.get("_target_", ""))
    restarts = int(m.get("n_restarts", 1))
    if "n_queries" in m:
        return (int(m["n_queries"]) + 1) * restarts
    targets = min(int(m.get("n_target_classes", 9)), k - 1)
    steps = (int(m.get("n_iter", m.get("steps", 100))) + 1) * restarts * int(m.get("eot", 1))
    if target.endswith(".APGD"):
        return steps * targets + 1 if m.get("loss") == "dlr-targeted" else steps
    if target.endswith(".FABTargeted"):
        return 2 * steps * targets + 1  # a gradient and a forward pass per step and target
    if target.endswith(".FAB"):
        return steps * (k + 1)  # the Jacobian (one gradient per class) and a forward pass per step
    return 2 * steps
