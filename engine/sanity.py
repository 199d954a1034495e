"""Sanity flags: signs that an evaluation is broken (gradient masking, wrong outputs) rather than robust.

Two kinds of check, both pure (no I/O):

* ``probe_model`` looks at the model itself on a few clean samples: zero or NaN
  input gradients, probabilities instead of logits, a randomised forward pass
  attacked without EOT.
* ``result_flags`` looks at the per-sample result table: accuracy that rises with
  ε, an unbounded ε that does not bring accuracy down to chance, a black-box
  attack breaking samples that every white-box attack left intact.

The thresholds are documented in docs/sanity.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import torch

from engine.perturbations.base import Perturbation

# L∞ radius at which any image can be turned into mid-grey: an attack there must reach chance level.
UNBOUNDED_LINF = 0.5


@dataclass(frozen=True)
class Flag:
    """One finding: which check, on which model (and perturbation), and why."""

    check: str
    model: str
    perturbation: str | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)

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
        (grad,) = torch.autograd.grad(_margin(logits, y).sum(), [xg], allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    flat = grad.reshape(len(x), -1)
    nan = int((~torch.isfinite(flat)).any(dim=1).sum())
    zero = int((flat.abs().sum(dim=1) == 0).sum())
    if nan or zero:
        flags.append(Flag(
            "gradients", model_name, None,
            f"{zero} of {len(x)} samples have an all-zero and {nan} a NaN/inf input gradient (of the logit margin): "
            "a non-differentiable or masked model; gradient attacks will overestimate robustness",
            {"zero": zero, "nan": nan, "n": len(x)},
        ))
    with torch.no_grad():
        out = logits.detach()
        if float(out.min()) > -1e-5 and float(out.max()) < 1 + 1e-5 and bool(
                ((out.sum(dim=1) - 1).abs() < 1e-4).all()):
            flags.append(Flag(
                "probability_output", model_name, None,
                "the model outputs probabilities (rows in [0, 1] summing to 1), not logits: losses and margins "
                "saturate and attacks weaken; remove the final softmax",
            ))
        again = model(x)
    diff = float((again - out).abs().max())
    if diff > 1e-5:
        no_eot = sorted(p for p, k in attacks_eot.items() if k <= 1)
        if no_eot:
            flags.append(Flag(
                "randomised_without_eot", model_name, None,
                f"two forward passes on the same inputs differ (max |Δlogit| = {diff:.3g}) and these attacks "
                f"use no EOT: {', '.join(no_eot)}; use an EOT attack (autoattack_rand_linf / _l2, the original "
                f"AutoAttack's suite for randomised models, eot_pgd_linf, or APGD with eot: 20)",
                {"max_logit_diff": diff, "perturbations": no_eot},
            ))
    return flags


def _tolerance(n: int) -> int:
    """Samples of slack for count comparisons: 1 % of the samples, at least one."""
    return max(1, math.ceil(0.01 * n))


def result_flags(table: pa.Table, perts: Mapping[str, Perturbation]) -> list[Flag]:
    """Flags computed from the per-sample rows of attack perturbations (``family == 'attack'``).

    ``perts`` (name → perturbation) says which attack in a row was white-box or black-box.
    """
    rows = [r for r in table.select(["model", "perturbation", "family", "norm", "level", "sample_id", "label",
                                     "correct", "broken_by"]).to_pylist() if r["family"] == "attack"]
    return [*_monotonic(rows), *_unbounded(rows), *_black_box(rows, perts)]


def _monotonic(rows: list[dict[str, Any]]) -> list[Flag]:
    counts: dict[tuple[str, str], dict[float, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        c = counts[(r["model"], r["perturbation"])][r["level"]]
        c[0] += int(r["correct"])
        c[1] += 1
    flags = []
    for (model, pert), by_level in counts.items():
        lowest, at = None, None
        for level in sorted(by_level):
            k, n = by_level[level]
            if lowest is not None and k > lowest + _tolerance(n):
                flags.append(Flag(
                    "non_monotonic", model, pert,
                    f"accuracy rises with ε: {k}/{n} correct at ε={level:g} but {lowest}/{n} at ε={at:g}; "
                    "a larger ball contains the smaller one, so the attack is failing (masking or too few steps)",
                    {"level": level, "correct": k, "lower_level": at, "lower_correct": lowest, "n": n},
                ))
                break
            if lowest is None or k < lowest:
                lowest, at = k, level
    return flags


def _unbounded(rows: list[dict[str, Any]]) -> list[Flag]:
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
        correct = sum(int(r["correct"]) for r in rs)
        if correct > chance:
            flags.append(Flag(
                "unbounded_eps_above_chance", model, pert,
                f"at L∞ ε={level:g} every image can be made mid-grey, yet {correct}/{n} stay correct "
                f"(chance: {chance}/{n}); the attack cannot follow the model's gradients",
                {"level": level, "correct": correct, "chance": chance, "n": n},
            ))
    return flags


def _black_box(rows: list[dict[str, Any]], perts: Mapping[str, Perturbation]) -> list[Flag]:
    # per (model, norm, ε) and sample: [a white-box attack ran, one broke it, a black-box one broke it]
    seen: dict[tuple[str, str | None, float], dict[int, list[bool]]] = defaultdict(dict)
    black_perts: dict[tuple[str, str | None, float], set[str]] = defaultdict(set)
    for r in rows:
        if r["level"] == 0:
            continue
        pert = perts.get(r["perturbation"])
        key = (r["model"], r["norm"], r["level"])
        state = seen[key].setdefault(r["sample_id"], [False, False, False])
        state[0] |= pert is not None and "white-box" in pert.tags
        if r["correct"] or pert is None:
            continue
        threat = pert.threat_of(r["broken_by"])
        if threat == "black-box":
            state[2] = True
            black_perts[key].add(r["perturbation"])
        elif threat == "white-box":
            state[1] = True
    flags = []
    for key, samples in seen.items():
        only_black = sum(1 for ran, wb, bb in samples.values() if ran and bb and not wb)
        n = len(samples)
        # AutoAttack's own check: Square may not lower robust accuracy by more than 0.2 pp
        if only_black and only_black > 0.002 * n:
            model, norm, level = key
            flags.append(Flag(
                "black_box_beats_white_box", model, ", ".join(sorted(black_perts[key])),
                f"black-box attacks broke {only_black}/{n} samples at {norm} ε={level:g} that every white-box "
                "attack left correct: the gradients are masked or obfuscated",
                {"level": level, "norm": norm, "only_black_box": only_black, "n": n},
            ))
    return flags
