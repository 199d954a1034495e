"""Sanity flags: signs that an evaluation is broken (weak attacks, gradient masking, wrong set-up) rather than robust.

Three kinds of check, all pure (no I/O):

* ``probe_model`` looks at the model itself on a few clean samples: zero or NaN
  input gradients (zero too when the forward pass breaks the autograd graph),
  probabilities instead of logits, a randomised forward pass attacked without EOT.
* ``result_flags`` looks at the per-sample result table: accuracy that rises with
  ε, an unbounded ε that does not bring accuracy down to chance, a black-box
  attack breaking samples that every white-box attack left intact. Each of these
  could mean "the attack was weak" or "the model defeats the attack"; before
  accusing the model, the flagged samples are re-attacked by a strong white-box
  attack (``confirm``, see :mod:`engine.sanity.confirm`). Samples it breaks give a
  weak-evaluation finding; only samples that survive it can give a masking one.
* ``clean_accuracy_flags``: clean accuracy at or near chance (a broken set-up).

Every flag carries a ``verdict`` saying which of these it is. The thresholds and
their reasoning are in docs/sanity.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import torch

from engine.perturbations.attacks import FGSM, PGD
from engine.perturbations.base import Perturbation
from engine.perturbations.suite import AttackSuite, input_gradient
from engine.sanity.confirm import Confirmation, ConfirmFn

# L∞ radius at which any image can be turned into mid-grey: an attack there must reach chance level.
UNBOUNDED_LINF = 0.5
# AutoAttack's check_square_sr: Square may lower its strong white-box ensemble's robust accuracy by ≤ 0.2 pp.
BLACK_BOX_RATE = 0.002
# Clean accuracy "near chance": below chance + 10 % of the way to perfect, or not above chance by a
# one-sided binomial test at this level.
CHANCE_GAP = 0.10
CHANCE_ALPHA = 0.01

# What a flag means (Flag.verdict).
WEAK = "weak_evaluation"  # the attacks were too weak: accuracy is optimistic, the model is not accused
MASKED = "model_defeats_evaluation"  # the model resists the evaluation itself (masking, obfuscation)
SETUP = "broken_setup"  # the model or data are wired wrongly (softmax output, chance-level clean accuracy)
UNCONFIRMED = "unconfirmed"  # either of the first two; no confirmation attack was available

IDS_SHOWN = 10  # sample ids quoted in a message (all of them are in the details)


@dataclass(frozen=True)
class Flag:
    """One finding: which check, on which model (and perturbation), what it found and what it means."""

    check: str
    model: str
    perturbation: str | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def probe_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, model_name: str,
                attacks_eot: Mapping[str, int]) -> list[Flag]:
    """Gradient, output-range and randomness checks on the clean batch ``x``.

    ``attacks_eot`` maps each attack perturbation run on this model to its EOT
    sample count (1 = no EOT).
    """
    flags: list[Flag] = []
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        # a forward pass that breaks the autograd graph (PIL, numpy, no_grad pre-processing) has zero gradients
        grad = input_gradient(_margin(logits, y).sum(), xg)
    flat = grad.reshape(len(x), -1)
    nan = int((~torch.isfinite(flat)).any(dim=1).sum())
    zero = int((flat.abs().sum(dim=1) == 0).sum())
    broken = not logits.requires_grad
    if nan or zero:
        how = ("its forward pass returns logits with no gradient path to the input at all (pre-processing "
               "through PIL, numpy or torch.no_grad breaks the autograd graph)" if broken else
               "it is non-differentiable or masks its gradients there")
        flags.append(Flag(
            "gradients", model_name, None,
            f"{zero} of {len(x)} samples have an all-zero and {nan} a NaN/inf input gradient (of the logit margin), "
            f"measured on the model itself: {how}, so gradient attacks cannot work on it and their accuracy "
            "overestimates robustness (the model defeats the evaluation); use black-box or adaptive attacks "
            "(Square, BPDA through the non-differentiable part)",
            {"zero": zero, "nan": nan, "n": len(x), "graph_broken": broken}, MASKED,
        ))
    with torch.no_grad():
        out = logits.detach()
        if float(out.min()) > -1e-5 and float(out.max()) < 1 + 1e-5 and bool(
                ((out.sum(dim=1) - 1).abs() < 1e-4).all()):
            flags.append(Flag(
                "probability_output", model_name, None,
                "the model outputs probabilities (rows in [0, 1] summing to 1), not logits: losses and margins "
                "saturate and attacks weaken, so attack accuracies are optimistic; remove the final softmax",
                verdict=SETUP,
            ))
        again = model(x)
    diff = float((again - out).abs().max())
    if diff > 1e-5:
        no_eot = sorted(p for p, k in attacks_eot.items() if k <= 1)
        if no_eot:
            flags.append(Flag(
                "randomised_without_eot", model_name, None,
                f"two forward passes on the same inputs differ (max |Δlogit| = {diff:.3g}) and these attacks "
                f"use no EOT: {', '.join(no_eot)}; their accuracy is optimistic for a randomised model (the "
                f"evaluation is weak for it). Use an EOT attack (autoattack_rand_linf / _l2, the original "
                f"AutoAttack's suite for randomised models, eot_pgd_linf, or APGD with eot: 20)",
                {"max_logit_diff": diff, "perturbations": no_eot}, WEAK,
            ))
    return flags


def _tolerance(n: int) -> int:
    """Samples of slack for count comparisons: 1 % of the samples, at least one."""
    return max(1, math.ceil(0.01 * n))


def _ids(ids: list[int] | tuple[int, ...]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:IDS_SHOWN])
    return f"[{shown}{', …' if len(ids) > IDS_SHOWN else ''}]"


def describe_attack(pert: Perturbation | None, name: str) -> str:
    """A short, strength-revealing label: ``pgd_linf (PGD-20)``, ``aa (APGD-CE/SQUARE)``."""
    if isinstance(pert, PGD):
        extra = f", {pert.restarts} restarts" if pert.restarts > 1 else ""
        return f"{name} (PGD-{pert.steps}{extra})"
    if isinstance(pert, FGSM):
        return f"{name} (FGSM)"
    if isinstance(pert, AttackSuite):
        return f"{name} ({'/'.join(a.name.upper() for a in pert.attacks)})"
    return name


def result_flags(table: pa.Table, perts: Mapping[str, Perturbation], confirm: ConfirmFn | None = None) -> list[Flag]:
    """Flags computed from the per-sample rows of attack perturbations (``family == 'attack'``).

    ``perts`` (name → perturbation) says which attack in a row was white-box or
    black-box. ``confirm`` (see :class:`engine.sanity.confirm.SweepConfirmer`)
    re-attacks flagged samples with a strong white-box attack before a flag
    accuses the model; without it those findings are raised as ``*_unconfirmed``.
    """
    rows = [r for r in table.select(["model", "perturbation", "family", "norm", "level", "sample_id", "label",
                                     "correct", "broken_by"]).to_pylist() if r["family"] == "attack"]
    return [*_monotonic(rows, confirm), *_unbounded(rows, confirm), *_black_box(rows, perts, confirm)]


def _confirmed(confirm: ConfirmFn | None, model: str, norm: str | None, level: float,
               ids: list[int]) -> Confirmation | None:
    if confirm is None or norm is None or not ids:
        return None
    return confirm(model, norm, level, ids)


# -- accuracy rising with ε -------------------------------------------------------------------------------


def _monotonic(rows: list[dict[str, Any]], confirm: ConfirmFn | None) -> list[Flag]:
    by: dict[tuple[str, str], dict[float, dict[int, bool]]] = defaultdict(lambda: defaultdict(dict))
    norms: dict[tuple[str, str], str | None] = {}
    for r in rows:
        by[(r["model"], r["perturbation"])][r["level"]][r["sample_id"]] = bool(r["correct"])
        norms[(r["model"], r["perturbation"])] = r["norm"]
    flags = []
    for (model, pert), by_level in by.items():
        lowest, at = None, 0.0
        for level in sorted(by_level):
            cur = by_level[level]
            k, n = sum(cur.values()), len(cur)
            if lowest is not None and k > lowest + _tolerance(n):
                low = by_level[at]
                cand = sorted(s for s, ok in cur.items() if ok and not low.get(s, True))
                found = {"level": level, "correct": k, "lower_level": at, "lower_correct": lowest, "n": n,
                         "regressed_ids": cand}
                c = _confirmed(confirm, model, norms[(model, pert)], level, cand)
                flags += _monotonic_verdicts(model, pert, found, c)
                break
            if lowest is None or k < lowest:
                lowest, at = k, level
    return flags


def _monotonic_verdicts(model: str, pert: str, found: dict[str, Any], c: Confirmation | None) -> list[Flag]:
    level, at, n = found["level"], found["lower_level"], found["n"]
    what = (f"accuracy rises with ε for {pert}: {found['correct']}/{n} correct at ε={level:g} but "
            f"{found['lower_correct']}/{n} at ε={at:g} (a larger ball contains the smaller one)")
    if c is None:
        return [Flag("non_monotonic_unconfirmed", model, pert,
                     f"{what}; not confirmed by a strong attack: the attack is weak at larger ε or the model "
                     "masks its gradients", found, UNCONFIRMED)]
    details = {**found, "confirmation": c.as_details()}
    flags = []
    if c.broken:
        flags.append(Flag(
            "non_monotonic_attack_weak", model, pert,
            f"{what}; a strong white-box attack ({c.attack}) breaks {len(c.broken)} of the "
            f"{len(c.sample_ids)} samples {pert} broke at ε={at:g} but not at ε={level:g} (ids {_ids(c.broken)}): "
            f"the attack is weak or ill-tuned at larger ε (step size, too few steps), not the model; its accuracy "
            f"at ε={level:g} is optimistic. Reuse examples across ε (PGD, suites do) or use more steps",
            details, WEAK))
    if len(c.survived) > _tolerance(n):
        flags.append(Flag(
            "non_monotonic", model, pert,
            f"{what}; {len(c.survived)} samples have a known adversarial example within ε={level:g} (the sweep's "
            f"own, from ε={at:g}) yet a strong white-box attack ({c.attack}) fails on them there "
            f"(ids {_ids(c.survived)}): the model defeats gradient attacks (masking or obfuscated gradients)",
            details, MASKED))
    return flags


# -- unbounded ε ------------------------------------------------------------------------------------------


def _unbounded(rows: list[dict[str, Any]], confirm: ConfirmFn | None) -> list[Flag]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["norm"] == "linf" and r["level"] >= UNBOUNDED_LINF:
            groups[(r["model"], r["perturbation"], r["level"])].append(r)
    flags = []
    for (model, pert, level), rs in groups.items():
        n = len(rs)
        labels: dict[int, int] = defaultdict(int)
        for r in rs:
            labels[r["label"]] += 1
        chance = max(labels.values())  # the best constant classifier on these samples
        correct_ids = sorted(r["sample_id"] for r in rs if r["correct"])
        if len(correct_ids) <= chance:
            continue
        found = {"level": level, "correct": len(correct_ids), "chance": chance, "n": n}
        what = (f"at L∞ ε={level:g} every image can be made mid-grey, yet {len(correct_ids)}/{n} stay correct "
                f"under {pert} (chance: {chance}/{n})")
        c = _confirmed(confirm, model, "linf", level, correct_ids)
        if c is None:
            flags.append(Flag("unbounded_eps_above_chance_unconfirmed", model, pert,
                              f"{what}; not confirmed by a strong attack: the attack is too weak or the model "
                              "masks its gradients", found, UNCONFIRMED))
            continue
        details = {**found, "confirmation": c.as_details()}
        if c.broken:
            flags.append(Flag(
                "unbounded_eps_attack_weak", model, pert,
                f"{what}; a strong white-box attack ({c.attack}) breaks {len(c.broken)} of them, leaving "
                f"{len(c.survived)}/{n}: {pert} is too weak (not the model) and its accuracy is optimistic; "
                "use more steps/restarts or an AutoAttack suite", details, WEAK))
        if len(c.survived) > chance:
            flags.append(Flag(
                "unbounded_eps_above_chance", model, pert,
                f"{what}; {len(c.survived)}/{n} still resist a strong white-box attack ({c.attack}): the "
                "attacks cannot follow the model's gradients (masking or obfuscated gradients)", details, MASKED))
    return flags


# -- black-box beating white-box --------------------------------------------------------------------------

_BBKey = tuple[str, str | None, float]


def _black_box_state(rows: list[dict[str, Any]], perts: Mapping[str, Perturbation],
                     ) -> tuple[dict[_BBKey, dict[int, list[bool]]], dict[_BBKey, set[str]], dict[_BBKey, set[str]]]:
    """Per (model, norm, ε) and sample: [a white-box attack ran, one broke it, a black-box one broke it]."""
    seen: dict[_BBKey, dict[int, list[bool]]] = defaultdict(dict)
    black: dict[_BBKey, set[str]] = defaultdict(set)
    white: dict[_BBKey, set[str]] = defaultdict(set)
    for r in rows:
        if r["level"] == 0:
            continue
        pert = perts.get(r["perturbation"])
        key = (r["model"], r["norm"], r["level"])
        state = seen[key].setdefault(r["sample_id"], [False, False, False])
        if pert is not None and "white-box" in pert.tags:
            state[0] = True
            white[key].add(r["perturbation"])
        if r["correct"] or pert is None:
            continue
        threat = pert.threat_of(r["broken_by"])
        if threat == "black-box":
            state[2] = True
            black[key].add(r["perturbation"])
        elif threat == "white-box":
            state[1] = True
    return seen, black, white


def _black_box(rows: list[dict[str, Any]], perts: Mapping[str, Perturbation],
               confirm: ConfirmFn | None) -> list[Flag]:
    seen, black, white = _black_box_state(rows, perts)
    flags = []
    for key, samples in seen.items():
        only = sorted(s for s, (ran, wb, bb) in samples.items() if ran and bb and not wb)
        if not only:
            continue
        model, norm, level = key
        n = len(samples)
        found = {"level": level, "norm": norm, "only_black_box": len(only), "n": n, "only_black_box_ids": only,
                 "white_box": sorted(white[key]), "black_box": sorted(black[key])}
        wb = ", ".join(describe_attack(perts.get(p), p) for p in sorted(white[key]))
        bb = ", ".join(sorted(black[key]))
        what = f"black-box attacks ({bb}) broke {len(only)}/{n} samples at {norm} ε={level:g} that every " \
               f"white-box attack of the sweep ({wb}) left correct"
        c = _confirmed(confirm, model, norm, level, only)
        if c is None:
            if len(only) > BLACK_BOX_RATE * n:
                flags.append(Flag("black_box_beats_white_box_unconfirmed", model, bb,
                                  f"{what}; not confirmed by a strong white-box attack: the white-box attack is "
                                  "too weak or the gradients are masked", found, UNCONFIRMED))
            continue
        flags += _black_box_verdicts(model, what, wb, bb, {**found, "confirmation": c.as_details()}, c)
    return flags


def _black_box_verdicts(model: str, what: str, wb: str, bb: str, details: dict[str, Any],
                        c: Confirmation) -> list[Flag]:
    n, norm, level = details["n"], details["norm"], details["level"]
    flags = []
    if c.broken:
        flags.append(Flag(
            "white_box_too_weak", model, ", ".join(details["white_box"]),
            f"the white-box attack in this sweep was too weak ({wb} missed {len(c.broken)} sample(s) at {norm} "
            f"ε={level:g} that {bb} broke and {c.attack} also finds: ids {_ids(c.broken)}); its accuracy is "
            f"optimistic by at least {len(c.broken)}/{n}. Not a sign of masking: use more steps and restarts "
            f"(pgd: steps: 100, restarts: 5) or an AutoAttack suite (autoattack_standard_{norm})",
            details, WEAK))
    if len(c.survived) > max(1.0, BLACK_BOX_RATE * n):
        flags.append(Flag(
            "black_box_beats_white_box", model, bb,
            f"{what}, and {len(c.survived)} of them also survive a strong white-box attack ({c.attack}; ids "
            f"{_ids(c.survived)}): the gradients are masked or obfuscated (the model defeats gradient attacks; "
            "white-box accuracy means little for it, trust black-box and adaptive attacks)",
            details, MASKED))
    return flags


# -- clean accuracy at chance -----------------------------------------------------------------------------


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), exact (log-space terms)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clean_accuracy_flags(table: pa.Table, num_classes: int) -> list[Flag]:
    """Clean accuracy at or near chance (1/num_classes): wrong normalisation, class order or dataset.

    Reads the ``clean`` perturbation's rows, else the ε = 0 rows of the attacks
    (one per sample). "Near chance" (docs/sanity.md): accuracy below chance plus
    ``CHANCE_GAP`` of the way to 100 %, or not above chance by a one-sided exact
    binomial test at ``CHANCE_ALPHA`` (skipped when even a perfect score could not pass it).
    """
    if num_classes < 2:
        return []
    rows = table.select(["model", "perturbation", "family", "level", "sample_id", "correct"]).to_pylist()
    per: dict[str, dict[str, dict[int, bool]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["family"] == "clean" or (r["family"] == "attack" and r["level"] == 0):
            source = "clean" if r["family"] == "clean" else r["perturbation"]
            per[r["model"]][source][r["sample_id"]] = bool(r["correct"])
    chance = 1.0 / num_classes
    flags = []
    for model, sources in per.items():
        source = "clean" if "clean" in sources else sorted(sources)[0]
        k, n = sum(sources[source].values()), len(sources[source])
        p_value = binomial_sf(k, n, chance)
        testable = chance ** n <= CHANCE_ALPHA
        near = k / n < chance + CHANCE_GAP * (1 - chance)
        if near or (testable and p_value > CHANCE_ALPHA):
            flags.append(Flag(
                "clean_accuracy_at_chance", model, source,
                f"CLEAN ACCURACY IS AT CHANCE: {k}/{n} = {k / n:.1%} correct, chance is 1/{num_classes} = "
                f"{chance:.1%} (one-sided binomial p = {p_value:.3g}); every number of this model is "
                "meaningless. Check the input normalisation (model.<name>.mean/std), the class order of the "
                "checkpoint and that the dataset is the one the model was trained on",
                {"correct": k, "n": n, "num_classes": num_classes, "chance": chance, "p_value": p_value,
                 "threshold": chance + CHANCE_GAP * (1 - chance), "alpha": CHANCE_ALPHA}, SETUP))
    return flags
