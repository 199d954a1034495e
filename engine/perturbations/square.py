"""Square Attack (Andriushchenko et al. 2020), ported from the original code as a suite member.

Follows ``pyautoattack`` 0.2.0 ``square.py`` (MIT licence); checked draw for draw
against it in tests/test_attacks.py (L∞).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import ConfigError
from engine.perturbations.autoattack import expand_rows, lp_norm, normalize
from engine.perturbations.suite import MemberContext, MemberResult, SuiteMember

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

    @property
    def planned_evals(self) -> int:
        return self.n_queries * self.n_restarts

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
            ctx.spent(x.shape[0])
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
                self._keep_better(self._margin(ctx, x_new, y_curr), idx, x_new, x_best_curr, loss_min, margin_min,
                                  x_best, queries)
                ctx.spent(int(idx.numel()))  # one query per row still unbroken: a broken row stops counting
        return (margin_min <= 0.0).clone(), x_best.clone(), queries.clone()

    @staticmethod
    def _keep_better(margin: torch.Tensor, idx: torch.Tensor, x_new: torch.Tensor, x_best_curr: torch.Tensor,
                     loss_min: torch.Tensor, margin_min: torch.Tensor, x_best: torch.Tensor,
                     queries: torch.Tensor) -> None:
        """The original's acceptance rule (margin loss): keep a candidate that lowers the loss or fools the model."""
        improved = (margin < loss_min[idx]).float()
        loss_min[idx] = improved * margin + (1.0 - improved) * loss_min[idx]
        improved = torch.max(improved, (margin <= 0.0).float())
        margin_min[idx] = improved * margin + (1.0 - improved) * margin_min[idx]
        imp = improved.view(-1, *([1] * (x_new.ndim - 1)))
        x_best[idx] = imp * x_new + (1.0 - imp) * x_best_curr
        queries[idx] += 1

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
            x_best = torch.clamp(x + normalize(delta_init, "l2") * eps, 0.0, 1.0)
            margin_min = self._margin(ctx, x_best, y)
            loss_min = margin_min.clone()
            queries = torch.ones(n, dtype=torch.int64, device=dev)
            ctx.spent(n)
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
                norms_image = expand_rows(lp_norm(x_best_curr - x_curr, "l2"), 4)
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
                x_new = torch.clamp(x_curr + normalize(delta_curr, "l2") * eps, 0.0, 1.0)
                self._keep_better(self._margin(ctx, x_new, y_curr), idx, x_new, x_best_curr, loss_min, margin_min,
                                  x_best, queries)
                ctx.spent(int(idx.numel()))  # one query per row still unbroken: a broken row stops counting
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
