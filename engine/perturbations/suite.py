"""Attack suites: an ordered cascade of attacks per ε, a per-sample worst case, and reuse across ascending ε.

A suite attacks each ε of its list in ascending order. At one ε, every member
attack runs only on the samples that are still correctly classified (AutoAttack's
cascade); a sample counts as robust only if it survives every member. A sample
broken at ε keeps its (verified) adversarial example at every larger ε and is not
attacked again. Minimal-norm members whose search does not depend on ε (FAB with
one restart, CW, DeepFool) run once per sample; their best example is reused at
every larger ε where its norm fits.

Every claimed success is checked here before a sample leaves the cascade: the
example must lie in the ε ball and the [0, 1] box (else ``ThreatModelViolation``)
and the model must misclassify it (else the claim is ignored and the next member
attacks the sample). The evaluator re-checks and re-classifies the final batch.

``rescore: R`` > 1 is for a randomised model (after AutoAttack's pull request
#105): every member's example, claimed or not, is classified R times; a sample
keeps the example misclassified by the most of its R draws and stays in the
cascade until one is misclassified by all R (one lucky draw neither breaks a
sample nor ends its attack). The evaluator then classifies the kept example R
times afresh, and the sample counts as robust only if all R classify it correctly
(``score_draws``). Minimal-norm results are not reused across ε then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from engine.compose.threat_model import canonical_tags, parse_tags
from engine.errors import ConfigError, ThreatModelViolation
from engine.perturbations.base import (
    BatchContext,
    Family,
    LevelOutput,
    Perturbation,
    budget_of,
    check_eps_list,
    worst_of,
    zero_cost,
)
from engine.perturbations.norms import Norm
from engine.seeding import derive_seed

WHITE_BOX = "white-box"
BLACK_BOX = "black-box"


def input_gradient(value: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """∂ ``value`` / ∂ ``x``; zeros where ``value`` has no gradient path to ``x`` (the model broke the graph:
    such a forward pass is piecewise constant for an attacker, its input gradient is zero everywhere)."""
    if not value.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(value, [x], retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


class GradientPath(nn.Module):
    """``model`` whose output keeps a gradient path to the input when the model broke it, for code that
    differentiates on its own (torchattacks): the added path is ``0 · x``, so the forward values are
    unchanged and the input gradient is exactly zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        if torch.is_grad_enabled() and x.requires_grad and not out.requires_grad:
            out = out + (0.0 * x.reshape(x.shape[0], -1)[:, :1]).to(out.dtype)
        return out


@dataclass(frozen=True)
class MemberContext:
    """What one member attack gets for one ε: the model, the norm, ε and its seeds."""

    model: nn.Module
    norm: Norm
    eps: float
    num_classes: int
    sample_seeds: tuple[int, ...]  # one per row: (global seed, sample id, suite, member, ε)
    shared_seed: int  # (global seed, suite, member, ε): draws shared by all samples, same in every batch
    max_rows: int = 0  # rows of the suite's batch: a member that widens its batch (targets together) stays within it
    on_spent: Callable[[int], None] | None = None  # progress: evals just spent (the suite's meter, or None)

    def spent(self, evals: int) -> None:
        """Report ``evals`` model evaluations just done (a member calls it every iteration; it is cheap)."""
        if self.on_spent is not None and evals > 0:
            self.on_spent(int(evals))

    def generators(self) -> list[torch.Generator]:
        """One CPU generator per row; a sample's draws never depend on its batch."""
        return [torch.Generator().manual_seed(s) for s in self.sample_seeds]

    def shared_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.shared_seed)


@dataclass
class MemberResult:
    """A member's per-sample outcome on the rows it was given.

    ``success`` is the member's *claim* (misclassified and within ε); the suite
    verifies it. Minimal-norm members also report ``size`` (norm of their best
    adversarial example, inf when none) and ``exhaustive`` (the search ran to the
    end, so ``size`` holds for any larger ε).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    grad_evals: torch.Tensor
    queries: torch.Tensor
    size: torch.Tensor | None = None
    exhaustive: torch.Tensor | None = None


@dataclass(frozen=True)
class SuiteMember:
    """Base of an attack inside a suite; ``name`` is what ``broken_by`` records."""

    minimal_norm: ClassVar[bool] = False
    # True when the member's random draws come from a per-batch RNG (torchattacks), so
    # the batch layout changes the rows.
    batch_dependent: ClassVar[bool] = False
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    name: str = ""
    tags: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", canonical_tags(self.tags))
        parse_tags(f"attack {self.name!r}", self.tags, "attack")
        if not self.name:
            raise ConfigError(f"{type(self).__name__}: a suite member needs a name (what broken_by records)")

    def require_positive(self, *keys: str) -> None:
        """ConfigError naming the first of these integer fields that is below 1."""
        for key in keys:
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"attack {self.name!r}: {key} must be ≥ 1, got {getattr(self, key)!r}")

    @property
    def eot_iter(self) -> int:
        """Samples per gradient under Expectation over Transformation (1: no EOT)."""
        return 1

    @property
    def eps_independent(self) -> bool:
        """True when the search does not depend on ε, so a minimal-norm result serves every ε."""
        return False

    @property
    def planned_evals(self) -> int:
        """Evals one sample is planned to cost this member at one ε (an upper bound: a sample leaves when broken)."""
        return budget_of(self)

    @property
    def threat(self) -> str:
        return BLACK_BOX if BLACK_BOX in self.tags else WHITE_BOX

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        raise NotImplementedError


@dataclass
class _MinNormCache:
    """Best example of an ε-independent minimal-norm member per sample, for reuse at larger ε."""

    x_adv: torch.Tensor
    size: torch.Tensor
    known: torch.Tensor


@dataclass
class _SuiteState:
    """Per-batch state carried across ascending ε."""

    x_out: torch.Tensor
    broken: torch.Tensor
    breaker: list[str]
    caches: dict[str, _MinNormCache]


class _MemberMeter:
    """Progress of one member at one ε on one batch: evals reported as the member spends them, then at its end
    the account settled from its real cost (``grad_evals`` + ``queries``): the planned evals of rows it never
    attacked or that left it early are reported as unnecessary, so the sweep's total shrinks as they are found."""

    def __init__(self, ctx: BatchContext, planned: int) -> None:
        self.ctx, self.planned, self.spent, self.skipped = ctx, planned, 0, 0

    def spend(self, evals: int) -> None:
        self.spent += evals
        self.ctx.report(evals, 0)

    def skip(self, evals: int) -> None:
        self.skipped += evals
        self.ctx.report(0, evals)

    def settle(self, actual: int) -> None:
        self.ctx.report(actual - self.spent, max(0, self.planned - actual) - self.skipped)


def _cost(grads: torch.Tensor, queries: torch.Tensor) -> int:
    return int(grads.sum()) + int(queries.sum())


@dataclass(frozen=True)
class AttackSuite(Perturbation):
    """An ordered list of attacks evaluated as a cascade at each ε, ascending (see module docstring)."""

    family: ClassVar[Family] = "attack"
    needs_model: ClassVar[bool] = True

    eps: Sequence[float] = field(default_factory=tuple)
    attacks: Sequence[SuiteMember] = field(default_factory=tuple)
    rescore: int = 1  # classifications per example (module docstring); > 1 for a randomised model

    def __post_init__(self) -> None:
        check_eps_list(self.name, list(self.eps))
        if isinstance(self.rescore, bool) or not isinstance(self.rescore, int) or self.rescore < 1:
            raise ConfigError(f"perturbation {self.name!r}: rescore must be an integer ≥ 1, got {self.rescore!r}")
        object.__setattr__(self, "eps", tuple(sorted(float(e) for e in self.eps)))
        object.__setattr__(self, "attacks", tuple(self.attacks))
        if self.norm is None:
            raise ConfigError(f"perturbation {self.name!r}: an attack suite must declare its norm")
        if not self.attacks:
            raise ConfigError(f"perturbation {self.name!r}: the suite lists no attacks")
        names = [a.name for a in self.attacks]
        for member in self.attacks:
            if not isinstance(member, SuiteMember):
                raise ConfigError(f"perturbation {self.name!r}: {member!r} is not a suite member")
            if self.norm not in member.norms:
                raise ConfigError(
                    f"perturbation {self.name!r}: member {member.name!r} supports norms {list(member.norms)}, "
                    f"not {self.norm!r}"
                )
        if len(set(names)) != len(names):
            raise ConfigError(f"perturbation {self.name!r}: member names must be unique, got {names}")
        super().__post_init__()

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.eps)

    @property
    def eot_iter(self) -> int:
        return min(a.eot_iter for a in self.attacks)

    @property
    def planned_evals(self) -> int:
        return sum(max(1, a.planned_evals) for a in self.attacks)

    @property
    def score_draws(self) -> int:
        return self.rescore

    def threat_of(self, breaker: str) -> str | None:
        for a in self.attacks:
            if a.name == breaker:
                return a.threat
        return None

    def task_extras(self, batch_size: int) -> dict[str, object]:
        return {"batch_size": batch_size} if any(a.batch_dependent for a in self.attacks) else {}

    def run(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> Iterator[LevelOutput]:
        if self.rescore > 1:
            yield from self._run_rescored(x, y, ctx)
            return
        n = x.shape[0]
        with torch.no_grad():
            logits = ctx.model(x)
        num_classes = int(logits.shape[1])
        correct = (logits.argmax(1) == y).cpu()
        state = _SuiteState(x.clone(), torch.zeros(n, dtype=torch.bool), [""] * n, {})
        first_query = torch.ones(n, dtype=torch.int64)  # the clean classification above
        for level in self.levels:
            grads, queries = zero_cost(n), zero_cost(n)
            queries += first_query
            first_query = zero_cost(n)
            if level > 0:
                for member in self.attacks:
                    pool = (correct & ~state.broken).nonzero().squeeze(1)
                    if pool.numel() == 0:
                        break  # the evaluator books the members left as unnecessary when this level is yielded
                    meter = self._meter(member, pool, n, ctx)
                    before = _cost(grads, queries)
                    self._run_member(member, level, pool, x, y, ctx, num_classes, state, grads, queries, meter)
                    meter.settle(_cost(grads, queries) - before)
            yield LevelOutput(level, state.x_out.clone(), grads, queries, tuple(state.breaker))

    def _run_rescored(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> Iterator[LevelOutput]:
        """The cascade for a randomised model (module docstring): per sample, the example misclassified by the
        most of ``rescore`` draws; a sample leaves the cascade when all draws misclassify its example."""
        n = x.shape[0]
        logits, wrong = worst_of(ctx.model, x, y, self.rescore)
        num_classes = int(logits.shape[1])
        state = _SuiteState(x.clone(), torch.zeros(n, dtype=torch.bool), [""] * n, {})
        best = wrong.cpu()  # misclassifying draws of each sample's kept example (the clean input first)
        first_query = torch.full((n,), self.rescore, dtype=torch.int64)
        for level in self.levels:
            grads, queries = zero_cost(n), zero_cost(n)
            queries += first_query
            first_query = zero_cost(n)
            if level > 0:
                for member in self.attacks:
                    pool = (best < self.rescore).nonzero().squeeze(1)
                    if pool.numel() == 0:
                        break
                    meter = self._meter(member, pool, n, ctx)
                    before = _cost(grads, queries)
                    res = member.attack(x[pool.to(x.device)], y[pool.to(x.device)],
                                        self._member_context(member, level, pool, ctx, num_classes, x, meter))
                    grads[pool] += res.grad_evals.cpu()
                    queries[pool] += res.queries.cpu()
                    self._keep_worse(member, level, pool, res, x, y, ctx, state, best, queries)
                    meter.settle(_cost(grads, queries) - before)
            yield LevelOutput(level, state.x_out.clone(), grads, queries, tuple(state.breaker))

    def _member_context(self, member: SuiteMember, level: float, pool: torch.Tensor, ctx: BatchContext,
                        num_classes: int, x: torch.Tensor, meter: _MemberMeter) -> MemberContext:
        ids = ctx.sample_ids[pool].tolist()
        return MemberContext(
            model=ctx.model, norm=self._norm, eps=level, num_classes=num_classes,
            sample_seeds=tuple(derive_seed(ctx.seed, int(s), self.name, member.name, level) for s in ids),
            shared_seed=derive_seed(ctx.seed, self.name, member.name, level), max_rows=int(x.shape[0]),
            on_spent=meter.spend,
        )

    @staticmethod
    def _meter(member: SuiteMember, pool: torch.Tensor, n: int, ctx: BatchContext) -> _MemberMeter:
        """A meter for ``member`` on this batch; the rows outside ``pool`` (broken already, or misclassified
        clean) are booked as unnecessary at once."""
        meter = _MemberMeter(ctx, n * max(1, member.planned_evals))
        meter.skip((n - int(pool.numel())) * max(1, member.planned_evals))
        return meter

    def _keep_worse(self, member: SuiteMember, level: float, pool: torch.Tensor, res: MemberResult,
                    x: torch.Tensor, y: torch.Tensor, ctx: BatchContext, state: _SuiteState, best: torch.Tensor,
                    queries: torch.Tensor) -> None:
        """Classify every example of the member ``rescore`` times; keep it where more draws misclassify it than
        the sample's kept example. Claimed successes must lie in the ball; other examples count only inside it."""
        claimed = res.success.cpu()
        dev_pool = pool.to(x.device)
        if bool(claimed.any()):
            self._check_ball(member, level, x[dev_pool[claimed.to(x.device)]], res.x_adv[claimed.to(x.device)])
        inside = (self._norm.measure(res.x_adv - x[dev_pool]) <= self._norm.bound(level)).cpu()
        inside &= torch.isfinite(res.x_adv).flatten(1).all(1).cpu()
        inside &= ((res.x_adv >= -1e-6) & (res.x_adv <= 1 + 1e-6)).flatten(1).all(1).cpu()
        if not bool(inside.any()):
            return
        rows, keep = pool[inside], inside.nonzero().squeeze(1)
        _, wrong = worst_of(ctx.model, res.x_adv[keep.to(x.device)], y[rows.to(x.device)], self.rescore)
        queries[rows] += self.rescore
        wrong = wrong.cpu()
        for r, k, w in zip(rows.tolist(), keep.tolist(), wrong.tolist(), strict=True):
            if w > int(best[r]):
                best[r] = w
                state.x_out[r] = res.x_adv[k]
                state.breaker[r] = member.name

    # -- one member at one ε ------------------------------------------------------------------

    def _run_member(self, member: SuiteMember, level: float, pool: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, ctx: BatchContext, num_classes: int, state: _SuiteState,
                    grads: torch.Tensor, queries: torch.Tensor, meter: _MemberMeter) -> None:
        cache = state.caches.get(member.name) if member.minimal_norm and member.eps_independent else None
        if cache is not None:
            known = pool[cache.known[pool]]
            fits = known[cache.size[known] <= level]
            self._accept(member, level, fits, cache.x_adv[fits.to(x.device)], x, y, ctx, state, queries)
            pool = pool[~cache.known[pool]]
            if pool.numel() == 0:
                return
        mctx = self._member_context(member, level, pool, ctx, num_classes, x, meter)
        dev_pool = pool.to(x.device)
        res = member.attack(x[dev_pool], y[dev_pool], mctx)
        grads[pool] += res.grad_evals.cpu()
        queries[pool] += res.queries.cpu()
        claimed = res.success.cpu()
        self._accept(member, level, pool[claimed], res.x_adv[claimed.to(x.device)], x, y, ctx, state, queries)
        if member.minimal_norm and member.eps_independent and res.size is not None and res.exhaustive is not None:
            cache = state.caches.setdefault(
                member.name,
                _MinNormCache(x.clone(), torch.full((x.shape[0],), float("inf"), dtype=torch.float64),
                              torch.zeros(x.shape[0], dtype=torch.bool)),
            )
            keep = (res.exhaustive.cpu() & ~claimed).nonzero().squeeze(1)
            rows = pool[keep]
            cache.x_adv[rows.to(x.device)] = res.x_adv[keep.to(x.device)]
            cache.size[rows] = res.size.cpu().double()[keep]
            cache.known[rows] = True

    def _accept(self, member: SuiteMember, level: float, rows: torch.Tensor, x_adv: torch.Tensor,
                x: torch.Tensor, y: torch.Tensor, ctx: BatchContext, state: _SuiteState,
                queries: torch.Tensor) -> None:
        """Verify claimed successes; record the confirmed ones as broken by ``member``."""
        if rows.numel() == 0:
            return
        dev_rows = rows.to(x.device)
        self._check_ball(member, level, x[dev_rows], x_adv)
        with torch.no_grad():
            pred = ctx.model(x_adv).argmax(1)
        queries[rows] += 1
        confirmed = (pred != y[dev_rows]).cpu()
        for r, ok, xa in zip(rows.tolist(), confirmed.tolist(), x_adv, strict=True):
            if ok:
                state.x_out[r] = xa
                state.broken[r] = True
                state.breaker[r] = member.name

    def _check_ball(self, member: SuiteMember, level: float, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        where = f"perturbation {self.name!r}, member {member.name!r} at ε={level:g}"
        if not bool(torch.isfinite(x_adv).all()):
            raise ThreatModelViolation(f"{where} returned NaN/inf pixels")
        if float(x_adv.min()) < -1e-6 or float(x_adv.max()) > 1 + 1e-6:
            raise ThreatModelViolation(f"{where} left the [0, 1] pixel box")
        sizes = self._norm.measure(x_adv - x)
        bound = self._norm.bound(level)
        if bool((sizes > bound).any()):
            raise ThreatModelViolation(
                f"{where} claimed {int((sizes > bound).sum())} example(s) outside the {self._norm.name} ball "
                f"(largest ‖δ‖ = {float(sizes.max()):.6g} > ε). The attack is broken; its results are not counted."
            )

    @property
    def _norm(self) -> Norm:
        norm = self.norm_obj
        assert norm is not None
        return norm

