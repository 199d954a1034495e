"""RayS (Chen & Gu 2020), the hard-label L∞ ray search, through the oracle.

Follows the authors' ``RayS.py`` (github.com/uclaml/RayS): the search is over sign vectors s ∈ {−1, 1}^d;
each direction's boundary distance along s/‖s‖ is found by a line search (radius 1…10 along s) the first
time and afterwards by one check at the best distance so far followed by a bisection to ``tol``; directions
come from flipping the sign of blocks in a hierarchy (1 block, 2, 4, … each the next half of the last),
a flip kept when it moves the boundary closer. It stops a sample when its L∞ distance is within ε (early
stopping, as the reference does) or its budget is spent. The search draws no random numbers besides the dither
below, so a sample's result depends on nothing but its own answers and its own seed.

**Dither (a departure for the 8-bit grid).** On an image already on the 8-bit grid (CIFAR, PNG folders, any image
an endpoint has received) every pixel of x + t·s rounds to the same whole number of grey levels, so the image along
a direction changes all at once at each half level and the bisection has nothing between two levels to work
with; measured on the first 30 digits through an 8-bit oracle, RayS at ε = 0.1 left 70 % of digits_cnn standing
on the rounded digits against 33 % on the same digits off the grid (docs/BENCHMARKS.md). Each sample gets a
fixed per-pixel offset u ∈ (−½, ½) grey level (its own generator: global seed, sample id, name, ε), added before
rounding, so pixels step at different t along a ray, as they do for an image off the grid. The offset never
widens the ball: the example is the sent pixels and its distance is measured on them. ``dither: false`` restores
the reference's plain rounding (and a search that draws nothing).

Samples run in lockstep (one query per sample per step, batched), which changes nothing for any one sample:
the block schedule depends only on the iteration. A bisection point whose sent pixels equal an end already
answered is not asked again (its answer is known; the 8-bit grid makes the last bisection steps repeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.errors import ConfigError
from engine.perturbations.base import BatchContext
from engine.perturbations.query import Asker, Found, OutOfBudget, QueryAttack


@dataclass
class _Rays:
    """Per-row search state, rows of the pool."""

    x: torch.Tensor  # clean inputs
    sgn: torch.Tensor  # best sign vector so far
    d_t: torch.Tensor  # best boundary distance along sgn/‖sgn‖ (inf: none yet), float64
    x_final: torch.Tensor  # the example at d_t (sent pixels)
    active: torch.Tensor  # bool: still searching (not broken, budget left)
    dither: torch.Tensor | None = None  # per-pixel offsets in (−½, ½) grey level, fixed per sample (module doc)


@dataclass(frozen=True)
class RayS(QueryAttack):
    """RayS, untargeted, L∞ (module docstring)."""

    norms: ClassVar[tuple[str, ...]] = ("linf",)

    lin_search_rad: int = 10
    tol: float = 1e-3
    dither: bool = True  # grey-level dither before rounding (module doc); false: the reference's plain rounding

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lin_search_rad < 1 or not self.tol > 0:
            raise ConfigError(f"perturbation {self.name!r}: lin_search_rad ≥ 1 and tol > 0")

    def search(self, ask: Asker, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, level: float,
               ctx: BatchContext) -> Found:
        xs = x[pool.to(x.device)]
        n, dim = xs.shape[0], xs[0].numel()
        st = _Rays(xs, torch.ones_like(xs), torch.full((n,), math.inf, dtype=torch.float64), xs.clone(),
                   torch.ones(n, dtype=torch.bool), self._dither(ctx, pool, level, xs) if self.dither else None)
        block_level, block_ind = 0, 0
        for _ in range(self.budget):
            if not bool(st.active.any()):
                break
            block_num = 2**block_level
            block_size = math.ceil(dim / block_num)
            start, end = block_ind * block_size, min(dim, (block_ind + 1) * block_size)
            attempt = st.sgn.clone().flatten(1)
            attempt[:, start:end] *= -1.0
            self._binary_search(ask, pool, st, attempt.view_as(xs))
            block_ind += 1
            if block_ind == 2**block_level or end == dim:
                block_level, block_ind = block_level + 1, 0
            dist = self.ball.measure(st.x_final - xs)
            st.active &= ~(torch.isfinite(st.d_t) & (dist <= self.ball.bound(level))).cpu()
        claimed = torch.isfinite(st.d_t) & (self.ball.measure(st.x_final - xs) <= self.ball.bound(level)).cpu()
        return Found(st.x_final, claimed)

    def _adv(self, ask: Asker, pool: torch.Tensor, st: _Rays, rows: torch.Tensor,
             imgs: torch.Tensor) -> torch.Tensor:
        """Ask about ``imgs`` for ``rows`` (of the pool) that can pay; rows that cannot stop searching.

        Returns the decision per row; rows that were not asked read False (and are no longer active)."""
        left = ask.left(pool[rows])
        can = (left > 0).to(rows.device)
        st.active[rows[~can].cpu()] = False
        out = torch.zeros(len(rows), dtype=torch.bool)
        if bool(can.any()):
            try:
                out[can.cpu()] = ask.wrong(imgs[can.to(imgs.device)], pool[rows[can]]).cpu()
            except OutOfBudget:  # the run's budget is spent: every sample stops with what it has
                st.active[:] = False
        return out

    def _dither(self, ctx: BatchContext, pool: torch.Tensor, level: float, xs: torch.Tensor) -> torch.Tensor:
        """Per sample (its own generator), per pixel: a fixed offset in (−½, ½) grey level added before rounding."""
        gens = self.generators(ctx, pool, level)
        u = torch.stack([torch.rand(xs.shape[1:], generator=g, dtype=torch.float64) for g in gens]) - 0.5
        return (u / 255.0).to(xs.device, xs.dtype)

    def _at(self, ask: Asker, st: _Rays, rows: torch.Tensor, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The sent pixels of clamp(x + d·v) for ``rows`` (plus the row's dither, before rounding)."""
        dev = st.x.device
        out = st.x[rows.to(dev)] + d.to(dev, st.x.dtype).view(-1, 1, 1, 1) * v
        if st.dither is not None:
            out = out + st.dither[rows.to(dev)]
        return ask.oracle.sent(out.clamp(0.0, 1.0))

    def _binary_search(self, ask: Asker, pool: torch.Tensor, st: _Rays, attempt: torch.Tensor) -> None:
        """The reference ``binary_search`` for every active row, in lockstep; keeps a direction that is closer."""
        dev = st.x.device
        rows = st.active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        unit = attempt[rows.to(dev)] / attempt[rows.to(dev)].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d_end = torch.full((len(rows),), math.inf, dtype=torch.float64)
        have = torch.isfinite(st.d_t[rows])
        if bool(have.any()):  # one check at the best distance so far
            r = rows[have]
            ok = self._adv(ask, pool, st, r, self._at(ask, st, r, unit[have.to(dev)], st.d_t[r]))
            d_end[have.nonzero().squeeze(1)[ok]] = st.d_t[r][ok]
        new = (~have & st.active[rows]).nonzero().squeeze(1)
        if new.numel():  # first direction: line search along the unnormalised sign vector
            self._line_search(ask, pool, st, rows, attempt, new, d_end)
        go = torch.isfinite(d_end) & st.active[rows]
        if not bool(go.any()):
            return
        sel = go.nonzero().squeeze(1)
        found, img = self._bisect(ask, pool, st, rows[sel], unit[sel.to(dev)], d_end[sel])
        better = found < st.d_t[rows[sel]]
        upd = rows[sel][better]
        st.d_t[upd] = found[better]
        st.x_final[upd.to(dev)] = img[better.to(dev)]
        st.sgn[upd.to(dev)] = attempt[upd.to(dev)]

    def _line_search(self, ask: Asker, pool: torch.Tensor, st: _Rays, rows: torch.Tensor, attempt: torch.Tensor,
                     new: torch.Tensor, d_end: torch.Tensor) -> None:
        """d = 1 … lin_search_rad along the sign vector; the first adversarial d times ‖s‖ ends the search."""
        dev = st.x.device
        todo = new.clone()
        for d in range(1, self.lin_search_rad + 1):
            todo = todo[st.active[rows[todo]]]
            if todo.numel() == 0:
                return
            r = rows[todo]
            v = attempt[r.to(dev)]
            ok = self._adv(ask, pool, st, r, self._at(ask, st, r, v, torch.full((len(r),), float(d))))
            d_end[todo[ok]] = d * attempt[r[ok].to(dev)].flatten(1).norm(dim=1).double().cpu()
            todo = todo[~ok]

    def _bisect(self, ask: Asker, pool: torch.Tensor, st: _Rays, rows: torch.Tensor, unit: torch.Tensor,
                d_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bisect [0, d_end] to ``tol`` per row; returns the adversarial end and its pixels (rows that run out
        of budget keep the end reached so far, which the target already confirmed)."""
        d_start = torch.zeros_like(d_end)
        at_end = self._at(ask, st, rows, unit, d_end)
        at_start = self._at(ask, st, rows, unit, d_start)
        while True:
            go = ((d_end - d_start) > self.tol) & st.active[rows]
            if not bool(go.any()):
                return d_end, at_end
            g = go.nonzero().squeeze(1)
            gd = g.to(unit.device)
            mid = (d_start[g] + d_end[g]) / 2.0
            img = self._at(ask, st, rows[g], unit[gd], mid)
            same_end = (img == at_end[gd]).flatten(1).all(1).cpu()
            same_start = (img == at_start[gd]).flatten(1).all(1).cpu() & ~same_end
            adv = same_end.clone()
            ask_rows = ~(same_end | same_start)
            if bool(ask_rows.any()):
                adv[ask_rows] = self._adv(ask, pool, st, rows[g[ask_rows]], img[ask_rows.to(img.device)])
                lost = ask_rows & ~st.active[rows[g]]  # out of budget mid-bisection: keep the confirmed end
                adv[lost], same_start[lost] = False, False
                d_start[g[lost]] = d_end[g[lost]]
            up = adv.nonzero().squeeze(1)
            down = (~adv & (same_start | ask_rows)).nonzero().squeeze(1)
            down = down[st.active[rows[g[down]]]]
            d_end[g[up]], at_end[gd[up.to(gd.device)]] = mid[up], img[up.to(img.device)]
            d_start[g[down]], at_start[gd[down.to(gd.device)]] = mid[down], img[down.to(img.device)]
