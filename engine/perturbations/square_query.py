"""Square Attack through the oracle: the suite member's algorithm (engine/perturbations/square.py), its margins
asked of the target's scores, each candidate put on the pixels the target receives, every query counted.

The random draws are the member's (window positions from one stream indexed by iteration, signs from each
sample's own generator), so a sample's result does not depend on its batch. A sample that cannot pay for
another query stops; its best example so far is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.errors import ConfigError
from engine.perturbations.base import BatchContext
from engine.perturbations.norms import Norm
from engine.perturbations.query import Asker, Found, Needs, OutOfBudget, QueryAttack, grid_ball
from engine.perturbations.square import Scorer, Square
from engine.perturbations.suite import MemberContext
from engine.seeding import derive_seed


class OracleScorer(Scorer):
    """Margins from the oracle's scores for the run's rows (``pool`` rows of the batch)."""

    def __init__(self, ctx: MemberContext, ask: Asker, pool: torch.Tensor, x: torch.Tensor, norm: Norm) -> None:
        super().__init__(ctx)
        self.ask, self.pool, self.x, self.norm = ask, pool, x, norm
        self.alive = torch.ones(len(pool), dtype=torch.bool)

    def _sel(self, idx: torch.Tensor | None) -> torch.Tensor:
        return torch.arange(len(self.pool)) if idx is None else idx.cpu()

    def margin(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        sel = self._sel(idx)
        out = torch.full((len(sel),), float("inf"), dtype=torch.float64, device=x.device)
        pay = (self.ask.left(self.pool[sel]) > 0) & self.alive[sel]
        self.alive[sel[~pay]] = False
        if bool(pay.any()):
            try:
                out[pay.to(x.device)] = self.ask.margins(x[pay.to(x.device)], self.pool[sel[pay]])
            except OutOfBudget:  # cannot happen after the check above; the rows stop rather than crash
                self.alive[sel] = False
        return out

    def place(self, x_clean: torch.Tensor, cand: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return grid_ball(self.ask.oracle, x_clean, cand, self.norm, self.ctx.eps)

    def live(self, n: int, device: torch.device) -> torch.Tensor:
        return self.alive.to(device)


@dataclass(frozen=True)
class SquareQuery(QueryAttack):
    """Square Attack (L∞, L2) on a target's scores, ``budget`` queries per sample and ε (AutoAttack's 5,000)."""

    needs: ClassVar[Needs] = "scores"

    budget: int = 5_000
    p_init: float = 0.8
    resc_schedule: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.p_init <= 1:
            raise ConfigError(f"perturbation {self.name!r}: 0 < p_init ≤ 1")

    def search(self, ask: Asker, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, level: float,
               ctx: BatchContext) -> Found:
        member = Square(name=self.name or "square", n_queries=self.budget, p_init=self.p_init,
                        resc_schedule=self.resc_schedule)
        ids = [int(ctx.sample_ids[int(r)]) for r in pool.tolist()]
        mctx = MemberContext(model=ctx.model, norm=self.ball, eps=level, num_classes=ask.oracle.num_classes,
                             sample_seeds=tuple(derive_seed(ctx.seed, s, self.name, level) for s in ids),
                             shared_seed=derive_seed(ctx.seed, self.name, level), max_rows=int(x.shape[0]))
        xs, ys = x[pool.to(x.device)], y[pool.to(x.device)]
        scorer = OracleScorer(mctx, ask, pool, xs, self.ball)
        run = member._single_run if self.ball.name == "linf" else member._single_run_l2
        hit, x_best, _ = run(mctx, xs, ys, mctx.generators(), mctx.shared_generator(), scorer)
        return Found(x_best, hit.cpu())
