"""The attacks of AutoAttack (APGD-CE/DLR, APGD-T, FAB-T, Square), ported from the original code as suite members.

Parameters, schedules, losses and update rules follow Croce & Hein's original
implementation (``pyautoattack`` 0.2.0: ``autopgd_base.py``, ``fab_base.py``,
``square.py``; MIT licence). What differs, on purpose:

* Random draws come from per-sample generators seeded by (global seed, sample id,
  suite, member, ε), or for Square's window positions from one stream shared by
  every batch, never from the clock or the global RNG, so a sample's result does
  not depend on its batch.
* A sample leaves the working batch as soon as it is broken at the current ε
  (the original keeps iterating on it). Every per-sample computation of these
  attacks is independent of the other rows, so this changes no verdict, only the
  cost; the example returned is the first adversarial iterate found.
* Redundant forward passes are dropped (target ranking is computed once per
  call; the last APGD iteration does not compute a gradient nobody uses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torchattacks.attacks.fab import projection_l2, projection_linf

from engine.errors import ConfigError
from engine.perturbations.suite import MemberContext, MemberResult, SuiteMember

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _expand(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view(-1, *([1] * (ndim - 1)))


def _lp(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else (flat**2).sum(1).sqrt()


def _normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (_expand(_lp(t, norm), t.ndim) + 1e-12)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio (untargeted), as in the original ``dlr_loss``."""
    x_sorted, ind_sorted = logits.sort(dim=1)
    ind = (ind_sorted[:, -1] == y).float()
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - x_sorted[:, -2] * ind - x_sorted[:, -1] * (1.0 - ind)) / (
        x_sorted[:, -1] - x_sorted[:, -3] + 1e-12
    )


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    assert target is not None
    x_sorted, _ = logits.sort(dim=1)
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - logits[u, target]) / (x_sorted[:, -1] - 0.5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": dlr_targeted_loss}


def _random_start(x: torch.Tensor, eps: float, norm: str, gens: list[torch.Generator]) -> torch.Tensor:
    """x + ε·t/‖t‖ with t uniform in [-1, 1] (L∞) or Gaussian (L2), drawn per sample."""
    shape = x.shape[1:]
    if norm == "linf":
        t = torch.stack([2 * torch.rand(shape, generator=g) - 1 for g in gens])
    else:
        t = torch.stack([torch.randn(shape, generator=g) for g in gens])
    t = t.to(x.device)
    return x + eps * torch.ones_like(x) * _normalize(t, norm)


@dataclass
class _APGDRows:
    """APGD's state for the rows still being attacked (compacted when rows break)."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    x_adv: torch.Tensor
    x_old: torch.Tensor
    grad: torch.Tensor
    x_best: torch.Tensor
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    step: torch.Tensor
    loss_steps: torch.Tensor
    loss_best_last: torch.Tensor
    reduced_last: torch.Tensor
    group: torch.Tensor | None = None  # sample of each row when several targets of a sample run together

    def keep(self, mask: torch.Tensor) -> None:
        for name in ("idx", "x", "y", "x_adv", "x_old", "grad", "x_best", "grad_best", "loss_best", "step",
                     "loss_best_last", "reduced_last"):
            setattr(self, name, getattr(self, name)[mask])
        if self.target is not None:
            self.target = self.target[mask]
        if self.group is not None:
            self.group = self.group[mask]
        self.loss_steps = self.loss_steps[:, mask]


@dataclass(frozen=True)
class APGD(SuiteMember):
    """Auto-PGD (Croce & Hein 2020) on the CE, DLR or targeted DLR loss (``loss: dlr-targeted`` is APGD-T).

    ``n_target_classes`` (APGD-T only) is capped at (number of classes − 1).
    ``target_batch`` (APGD-T only) runs that many target classes of a sample in
    one batch (see :func:`expand_targets`); 1 is the original's one-target-at-a-time order.
    """

    loss: str = "ce"
    n_iter: int = 100
    n_restarts: int = 1
    rho: float = 0.75
    eot: int = 1
    n_target_classes: int = 9
    target_batch: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ConfigError(f"attack {self.name!r}: loss {self.loss!r} is not one of {sorted(LOSSES)}")
        for key in ("n_iter", "n_restarts", "eot", "n_target_classes", "target_batch"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"attack {self.name!r}: {key} must be ≥ 1")
        if not 0 < self.rho < 1:
            raise ConfigError(f"attack {self.name!r}: rho must be in (0, 1)")

    @property
    def eot_iter(self) -> int:
        return self.eot

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        n = x.shape[0]
        gens = ctx.generators()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_found = x.clone()
        grads = torch.zeros(n, dtype=torch.int64, device=x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        order = None
        ranks: list[int] = [0]  # untargeted: one pass, no target
        if self.loss == "dlr-targeted":
            with torch.no_grad():
                order = ctx.model(x).sort(dim=1)[1]
            queries += 1
            ranks = list(range(2, min(self.n_target_classes, ctx.num_classes - 1) + 2))
        for chunk in _target_chunks(ranks, self.target_batch, ctx.max_rows, lambda: int((~found).sum())):
            for _ in range(self.n_restarts):
                rows = (~found).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                sample, target = expand_targets(rows, chunk, order)
                # a sample's generator yields its starts in (target, restart) order, as one target at a time would
                start = _random_start(x[sample], ctx.eps, ctx.norm.name, [gens[i] for i in sample.tolist()])
                group = sample if len(chunk) > 1 else None
                hit, x_hit, cost, q = self._single_run(ctx, x[sample], y[sample], target, start, group)
                grads.index_add_(0, sample, cost)
                queries.index_add_(0, sample, q)
                found[sample[hit]] = True
                x_found[sample[hit]] = x_hit[hit]
        return MemberResult(x_found, found, grads, queries)

    def _grad(self, ctx: MemberContext, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean gradient over ``eot`` passes, with the logits and per-sample loss of the last pass."""
        loss_fn = LOSSES[self.loss]
        if not need_grad:
            with torch.no_grad():
                logits = ctx.model(x_adv)
                return torch.zeros_like(x_adv), logits, loss_fn(logits, y, target)
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot):
            xg = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = ctx.model(xg)
                loss_indiv = loss_fn(logits, y, target)
                (g,) = torch.autograd.grad(loss_indiv.sum(), [xg])
            grad += g.detach()
        return grad / float(self.eot), logits.detach(), loss_indiv.detach()

    def _step(self, s: _APGDRows, eps: float, norm: str, a: float) -> torch.Tensor:
        """One momentum step of the original (two projections, momentum ``a``)."""
        x, x_adv, grad2 = s.x, s.x_adv, s.x_adv - s.x_old
        if norm == "linf":
            x1 = x_adv + s.step * torch.sign(s.grad)
            x1 = torch.clamp(torch.min(torch.max(x1, x - eps), x + eps), 0.0, 1.0)
            return torch.clamp(torch.min(torch.max(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps),
                               0.0, 1.0)
        x1 = x_adv + s.step * _normalize(s.grad, norm)
        x1 = torch.clamp(x + _normalize(x1 - x, norm) * torch.clamp(_expand(_lp(x1 - x, norm), x.ndim), max=eps),
                         0.0, 1.0)
        x1 = x_adv + (x1 - x_adv) * a + grad2 * (1 - a)
        return torch.clamp(x + _normalize(x1 - x, norm) * torch.clamp(_expand(_lp(x1 - x, norm), x.ndim), max=eps),
                           0.0, 1.0)

    def _single_run(self, ctx: MemberContext, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                    start: torch.Tensor, group: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run from ``start``; returns (broken, example, gradient evaluations, queries) per row.

        With ``group`` (the sample of each row, rows of a sample adjacent), a sample
        leaves as soon as any of its rows is broken; only that row counts as a hit.
        """
        n, eps, norm = x.shape[0], ctx.eps, ctx.norm.name
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_hit = x.clone()
        cost = torch.full((n,), self.eot, dtype=torch.int64, device=x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        x_adv = start.clamp(0.0, 1.0)
        grad, logits, loss = self._grad(ctx, x_adv, y, target, need_grad=True)
        n_iter_2 = max(int(0.22 * self.n_iter), 1)
        n_iter_min, size_decr = max(int(0.06 * self.n_iter), 1), max(int(0.03 * self.n_iter), 1)
        s = _APGDRows(
            idx=torch.arange(n, device=x.device), x=x, y=y, target=target, x_adv=x_adv, x_old=x_adv.clone(),
            grad=grad, x_best=x_adv.clone(), grad_best=grad.clone(), loss_best=loss.clone(),
            step=2.0 * eps * torch.ones([n, *([1] * (x.ndim - 1))], device=x.device),
            loss_steps=torch.zeros(self.n_iter, n, device=x.device),
            loss_best_last=loss.clone(), reduced_last=torch.ones_like(loss), group=group,
        )
        self._retire(s, logits, hit, x_hit)
        k, counter3 = n_iter_2, 0
        for i in range(self.n_iter):
            if s.idx.numel() == 0:
                break
            new = self._step(s, eps, norm, 0.75 if i > 0 else 1.0)
            s.x_old, s.x_adv = s.x_adv, new
            last = i == self.n_iter - 1
            s.grad, logits, loss = self._grad(ctx, s.x_adv, s.y, s.target, need_grad=not last)
            if last:
                queries[s.idx] += 1
            else:
                cost[s.idx] += self.eot
            s.loss_steps[i] = loss
            better = loss > s.loss_best
            s.x_best[better] = s.x_adv[better]
            s.grad_best[better] = s.grad[better]
            s.loss_best[better] = loss[better]
            counter3 += 1
            if counter3 == k:
                self._check_step_size(s, i, k)
                k = max(k - size_decr, n_iter_min)
                counter3 = 0
            self._retire(s, logits, hit, x_hit)
        return hit, x_hit, cost, queries

    def _check_step_size(self, s: _APGDRows, i: int, k: int) -> None:
        """Halve the step (and restart from the best point) where the loss oscillates or stalls."""
        t = torch.zeros_like(s.loss_best)
        for c in range(k):
            # i - c - 1 may be -1: the original then reads the last row of its buffer (still zero)
            t += (s.loss_steps[i - c] > s.loss_steps[i - c - 1]).float()
        osc = (t <= k * self.rho * torch.ones_like(t)).float()
        no_impr = (1.0 - s.reduced_last) * (s.loss_best_last >= s.loss_best).float()
        osc = torch.max(osc, no_impr)
        s.reduced_last = osc.clone()
        s.loss_best_last = s.loss_best.clone()
        fl = osc > 0
        if bool(fl.any()):
            s.step[fl] /= 2.0
            s.x_adv[fl] = s.x_best[fl]
            s.grad[fl] = s.grad_best[fl]

    @staticmethod
    def _retire(s: _APGDRows, logits: torch.Tensor, hit: torch.Tensor, x_hit: torch.Tensor) -> None:
        """Rows misclassified at the current iterate are broken: record them and drop them from the batch."""
        wrong = logits.argmax(1) != s.y
        if not bool(wrong.any()):
            return
        if s.group is None:
            first, drop = wrong, wrong
        else:
            first, drop = _first_in_group(wrong, s.group)
        rows = s.idx[first]
        hit[rows] = True
        x_hit[rows] = s.x_adv[first]
        s.keep(~drop)


def _target_chunks(ranks: list[int], target_batch: int, max_rows: int, remaining: Callable[[], int],
                   ) -> Iterator[list[int]]:
    """Consecutive groups of target ranks to run together: at most ``target_batch`` of them and, when
    ``max_rows`` > 0, no more than fit in ``max_rows`` rows for the samples still ``remaining()``
    (so a batch never grows past the one the user sized for memory)."""
    i = 0
    while i < len(ranks):
        k = target_batch
        if max_rows > 0:
            k = min(k, max(1, max_rows // max(remaining(), 1)))
        yield ranks[i:i + k]
        i += k


def expand_targets(rows: torch.Tensor, ranks: list[int], order: torch.Tensor | None,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One row per (sample, target rank), sample-major: the sample index and target class of each row.

    Rank r is the r-th most likely class of the clean input (2: the runner-up).
    Every per-row computation of APGD and FAB is independent of the other rows and
    each row's random start comes from its sample's own generator (with one restart,
    in the order one target at a time would draw them), so running k targets together
    changes no verdict, only the batch shape and the cost: a sample's other targets
    stop as soon as one breaks it.
    """
    k = len(ranks)
    sample = rows.repeat_interleave(k)
    if order is None:
        return sample, None
    rank = torch.tensor(ranks, device=order.device).repeat(rows.numel())
    return sample, order[sample.to(order.device), order.shape[1] - rank]


def _first_in_group(mask: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first flagged row of each group with a flagged row, every row of those groups); groups are contiguous."""
    pos = mask.nonzero().squeeze(1)
    g = group[pos]
    lead = torch.ones_like(g, dtype=torch.bool)
    lead[1:] = g[1:] != g[:-1]
    first = torch.zeros_like(mask)
    first[pos[lead]] = True
    return first, torch.isin(group, g)


@dataclass(frozen=True)
class FABTargeted(SuiteMember):
    """FAB-T (Croce & Hein 2019/2020): targeted minimal-norm attack against the top ``n_target_classes``.

    The search minimises ‖δ‖; a sample counts as broken at ε when its smallest
    adversarial example has norm ≤ ε. With one restart it draws nothing random,
    so one search serves every ε of a curve.
    """

    minimal_norm: ClassVar[bool] = True

    n_iter: int = 100
    n_restarts: int = 1
    n_target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    target_batch: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("n_iter", "n_restarts", "n_target_classes", "target_batch"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"attack {self.name!r}: {key} must be ≥ 1")

    @property
    def eps_independent(self) -> bool:
        return self.n_restarts == 1  # later restarts start at a random point of radius ε/2

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        n = x.shape[0]
        gens = ctx.generators()
        best = x.clone()
        size = torch.full((n,), float("inf"), device=x.device)
        grads = torch.zeros(n, dtype=torch.int64, device=x.device)
        queries = torch.ones(n, dtype=torch.int64, device=x.device)  # the target ranking below
        with torch.no_grad():
            order = ctx.model(x).sort(dim=-1)[1]
        ranks = list(range(2, min(self.n_target_classes, ctx.num_classes - 1) + 2))
        for chunk in _target_chunks(ranks, self.target_batch, ctx.max_rows, lambda: int((size > ctx.eps).sum())):
            for restart in range(self.n_restarts):
                rows = (size > ctx.eps).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                sample, target = expand_targets(rows, chunk, order)
                assert target is not None
                x1 = x[sample]
                if restart > 0:
                    x1 = self._random_start(x1, ctx, [gens[i] for i in sample.tolist()])
                group = sample if len(chunk) > 1 else None
                adv, res, g, q = self._single_run(ctx, x[sample], y[sample], target, x1, group)
                grads.index_add_(0, sample, g)
                queries.index_add_(0, sample, q)
                for j in range(len(chunk)):  # in rank order: on a tie the earlier target's example stays
                    rj, resj = rows, res[j::len(chunk)]
                    better = resj < size[rj]
                    size[rj[better]] = resj[better]
                    best[rj[better]] = adv[j::len(chunk)][better]
        success = size <= ctx.eps
        return MemberResult(best, success, grads, queries, size=size, exhaustive=~success)

    def _random_start(self, x: torch.Tensor, ctx: MemberContext, gens: list[torch.Generator]) -> torch.Tensor:
        norm = ctx.norm.name
        if norm == "linf":
            t = torch.stack([2 * torch.rand(x.shape[1:], generator=g) - 1 for g in gens]).to(x.device)
        else:
            t = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device)
        return (x + ctx.eps * _normalize(t, norm) * 0.5).clamp(0.0, 1.0)

    def _single_run(self, ctx: MemberContext, im2: torch.Tensor, la2: torch.Tensor, la_t: torch.Tensor,
                    x1: torch.Tensor, group: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One FAB-T run; returns (best example, its norm (inf: none), gradients, queries) per row.

        With ``group`` (the sample of each row), a row stops once any row of its
        sample has an example within ε.
        """
        n, norm, nd = im2.shape[0], ctx.norm.name, im2.ndim
        project = projection_linf if norm == "linf" else projection_l2
        adv = im2.clone()
        res2 = torch.full((n,), 1e10, device=im2.device)
        grads = torch.zeros(n, dtype=torch.int64, device=im2.device)
        queries = torch.zeros(n, dtype=torch.int64, device=im2.device)
        act = torch.arange(n, device=im2.device)
        x0_all = im2.reshape(n, -1)
        n_groups = int(group.max()) + 1 if group is not None else 0
        for _ in range(self.n_iter):
            if act.numel() == 0:
                break
            xa, ya, ta, ia = x1, la2[act], la_t[act], im2[act]
            bs = xa.shape[0]
            u = torch.arange(bs, device=im2.device)
            xg = xa.clone().requires_grad_(True)
            with torch.enable_grad():
                out = ctx.model(xg)
                diffy = -(out[u, ya] - out[u, ta])
                (g,) = torch.autograd.grad(diffy.sum(), [xg])
            grads[act] += 1
            with torch.no_grad():
                w = g.reshape(bs, -1)
                b = -diffy.detach() + (w * xa.reshape(bs, -1)).sum(dim=-1)
                d3 = project(torch.cat((xa.reshape(bs, -1), x0_all[act]), 0), torch.cat((w, w), 0),
                             torch.cat((b, b), 0))
                d1, d2 = d3[:bs].reshape(xa.shape), d3[-bs:].reshape(xa.shape)
                a0 = _lp(d3, norm).view(-1, *([1] * (nd - 1)))
                a0 = torch.max(a0, 1e-8 * torch.ones_like(a0))
                a1, a2 = a0[:bs], a0[-bs:]
                alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros_like(a1)),
                                  self.alpha_max * torch.ones_like(a1))
                xa = ((xa + self.eta * d1) * (1 - alpha) + (ia + d2 * self.eta) * alpha).clamp(0.0, 1.0)
                is_adv = ctx.model(xa).argmax(1) != ya
                queries[act] += 1
                if bool(is_adv.any()):
                    t = _lp(xa[is_adv] - ia[is_adv], norm)
                    rows = act[is_adv]
                    better = t < res2[rows]
                    adv[rows[better]] = xa[is_adv][better]
                    res2[rows] = torch.where(better, t, res2[rows])
                    xa[is_adv] = ia[is_adv] + (xa[is_adv] - ia[is_adv]) * self.beta
                # early exit: a row whose best example already fits in ε is broken at ε
                if group is None:
                    keep = res2[act] > ctx.eps
                else:
                    best = torch.full((n_groups,), 1e10, device=im2.device)
                    best.scatter_reduce_(0, group, res2, reduce="amin")
                    keep = best[group[act]] > ctx.eps
                act, x1 = act[keep], xa[keep]
        size = torch.where(res2 < 1e10, res2, torch.full_like(res2, float("inf")))
        return adv, size, grads, queries


# (iteration threshold, divisor of p_init once the iteration exceeds it), from the original p_selection
P_SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128), (6000, 256), (8000, 512))


@dataclass(frozen=True)
class Square(SuiteMember):
    """Square Attack (Andriushchenko et al. 2020), score-based black-box random search on the margin loss.

    L∞ and L2 follow the original; window positions (and L2's window orientation)
    come from one stream shared by all samples, as the original draws them once
    per batch; the per-sample signs come from each sample's own generator.
    """

    n_queries: int = 5000
    p_init: float = 0.8
    n_restarts: int = 1
    resc_schedule: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_queries < 1 or self.n_restarts < 1 or not 0 < self.p_init <= 1:
            raise ConfigError(f"attack {self.name!r}: n_queries, n_restarts ≥ 1 and 0 < p_init ≤ 1")

    def p_selection(self, it: int) -> float:
        if self.resc_schedule:
            it = int(it / self.n_queries * 10000)
        div = 1
        for bound, d in P_SCHEDULE:
            if it > bound:
                div = d
        return self.p_init / div

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        n = x.shape[0]
        gens = ctx.generators()
        shared = ctx.shared_generator()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_found = x.clone()
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        for _ in range(self.n_restarts):
            rows = (~found).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            run = self._single_run if ctx.norm.name == "linf" else self._single_run_l2
            hit, xb, q = run(ctx, x[rows], y[rows], [gens[i] for i in rows.tolist()], shared)
            queries[rows] += q
            found[rows[hit]] = True
            x_found[rows[hit]] = xb[hit]
        return MemberResult(x_found, found, torch.zeros(n, dtype=torch.int64, device=x.device), queries)

    @staticmethod
    def _margin(ctx: MemberContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = ctx.model(x)
        u = torch.arange(x.shape[0], device=x.device)
        y_corr = logits[u, y].clone()
        logits[u, y] = -float("inf")
        return y_corr - logits.max(dim=-1)[0]

    def _single_run(self, ctx: MemberContext, x: torch.Tensor, y: torch.Tensor, gens: list[torch.Generator],
                    shared: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        eps = ctx.eps
        c, h, w = x.shape[1:]
        n_features = c * h * w
        with torch.inference_mode():
            stripes = torch.stack([torch.sign(2 * torch.rand(c, 1, w, generator=g) - 1) for g in gens]).to(x.device)
            x_best = torch.clamp(x + eps * stripes, 0.0, 1.0)
            margin_min = self._margin(ctx, x_best, y)
            loss_min = margin_min.clone()
            queries = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)
            for i_iter in range(self.n_queries):
                idx = (margin_min > 0.0).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x_curr, x_best_curr, y_curr = x[idx], x_best[idx], y[idx]
                p = self.p_selection(i_iter)
                s = min(max(round(math.sqrt(p * n_features / c)), 1), min(h, w))
                vh = int((h - s) * torch.rand([1], generator=shared))
                vw = int((w - s) * torch.rand([1], generator=shared))
                sign = torch.sign(2 * torch.rand([c, 1, 1], generator=shared) - 1).to(x.device)
                new_deltas = torch.zeros([c, h, w], device=x.device)
                new_deltas[:, vh:vh + s, vw:vw + s] = 2.0 * eps * sign
                x_new = torch.min(torch.max(x_best_curr + new_deltas, x_curr - eps), x_curr + eps).clamp(0.0, 1.0)
                margin = self._margin(ctx, x_new, y_curr)
                loss = margin
                improved = (loss < loss_min[idx]).float()
                loss_min[idx] = improved * loss + (1.0 - improved) * loss_min[idx]
                improved = torch.max(improved, (margin <= 0.0).float())
                margin_min[idx] = improved * margin + (1.0 - improved) * margin_min[idx]
                imp = improved.view(-1, 1, 1, 1)
                x_best[idx] = imp * x_new + (1.0 - imp) * x_best_curr
                queries[idx] += 1
        return (margin_min <= 0.0).clone(), x_best.clone(), queries.clone()

    def _eta(self, s: int, shared: torch.Generator, device: torch.device) -> torch.Tensor:
        """The original's L2 square window: two opposite-signed stacked rectangles, unit L2 norm."""
        delta = torch.zeros([s, s])
        delta[: s // 2] = _eta_rectangles(s // 2, s)
        delta[s // 2:] = -1.0 * _eta_rectangles(s - s // 2, s)
        delta /= (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()
        if float(torch.rand([1], generator=shared)) > 0.5:
            delta = delta.permute([1, 0])
        return delta.to(device)

    def _single_run_l2(self, ctx: MemberContext, x: torch.Tensor, y: torch.Tensor, gens: list[torch.Generator],
                       shared: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        eps, dev = ctx.eps, x.device
        n, c, h, w = x.shape
        n_features = c * h * w
        # per-sample signs: 25 initial windows, then one draw per iteration
        signs = torch.stack([torch.sign(2 * torch.rand(25 + self.n_queries, c, generator=g) - 1)
                             for g in gens]).to(dev)
        with torch.inference_mode():
            delta_init = torch.zeros_like(x)
            s = h // 5
            sp_init = (h - s * 5) // 2
            vh, k = sp_init, 0
            for _ in range(h // s):
                vw = sp_init
                for _ in range(w // s):
                    sign = signs[:, min(k, 24)].view(n, c, 1, 1)
                    delta_init[:, :, vh:vh + s, vw:vw + s] += self._eta(s, shared, dev).view(1, 1, s, s) * sign
                    vw += s
                    k += 1
                vh += s
            x_best = torch.clamp(x + _normalize(delta_init, "l2") * eps, 0.0, 1.0)
            margin_min = self._margin(ctx, x_best, y)
            loss_min = margin_min.clone()
            queries = torch.ones(n, dtype=torch.int64, device=dev)
            for i_iter in range(self.n_queries):
                idx = (margin_min > 0.0).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x_curr, x_best_curr, y_curr = x[idx], x_best[idx], y[idx]
                delta_curr = x_best_curr - x_curr
                p = self.p_selection(i_iter)
                s = max(round(math.sqrt(p * n_features / c)), 3)
                s = min(s + 1 if s % 2 == 0 else s, min(h, w))
                vh = int((h - s) * torch.rand([1], generator=shared))
                vw = int((w - s) * torch.rand([1], generator=shared))
                vh2 = int((h - s) * torch.rand([1], generator=shared))
                vw2 = int((w - s) * torch.rand([1], generator=shared))
                norms_window_1 = (delta_curr[:, :, vh:vh + s, vw:vw + s] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
                mask_image = torch.zeros_like(x_curr)
                mask_image[:, :, vh:vh + s, vw:vw + s] = 1.0
                mask_image[:, :, vh2:vh2 + s, vw2:vw2 + s] = 1.0
                norms_image = _expand(_lp(x_best_curr - x_curr, "l2"), 4)
                norms_windows = ((delta_curr * mask_image) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
                sign = signs[idx, 25 + i_iter].view(-1, c, 1, 1)
                new_deltas = torch.ones([x_curr.shape[0], c, s, s], device=dev)
                new_deltas *= self._eta(s, shared, dev).view(1, 1, s, s) * sign
                new_deltas += delta_curr[:, :, vh:vh + s, vw:vw + s] / (1e-12 + norms_window_1)
                new_deltas = new_deltas / (1e-12 + (new_deltas**2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (
                    torch.max((eps * torch.ones_like(new_deltas)) ** 2 - norms_image**2,
                              torch.zeros_like(new_deltas)) / c + norms_windows**2).sqrt()
                delta_curr[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
                delta_curr[:, :, vh:vh + s, vw:vw + s] = new_deltas + 0
                x_new = torch.clamp(x_curr + _normalize(delta_curr, "l2") * eps, 0.0, 1.0)
                margin = self._margin(ctx, x_new, y_curr)
                improved = (margin < loss_min[idx]).float()
                loss_min[idx] = improved * margin + (1.0 - improved) * loss_min[idx]
                improved = torch.max(improved, (margin <= 0.0).float())
                margin_min[idx] = improved * margin + (1.0 - improved) * margin_min[idx]
                imp = improved.view(-1, 1, 1, 1)
                x_best[idx] = imp * x_new + (1.0 - imp) * x_best_curr
                queries[idx] += 1
        return (margin_min <= 0.0).clone(), x_best.clone(), queries.clone()


def _eta_rectangles(x: int, y: int) -> torch.Tensor:
    """Concentric rectangles weighted 1/(k+1)², unit L2 norm (the original's ``eta_rectangles`` for L2)."""
    delta = torch.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[max(c0, 0):min(c0 + (2 * counter + 1), x), max(0, c1):min(c1 + (2 * counter + 1), y)] += (
            1.0 / (counter + 1) ** 2)
        c0 -= 1
        c1 -= 1
    return delta / (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()
