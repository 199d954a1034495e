"""APGD (CE, DLR, targeted DLR) ported from the original AutoAttack as a suite member, and what the ports share.

The AutoAttack members live in three modules: APGD here, FAB in
:mod:`engine.perturbations.fab`, Square in :mod:`engine.perturbations.square`.
Parameters, schedules, losses and update rules follow Croce & Hein's original
implementation (``pyautoattack`` 0.2.0: ``autopgd_base.py``, ``fab_base.py``,
``square.py``; MIT licence). What differs, on purpose, in all three:

* Random draws come from per-sample generators seeded by (global seed, sample id,
  suite, member, ε), or for Square's window positions from one stream shared by
  every batch, never from the clock or the global RNG, so a sample's result does
  not depend on its batch.
* A sample leaves the working batch as soon as it is broken at the current ε
  (the original keeps iterating on it). Every per-sample computation of these
  attacks is independent of the other rows, so this changes no verdict, only the
  cost; the example returned is the first adversarial iterate found. Under EOT
  (``eot`` > 1, a randomised model) one misclassified draw is luck, not a break:
  APGD keeps iterating, as the original does, and returns the iterate
  misclassified by the largest share of its EOT draws (the latest on ties, as the
  original keeps the last misclassified iterate); a row leaves early only when
  every draw of an iterate misclassifies it, and its restarts go on until then.
* Redundant forward passes are dropped (target ranking is computed once per
  call; the last APGD iteration does not compute a gradient nobody uses).
* Targeted members may run several target classes of a sample in one batch
  (``target_batch``, see :func:`expand_targets`); verdicts are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.errors import ConfigError
from engine.perturbations.suite import MemberContext, MemberResult, SuiteMember, input_gradient

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def expand_rows(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view(-1, *([1] * (ndim - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else (flat**2).sum(1).sqrt()


def normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (expand_rows(lp_norm(t, norm), t.ndim) + 1e-12)


def project_l2_ball(x: torch.Tensor, x1: torch.Tensor, eps: float) -> torch.Tensor:
    """The original's L2 projection: shrink x1 − x to norm ≤ ε, then clip to [0, 1]."""
    delta = x1 - x
    return torch.clamp(x + normalize(delta, "l2") * torch.clamp(expand_rows(lp_norm(delta, "l2"), x.ndim), max=eps),
                       0.0, 1.0)


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


def random_start(x: torch.Tensor, eps: float, norm: str, gens: list[torch.Generator]) -> torch.Tensor:
    """x + ε·t/‖t‖ with t uniform in [-1, 1] (L∞) or Gaussian (L2), drawn per sample."""
    shape = x.shape[1:]
    if norm == "linf":
        t = torch.stack([2 * torch.rand(shape, generator=g) - 1 for g in gens])
    else:
        t = torch.stack([torch.randn(shape, generator=g) for g in gens])
    t = t.to(x.device)
    return x + eps * torch.ones_like(x) * normalize(t, norm)


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
        self.require_positive("n_iter", "n_restarts", "eot", "n_target_classes", "target_batch")
        if not 0 < self.rho < 1:
            raise ConfigError(f"attack {self.name!r}: rho must be in (0, 1)")

    @property
    def eot_iter(self) -> int:
        return self.eot

    @property
    def planned_evals(self) -> int:
        targets = self.n_target_classes if self.loss == "dlr-targeted" else 1
        return self.n_iter * self.n_restarts * self.eot * targets

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
        best = torch.zeros(n, device=x.device)  # share of the EOT draws that misclassify the best example
        for chunk in target_chunks(ranks, self.target_batch, ctx.max_rows, lambda: int((~found).sum())):
            for _ in range(self.n_restarts):
                rows = (~found).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                sample, target = expand_targets(rows, chunk, order)
                # each sample draws its starts from its own generator; with one restart in the order one
                # target at a time would draw them
                start = random_start(x[sample], ctx.eps, ctx.norm.name, [gens[i] for i in sample.tolist()])
                group = sample if len(chunk) > 1 else None
                share, x_hit, cost, q = self._run_shares(ctx, x[sample], y[sample], target, start, group)
                grads.index_add_(0, sample, cost)
                queries.index_add_(0, sample, q)
                for r in (share > 0).nonzero().squeeze(1).tolist():  # at most one row per sample without EOT
                    s = int(sample[r])
                    if share[r] > best[s]:
                        best[s], x_found[s] = share[r], x_hit[r]
                found[:] = best >= 1  # every draw misclassifies it (without EOT: the one draw): no more restarts
        return MemberResult(x_found, best > 0, grads, queries)

    def _grad(self, ctx: MemberContext, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean gradient over ``eot`` passes, the share of those passes that misclassify each row, and the
        per-sample loss of the last pass."""
        loss_fn = LOSSES[self.loss]
        if not need_grad:  # the last iterate: its share of misclassifying draws, from ``eot`` plain passes
            with torch.no_grad():
                wrong = torch.zeros(x_adv.shape[0], device=x_adv.device)
                for _ in range(self.eot):
                    logits = ctx.model(x_adv)
                    wrong += (logits.argmax(1) != y).float()
                return torch.zeros_like(x_adv), wrong / float(self.eot), loss_fn(logits, y, target)
        grad = torch.zeros_like(x_adv)
        wrong = torch.zeros(x_adv.shape[0], device=x_adv.device)
        for _ in range(self.eot):
            xg = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = ctx.model(xg)
                loss_indiv = loss_fn(logits, y, target)
                g = input_gradient(loss_indiv.sum(), xg)  # zeros when the model broke the graph
            grad += g.detach()
            wrong += (logits.detach().argmax(1) != y).float()
        return grad / float(self.eot), wrong / float(self.eot), loss_indiv.detach()

    def _step(self, s: _APGDRows, eps: float, norm: str, a: float) -> torch.Tensor:
        """One momentum step of the original (two projections, momentum ``a``)."""
        x, x_adv, grad2 = s.x, s.x_adv, s.x_adv - s.x_old
        if norm == "linf":
            x1 = x_adv + s.step * torch.sign(s.grad)
            x1 = torch.clamp(torch.min(torch.max(x1, x - eps), x + eps), 0.0, 1.0)
            return torch.clamp(torch.min(torch.max(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps),
                               0.0, 1.0)
        x1 = x_adv + s.step * normalize(s.grad, norm)
        x1 = project_l2_ball(x, x1, eps)
        x1 = x_adv + (x1 - x_adv) * a + grad2 * (1 - a)
        return project_l2_ball(x, x1, eps)

    def _single_run(self, ctx: MemberContext, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                    start: torch.Tensor, group: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run from ``start``; returns (broken, example, gradient evaluations, queries) per row (under
        EOT, "broken": some draw misclassified the example returned).

        With ``group`` (the sample of each row, rows of a sample adjacent), a sample
        leaves as soon as any of its rows is broken; only that row counts as a hit.
        """
        share, x_hit, cost, queries = self._run_shares(ctx, x, y, target, start, group)
        return share > 0, x_hit, cost, queries

    def _run_shares(self, ctx: MemberContext, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                    start: torch.Tensor, group: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_single_run`, with the share of the draws misclassifying each row's example (without EOT: 1 for
        a broken row, else 0) in place of "broken"."""
        n, eps, norm = x.shape[0], ctx.eps, ctx.norm.name
        hit = torch.zeros(n, device=x.device)
        x_hit = x.clone()
        cost = torch.full((n,), self.eot, dtype=torch.int64, device=x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        x_adv = start.clamp(0.0, 1.0)
        grad, wrong, loss = self._grad(ctx, x_adv, y, target, need_grad=True)
        ctx.spent(n * self.eot)
        n_iter_2 = max(int(0.22 * self.n_iter), 1)
        n_iter_min, size_decr = max(int(0.06 * self.n_iter), 1), max(int(0.03 * self.n_iter), 1)
        s = _APGDRows(
            idx=torch.arange(n, device=x.device), x=x, y=y, target=target, x_adv=x_adv, x_old=x_adv.clone(),
            grad=grad, x_best=x_adv.clone(), grad_best=grad.clone(), loss_best=loss.clone(),
            step=2.0 * eps * torch.ones([n, *([1] * (x.ndim - 1))], device=x.device),
            loss_steps=torch.zeros(self.n_iter, n, device=x.device),
            loss_best_last=loss.clone(), reduced_last=torch.ones_like(loss), group=group,
        )
        self._retire(s, wrong, hit, x_hit)
        k, counter3 = n_iter_2, 0
        for i in range(self.n_iter):
            if s.idx.numel() == 0:
                break
            new = self._step(s, eps, norm, 0.75 if i > 0 else 1.0)
            s.x_old, s.x_adv = s.x_adv, new
            last = i == self.n_iter - 1
            s.grad, wrong, loss = self._grad(ctx, s.x_adv, s.y, s.target, need_grad=not last)
            ctx.spent(int(s.idx.numel()) * self.eot)
            if last:
                queries[s.idx] += self.eot
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
            self._retire(s, wrong, hit, x_hit)
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
    def _retire(s: _APGDRows, wrong: torch.Tensor, hit: torch.Tensor, x_hit: torch.Tensor) -> None:
        """Rows misclassified by every draw at the current iterate are broken: record them and drop them from the
        batch. Under EOT, an iterate that some draws misclassify is kept when no earlier one was misclassified
        by a larger share (``hit``), and the row goes on."""
        partial = (wrong > 0) & (wrong < 1)
        if bool(partial.any()):
            better = partial & (wrong >= hit[s.idx])
            rows = s.idx[better]
            hit[rows] = wrong[better]
            x_hit[rows] = s.x_adv[better]
        solid = wrong >= 1
        if not bool(solid.any()):
            return
        if s.group is None:
            first, drop = solid, solid
        else:
            first, drop = _first_in_group(solid, s.group)
        rows = s.idx[first]
        hit[rows] = 1.0
        x_hit[rows] = s.x_adv[first]
        s.keep(~drop)


def target_chunks(ranks: list[int], target_batch: int, max_rows: int, remaining: Callable[[], int],
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
