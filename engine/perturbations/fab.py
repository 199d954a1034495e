"""FAB (Croce & Hein 2019/2020) ported from the original code as suite members: FAB-T and untargeted FAB.

Follows ``pyautoattack`` 0.2.0 ``fab_base.py`` / ``fab_pt.py`` (MIT licence): the
linearised boundary step, its projection (torchattacks' copies of the original's
``projection_linf`` / ``projection_l2``), the extrapolation η, the bias towards the
original point α_max, the backward step β and the random start of radius ε/2 for
restarts after the first. Differences (per-sample seeds, early exit once a sample's
example fits in ε, targets run together) are those listed in
:mod:`engine.perturbations.autoattack`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torchattacks.attacks.fab import projection_l2, projection_linf

from engine.perturbations.autoattack import expand_targets, lp_norm, random_start, target_chunks
from engine.perturbations.suite import MemberContext, MemberResult, SuiteMember, input_gradient


@dataclass(frozen=True)
class _FABBase(SuiteMember):
    """The FAB search shared by the targeted and untargeted members; subclasses choose the boundary to cross."""

    minimal_norm: ClassVar[bool] = True

    n_iter: int = 100
    n_restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("n_iter", "n_restarts")

    @property
    def eps_independent(self) -> bool:
        return self.n_restarts == 1  # later restarts start at a random point of radius ε/2

    @property
    def _per_call(self) -> int:
        """Target classes of a sample run together in one batch."""
        return 1

    def _targets(self, x: torch.Tensor, ctx: MemberContext) -> tuple[torch.Tensor | None, list[int]]:
        """(class ranking of the clean inputs or None, target ranks to attack; [0]: untargeted, one pass)."""
        raise NotImplementedError

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        n = x.shape[0]
        gens = ctx.generators()
        best = x.clone()
        size = torch.full((n,), float("inf"), device=x.device)
        grads = torch.zeros(n, dtype=torch.int64, device=x.device)
        order, ranks = self._targets(x, ctx)
        queries = torch.full((n,), int(order is not None), dtype=torch.int64, device=x.device)  # the ranking
        for chunk in target_chunks(ranks, self._per_call, ctx.max_rows, lambda: int((size > ctx.eps).sum())):
            for restart in range(self.n_restarts):
                rows = (size > ctx.eps).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                sample, target = expand_targets(rows, chunk, order)
                x1 = x[sample]
                if restart > 0:  # the original's random start for later restarts: radius ε/2 around x
                    x1 = random_start(x1, 0.5 * ctx.eps, ctx.norm.name, [gens[i] for i in sample.tolist()])
                    x1 = x1.clamp(0.0, 1.0)
                group = sample if len(chunk) > 1 else None
                adv, res, g, q = self._single_run(ctx, x[sample], y[sample], target, x1, group)
                grads.index_add_(0, sample, g)
                queries.index_add_(0, sample, q)
                for j in range(len(chunk)):  # in rank order: on a tie the earlier target's example stays
                    resj = res[j::len(chunk)]
                    better = resj < size[rows]
                    size[rows[better]] = resj[better]
                    best[rows[better]] = adv[j::len(chunk)][better]
        success = size <= ctx.eps
        return MemberResult(best, success, grads, queries, size=size, exhaustive=~success)

    def _linearise(self, ctx: MemberContext, xa: torch.Tensor, ya: torch.Tensor, ta: torch.Tensor | None,
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(f, ∇f flattened, gradient evaluations per row): the decision function f = logit_c − logit_y whose
        zero set the step projects onto."""
        raise NotImplementedError

    def _single_run(self, ctx: MemberContext, im2: torch.Tensor, la2: torch.Tensor, la_t: torch.Tensor | None,
                    x1: torch.Tensor, group: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One FAB run (targeted when ``la_t`` is given); returns (best example, its norm (inf: none),
        gradients, queries) per row.

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
            xa, ya, ia = x1, la2[act], im2[act]
            bs = xa.shape[0]
            f, w, cost = self._linearise(ctx, xa, ya, la_t[act] if la_t is not None else None)
            grads[act] += cost
            ctx.spent(bs * (cost + 1))  # the linearisation and the query below, per row still searching
            with torch.no_grad():
                b = -f + (w * xa.reshape(bs, -1)).sum(dim=-1)
                d3 = project(torch.cat((xa.reshape(bs, -1), x0_all[act]), 0), torch.cat((w, w), 0),
                             torch.cat((b, b), 0))
                d1, d2 = d3[:bs].reshape(xa.shape), d3[-bs:].reshape(xa.shape)
                a0 = lp_norm(d3, norm).view(-1, *([1] * (nd - 1)))
                a0 = torch.max(a0, 1e-8 * torch.ones_like(a0))
                a1, a2 = a0[:bs], a0[-bs:]
                alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros_like(a1)),
                                  self.alpha_max * torch.ones_like(a1))
                xa = ((xa + self.eta * d1) * (1 - alpha) + (ia + d2 * self.eta) * alpha).clamp(0.0, 1.0)
                is_adv = ctx.model(xa).argmax(1) != ya
                queries[act] += 1
                if bool(is_adv.any()):
                    t = lp_norm(xa[is_adv] - ia[is_adv], norm)
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


@dataclass(frozen=True)
class FABTargeted(_FABBase):
    """FAB-T (Croce & Hein 2019/2020): targeted minimal-norm attack against the top ``n_target_classes``.

    The search minimises ‖δ‖; a sample counts as broken at ε when its smallest
    adversarial example has norm ≤ ε. With one restart it draws nothing random,
    so one search serves every ε of a curve. ``target_batch`` runs that many
    targets of a sample in one batch (same verdicts).
    """

    n_target_classes: int = 9
    target_batch: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("n_target_classes", "target_batch")

    @property
    def _per_call(self) -> int:
        return self.target_batch

    @property
    def planned_evals(self) -> int:
        return self.n_iter * self.n_restarts * self.n_target_classes * 2  # a gradient and a query per iteration

    def _targets(self, x: torch.Tensor, ctx: MemberContext) -> tuple[torch.Tensor | None, list[int]]:
        with torch.no_grad():
            order = ctx.model(x).sort(dim=-1)[1]
        return order, list(range(2, min(self.n_target_classes, ctx.num_classes - 1) + 2))

    def _linearise(self, ctx: MemberContext, xa: torch.Tensor, ya: torch.Tensor, ta: torch.Tensor | None,
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
        assert ta is not None
        u = torch.arange(xa.shape[0], device=xa.device)
        xg = xa.clone().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.model(xg)
            diffy = -(out[u, ya] - out[u, ta])
            g = input_gradient(diffy.sum(), xg)  # zeros when the model broke the graph
        return diffy.detach(), g.reshape(xa.shape[0], -1), 1


@dataclass(frozen=True)
class FAB(_FABBase):
    """Untargeted FAB (Croce & Hein 2020), the ``fab`` of AutoAttack's plus version.

    Each step linearises every class against the true one (one gradient per class:
    the full Jacobian, as the original's ``get_diff_logits_grads_batch``) and heads
    for the closest linearised boundary. Restarts after the first start at a random
    point of radius ε/2, so with ``n_restarts`` > 1 the search depends on ε and runs
    at every ε of a curve.
    """

    def _targets(self, x: torch.Tensor, ctx: MemberContext) -> tuple[torch.Tensor | None, list[int]]:
        return None, [0]

    def _linearise(self, ctx: MemberContext, xa: torch.Tensor, ya: torch.Tensor, ta: torch.Tensor | None,
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
        bs = xa.shape[0]
        u = torch.arange(bs, device=xa.device)
        xg = xa.clone().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.model(xg)
            k = out.shape[1]
            jac = torch.stack([input_gradient(out[:, c].sum(), xg, retain_graph=c < k - 1)
                               for c in range(k)], dim=1).reshape(bs, k, -1)
        out = out.detach()
        df = out - out[u, ya].unsqueeze(1)
        dg = jac - jac[u, ya].unsqueeze(1)
        df[u, ya] = 1e10
        # distance to each linearised boundary, in the norm's dual (L∞ → L1, L2 → L2)
        dual = dg.abs().sum(dim=-1) if ctx.norm.name == "linf" else (dg**2).sum(dim=-1).sqrt()
        ind = (df.abs() / (1e-12 + dual)).min(dim=1)[1]
        return df[u, ind], dg[u, ind], k
