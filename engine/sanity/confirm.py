"""Confirm before accusing: re-attack exactly the flagged samples with a strong white-box attack.

A result check in :mod:`engine.sanity.flags` that would accuse the *model* (a black-box
attack beat every white-box one, accuracy rose with ε, an unbounded ε stayed above
chance) first asks :func:`confirm_white_box` whether a strong white-box attack breaks
those samples: APGD-CE with restarts and APGD-T against the most likely other
classes, 100 iterations each (Gauntlet's own AutoAttack members, with the restarts
of AutoAttack's "plus" version). It runs through the real :class:`AttackSuite`, so
every example is checked by the suite and then by :func:`engine.evaluation.checks.verify_batch`
and re-classified before it counts. Samples it breaks mean the sweep's attack was
weak; only samples that survive it can be evidence of masking.

The cost is bounded by the samples passed in and recorded (``grad_evals``,
``queries``) in :class:`Confirmation`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.data import Dataset
from engine.evaluation.checks import check_logits, verify_batch
from engine.perturbations.autoattack import APGD
from engine.perturbations.base import BatchContext
from engine.perturbations.suite import AttackSuite
from engine.remote.api import oracle_of

STRONG_N_ITER = 100  # iterations of each APGD run (the original AutoAttack's)
STRONG_CE_RESTARTS = 5  # APGD-CE random restarts (AutoAttack "plus")
STRONG_TARGETS = 9  # APGD-T target classes (AutoAttack "standard" and "plus")
CONFIRM_NORMS = ("linf", "l2")  # the norms APGD supports
SUITE_NAME = "sanity_confirm"  # seeds the confirmation's random starts apart from the sweep's own attacks


@dataclass(frozen=True)
class Confirmation:
    """What the strong white-box attack did to the samples it was given.

    ``broken_by`` maps each sample id it broke (verified) to the member that broke
    it; ``survived`` are the ids still correctly classified after every member;
    ``clean_wrong`` are ids the model already misclassifies clean (neither).
    """

    attack: str
    norm: str
    eps: float
    sample_ids: tuple[int, ...]
    broken_by: dict[int, str]
    survived: tuple[int, ...]
    clean_wrong: tuple[int, ...] = ()
    grad_evals: int = 0
    queries: int = 0
    members: tuple[str, ...] = field(default_factory=tuple)
    error: str = ""  # why the attack could not run (then every sample counts as surviving it)

    @property
    def broken(self) -> tuple[int, ...]:
        return tuple(sorted(self.broken_by))

    def as_details(self) -> dict[str, Any]:
        """The numbers a flag carries (JSON-friendly)."""
        per_member = {m: sum(1 for b in self.broken_by.values() if b == m) for m in self.members}
        return {
            "attack": self.attack, "norm": self.norm, "eps": self.eps, "attacked": len(self.sample_ids),
            "broken": len(self.broken_by), "survived": len(self.survived), "broken_per_member": per_member,
            "broken_ids": list(self.broken), "survived_ids": list(self.survived),
            "clean_wrong_ids": list(self.clean_wrong), "grad_evals": self.grad_evals, "queries": self.queries,
            **({"error": self.error} if self.error else {}),
        }


# (model name, norm, ε, sample ids) → Confirmation, or None when it cannot be confirmed (unsupported norm)
ConfirmFn = Callable[[str, str, float, Sequence[int]], Confirmation | None]


def strong_suite(norm: str, eps: float, *, n_iter: int = STRONG_N_ITER, ce_restarts: int = STRONG_CE_RESTARTS,
                 n_target_classes: int = STRONG_TARGETS, eot: int = 1) -> AttackSuite:
    """The confirmation attack at one ε: APGD-CE (``ce_restarts`` restarts) then APGD-T, as a cascade."""
    wb = ("white-box",)
    return AttackSuite(name=SUITE_NAME, norm=norm, eps=(float(eps),), tags=wb, attacks=(
        APGD(name="apgd-ce", loss="ce", n_iter=n_iter, n_restarts=ce_restarts, eot=eot, tags=wb),
        APGD(name="apgd-t", loss="dlr-targeted", n_iter=n_iter, n_restarts=1, eot=eot,
             n_target_classes=n_target_classes, target_batch=n_target_classes, tags=wb),
    ))


def describe(suite: AttackSuite) -> str:
    """One line naming the members and their strength, e.g. ``APGD-CE (100 it., 5 restarts) + APGD-T (…)``."""
    parts = []
    for a in suite.attacks:
        if isinstance(a, APGD):
            extra = f"{a.n_target_classes} targets" if a.loss == "dlr-targeted" else f"{a.n_restarts} restarts"
            eot = f", EOT {a.eot}" if a.eot > 1 else ""
            parts.append(f"{a.name.upper()} ({a.n_iter} it., {extra}{eot})")
        else:
            parts.append(a.name)
    return " + ".join(parts)


def confirm_white_box(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sample_ids: Sequence[int], *,
                      norm: str, eps: float, seed: int = 0, suite: AttackSuite | None = None,
                      batch_size: int = 100) -> Confirmation:
    """Attack exactly these samples at ``eps`` with a strong white-box suite and report, per sample, the outcome.

    ``x`` (N×C×H×W in [0, 1], on the model's device), ``y`` and ``sample_ids`` (the
    dataset's stable ids, which seed the random starts) describe the samples.
    ``suite`` defaults to :func:`strong_suite`; it must have the single level ``eps``.
    Every returned example passes ``verify_batch`` and is re-classified by ``model``;
    a sample counts as broken only if that verified example is misclassified.
    """
    suite = suite or strong_suite(norm, eps)
    if tuple(suite.levels) != (float(eps),) or suite.norm != norm:
        raise ValueError(f"confirmation suite must attack {norm} at the single ε={eps:g}, has {suite.levels}")
    ids = [int(i) for i in sample_ids]
    broken_by: dict[int, str] = {}
    survived: list[int] = []
    clean_wrong: list[int] = []
    grads = queries = 0
    for b0 in range(0, len(ids), batch_size):
        xb, yb, idb = x[b0:b0 + batch_size], y[b0:b0 + batch_size], ids[b0:b0 + batch_size]
        with torch.no_grad():
            clean_ok = (model(xb).argmax(1) == yb).cpu().tolist()
        (out,) = list(suite.run(xb, yb, BatchContext(model, seed, torch.tensor(idb, dtype=torch.int64))))
        sizes = verify_batch(suite, out.level, xb, out.x)
        with torch.no_grad():
            logits = model(out.x)
        check_logits(logits, len(yb), int(logits.shape[1]), "model under confirmation", f"{SUITE_NAME} ε={eps:g}")
        wrong = (logits.argmax(1) != yb).cpu().tolist()
        grads += int(out.grad_evals.sum())
        queries += int(out.queries.sum()) + len(idb) * 2  # + the clean pass and the re-classification here
        breakers = out.broken_by or ("",) * len(idb)
        for sid, ok, w, size, who in zip(idb, clean_ok, wrong, sizes.tolist(), breakers, strict=True):
            if not ok:
                clean_wrong.append(sid)
            elif w and size > 0:
                broken_by[sid] = who or "?"
            else:
                survived.append(sid)
    return Confirmation(describe(suite), norm, float(eps), tuple(ids), broken_by, tuple(sorted(survived)),
                        tuple(sorted(clean_wrong)), grads, queries, tuple(a.name for a in suite.attacks))


class SweepConfirmer:
    """A :data:`ConfirmFn` over one sweep's models and data: looks samples up by id and attacks them.

    ``model_for`` returns the sweep's (cached) model by name; ``images``/``labels``/``ids``
    are the dataset rows the sweep evaluated. ``eot`` averages each gradient over that
    many forward passes when the model is randomised (two passes differ; use the
    sweep's largest EOT setting); a deterministic model is attacked without EOT.
    ``n_iter``/``ce_restarts``/``n_target_classes`` set the strength (defaults: the
    strong attack; only tests lower them). ``calls`` records every confirmation run,
    so a caller (or a test) can see what it paid.
    """

    def __init__(self, model_for: Callable[[str], torch.nn.Module], images: torch.Tensor | Dataset,
                 labels: torch.Tensor, ids: torch.Tensor, device: torch.device, *, seed: int = 0, eot: int = 1,
                 batch_size: int = 100, n_iter: int = STRONG_N_ITER, ce_restarts: int = STRONG_CE_RESTARTS,
                 n_target_classes: int = STRONG_TARGETS) -> None:
        # ``images`` may be a dataset (rows aligned with ``labels``/``ids``): then only the flagged
        # rows are ever decoded, so an ImageNet-size sweep never holds its images here
        self.model_for, self.images, self.labels, self.device = model_for, images, labels, device
        self.pos = {int(s): i for i, s in enumerate(ids.tolist())}
        self.seed, self.eot, self.batch_size = seed, eot, batch_size
        self.strength = {"n_iter": n_iter, "ce_restarts": ce_restarts, "n_target_classes": n_target_classes}
        self.calls: list[Confirmation] = []

    def __call__(self, model_name: str, norm: str, eps: float, sample_ids: Sequence[int]) -> Confirmation | None:
        ids = sorted(int(s) for s in sample_ids if int(s) in self.pos)
        if norm not in CONFIRM_NORMS or len(ids) < len(sample_ids):
            return None  # cannot confirm: APGD has no such norm, or samples outside the swept data
        rows = torch.tensor([self.pos[s] for s in ids], dtype=torch.int64)
        x = self.images[rows] if isinstance(self.images, torch.Tensor) else self.images.take(rows.numpy()).images
        x, y = x.to(self.device), self.labels[rows].to(self.device)
        model = self.model_for(model_name)
        if oracle_of(model) is not None:
            return None  # a remote target: no gradient to confirm with, and every probe would cost queries
        suite = strong_suite(norm, eps, eot=self.eot if self.eot > 1 and _randomised(model, x) else 1,
                             **self.strength)
        if graph_broken(model, x):
            # no gradient path from the input to the logits: a gradient attack would only re-score its random
            # starts, so it cannot confirm anything; every sample counts as surviving it (masking stays possible)
            result = Confirmation(describe(suite), norm, float(eps), tuple(ids), {}, tuple(ids),
                                  members=tuple(a.name for a in suite.attacks),
                                  error="no input gradient: the forward pass breaks the autograd graph "
                                        "(pre-processing through PIL, numpy or torch.no_grad)")
        else:
            result = confirm_white_box(model, x, y, ids, norm=norm, eps=eps, seed=self.seed,
                                       suite=suite, batch_size=self.batch_size)
        self.calls.append(result)
        return result


def graph_broken(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """True when the logits on ``x`` have no autograd graph at all (the model computes them without
    gradients), so every input gradient is zero."""
    with torch.enable_grad():
        return not model(x[:1].detach().clone().requires_grad_(True)).requires_grad


def _randomised(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """True when two forward passes on ``x`` differ (a randomised model, which needs EOT)."""
    with torch.no_grad():
        return bool((model(x) - model(x)).abs().max() > 1e-5)
