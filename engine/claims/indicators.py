"""Indicators of attack failure (Pintor et al., NeurIPS 2022) measured on one traced attack run, plus the
gradient probe that locates a non-differentiable pre-processing for BPDA.

The base evaluation (AutoAttack) is not instrumented. After it, the samples it
left robust (up to ``TRACE_SAMPLES``) are attacked once more by the suite's own
APGD-CE, from a fresh random start, through :class:`Tracer`: a wrapper that sees
every query, assigns it to the clean sample whose ε ball holds it, and records
the loss, whether the query was misclassified, and (through an identity autograd
function) whether its input gradient was all zero. From that trace:

* ``silent_success``: a query inside the ε ball was misclassified, yet the
  example the attack returned is classified correctly when scored again;
* ``non_converging_loss``: the best loss was still rising over the last 20 %
  of the iterations (more iterations might have broken the sample);
* ``zero_gradients_path``: at least half of the gradients along the path are
  all zero (a piecewise-constant or saturated model);
* ``bad_initialisation``: the fresh start broke samples the base run had left
  robust (a restart succeeds where the main run failed).

``transfer_failure`` is measured where a surrogate exists (escalate.py). Nothing
here is counted in an accuracy: the indicators decide which escalations run, and
every number in a verdict comes from the planner → evaluator → result store.
Thresholds are documented in docs/claims.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.perturbations.adaptive import GradientView, arch_of
from engine.perturbations.autoattack import APGD
from engine.perturbations.norms import get_norm
from engine.perturbations.suite import AttackSuite, MemberContext, input_gradient
from engine.seeding import derive_seed

TRACE_SAMPLES = 32
ZERO_GRAD_SHARE = 0.5  # a sample's path is "zero-gradient" when at least this share of its gradients are all zero
LATE_SHARE = 0.2  # the last 20 % of a path
LATE_RISE = 0.10  # ... still raising the best loss by more than 10 % of its total rise
FIRE_SHARE = 0.10  # an indicator fires when more than this share of the traced samples show it (and ≥ 2)


@dataclass
class Indicator:
    """One indicator's finding on one (model, norm, ε): fired or not, on how many samples, and why."""

    check: str
    fired: bool
    count: int
    n: int
    message: str
    source: str = "pintor"  # pintor | sanity (engine/sanity/flags.py flags) | margin
    details: dict[str, Any] = field(default_factory=dict)
    cleared: bool | None = None  # set after escalation
    cleared_by: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "fired": self.fired, "count": self.count, "n": self.n,
                "message": self.message, "source": self.source, "details": self.details,
                "cleared": self.cleared, "cleared_by": self.cleared_by}


class _Record(torch.autograd.Function):
    """Identity whose backward reports, per row, whether the incoming gradient is all zero."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sink: Callable[[torch.Tensor], None]) -> torch.Tensor:
        ctx.sink = sink
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.sink((grad.reshape(grad.shape[0], -1).abs().sum(1) == 0).cpu())
        return grad, None


class Tracer(nn.Module):
    """Wraps a model for one attack run on clean samples ``x`` (labels ``y``): records every query per sample."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float) -> None:
        super().__init__()
        self.model, self.x, self.y, self.norm, self.eps = model, x, y, get_norm(norm), eps
        n = len(x)
        self.losses: list[list[float]] = [[] for _ in range(n)]
        self.zero: list[list[bool]] = [[] for _ in range(n)]
        self.seen_wrong = torch.zeros(n, dtype=torch.bool)

    def _owners(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.stack([self.norm.measure((z - xi).detach()) for xi in self.x], dim=1)  # rows × samples
        dist, owner = d.min(dim=1)
        return owner, dist <= self.norm.bound(self.eps) + 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        owner, inside = self._owners(z.detach().cpu() if z.is_cuda else z.detach())
        owner_dev = owner.to(z.device)
        grad_pass = torch.is_grad_enabled() and z.requires_grad
        if grad_pass:
            rows = owner.tolist()

            def sink(zero: torch.Tensor) -> None:
                for r, o in enumerate(rows):
                    if bool(inside[r]):
                        self.zero[o].append(bool(zero[r]))

            z = _Record.apply(z, sink)
        out: torch.Tensor = self.model(z)
        if grad_pass:
            # a path through _Record even where the model broke the autograd graph (pre-processing in PIL,
            # numpy, no_grad): its backward then records the zero gradient the attack sees (0 · z adds nothing)
            out = out + (0.0 * z.reshape(z.shape[0], -1)[:, :1]).to(out.dtype)
        with torch.no_grad():
            wrong = (out.argmax(1) != self.y[owner_dev]).cpu() & inside
            self.seen_wrong[owner[wrong]] = True
            if grad_pass:
                loss = F.cross_entropy(out.detach(), self.y[owner_dev], reduction="none").cpu()
                for r, o in enumerate(owner.tolist()):
                    if bool(inside[r]):
                        self.losses[o].append(float(loss[r]))
        return out


def trace_member(suite: AttackSuite) -> APGD:
    """The suite's APGD-CE (its first untargeted APGD member), or the original's default when it has none."""
    for m in suite.attacks:
        if isinstance(m, APGD) and m.loss == "ce":
            return m
    return APGD(name="apgd-ce", loss="ce", n_iter=100, tags=("white-box", "AML.T0043.000"))


@dataclass
class TraceResult:
    """What the traced run saw on each of its samples, and what it returned."""

    sample_ids: list[int]
    broken: torch.Tensor  # the returned example is misclassified (scored again on the real model)
    seen_wrong: torch.Tensor
    losses: list[list[float]]
    zero: list[list[bool]]


def run_trace(model: nn.Module, member: APGD, x: torch.Tensor, y: torch.Tensor, ids: list[int], norm: str,
              eps: float, seed: int, num_classes: int) -> TraceResult:
    """One APGD-CE run on (x, y) through a :class:`Tracer`, from a start seeded apart from the base run's."""
    tracer = Tracer(model, x, y, norm, eps)
    mctx = MemberContext(
        model=tracer, norm=get_norm(norm), eps=eps, num_classes=num_classes,
        sample_seeds=tuple(derive_seed(seed, s, "claims-trace", member.name, eps) for s in ids),
        shared_seed=derive_seed(seed, "claims-trace", member.name, eps), max_rows=len(x),
    )
    res = member.attack(x, y, mctx)
    x_adv = res.x_adv.detach()
    inside = get_norm(norm).measure(x_adv - x) <= get_norm(norm).bound(eps)
    with torch.no_grad():
        broken = ((model(x_adv).argmax(1) != y).cpu() & inside.cpu() & res.success.cpu())
    return TraceResult(ids, broken, tracer.seen_wrong.clone(), tracer.losses, tracer.zero)


def _fires(count: int, n: int) -> bool:
    return count >= 2 and count > FIRE_SHARE * n


def _still_rising(losses: list[float]) -> bool:
    if len(losses) < 10:
        return False
    best = [max(losses[: i + 1]) for i in range(len(losses))]
    total = best[-1] - best[0]
    late = best[-1] - best[math.floor((1 - LATE_SHARE) * (len(best) - 1))]
    return late > 1e-3 and late > LATE_RISE * max(total, 1e-12)


def trace_indicators(t: TraceResult) -> list[Indicator]:
    """The four trace-based indicators (module docstring) for one traced run."""
    n = len(t.sample_ids)
    ids = t.sample_ids
    silent = [ids[i] for i in range(n) if bool(t.seen_wrong[i]) and not bool(t.broken[i])]
    survivors = [i for i in range(n) if not bool(t.seen_wrong[i])]
    rising = [ids[i] for i in survivors if _still_rising(t.losses[i])]
    zero = [ids[i] for i in range(n) if t.zero[i] and sum(t.zero[i]) >= ZERO_GRAD_SHARE * len(t.zero[i])]
    restart = [ids[i] for i in range(n) if bool(t.broken[i])]
    return [
        Indicator("silent_success", _fires(len(silent), n), len(silent), n,
                  f"{len(silent)}/{n} samples: a query inside the ε ball was misclassified but the returned "
                  "example is classified correctly when scored again (a randomised model, or an attack that "
                  "does not return its best point)", details={"sample_ids": silent}),
        Indicator("non_converging_loss", _fires(len(rising), len(survivors) or 1), len(rising), len(survivors),
                  f"{len(rising)}/{len(survivors)} unbroken samples: the best loss was still rising in the last "
                  f"{LATE_SHARE:.0%} of the iterations (noisy gradients or too few iterations)",
                  details={"sample_ids": rising}),
        Indicator("zero_gradients_path", _fires(len(zero), n), len(zero), n,
                  f"{len(zero)}/{n} samples: at least {ZERO_GRAD_SHARE:.0%} of the input gradients along the "
                  "attack path are all zero (piecewise-constant pre-processing, or saturated outputs)",
                  details={"sample_ids": zero}),
        Indicator("bad_initialisation", _fires(len(restart), n), len(restart), n,
                  f"{len(restart)}/{n} samples the base evaluation left robust were broken by one more APGD-CE "
                  "run from a fresh random start (the result depends on the initialisation: more restarts "
                  "needed)", details={"sample_ids": restart}),
    ]


def locate_nondifferentiable(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """The dotted path (inside the architecture) of the first module whose input gradient is alive when the
    model's input gradient is dead: where BPDA's identity backward should end. None when gradients are fine
    or no module with the input's shape has a live gradient."""
    arch = arch_of(model)
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    hooks = []
    for name, mod in arch.named_modules():
        if not name:
            continue

        def rec(m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and name not in shapes:
                shapes[name] = tuple(args[0].shape)
                order.append(name)
        hooks.append(mod.register_forward_pre_hook(rec))
    grab: dict[str, tuple[int, ...]] = {}

    def rec_input(_m: nn.Module, args: tuple[Any, ...]) -> None:
        grab.setdefault("z", tuple(args[0].shape))
    hooks.append(arch.register_forward_pre_hook(rec_input))
    try:
        if alive(model, x, y):
            return None
    finally:
        for h in hooks:
            h.remove()
    for name in order:
        if shapes[name] == grab.get("z") and alive(GradientView(model, name, "bpda"), x, y):
            return name
    return None


def alive(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """True when at least half of the samples have a non-zero, finite input gradient of the logit margin."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        true = logits.gather(1, y[:, None]).squeeze(1)
        margin = true - logits.scatter(1, y[:, None], float("-inf")).amax(1)
        g = input_gradient(margin.sum(), xg)  # zeros when the forward pass breaks the autograd graph
    flat = g.reshape(len(x), -1)
    ok = torch.isfinite(flat).all(1) & (flat.abs().sum(1) > 0)
    return bool(ok.float().mean() >= 0.5)
