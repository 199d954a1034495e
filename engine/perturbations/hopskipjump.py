"""HopSkipJump (Chen, Jordan & Wainwright 2020), the decision-based attack, L2 and L∞, through the oracle.

Follows the authors' ``hsja.py`` (github.com/Jianbo-Lab/HSJA): a random adversarial start blended towards the
input by binary search; then per iteration t: the boundary gradient estimated from ``init_num_evals·√t``
(capped at ``max_num_evals``) random probes at radius δ, a geometric step search from ``dist/√t`` halving
until the step stays adversarial, and a binary search back to the boundary (L2: along the blend; L∞: the
clip radius, threshold ``min(θ·dist, θ)``), with θ = γ/(d√d) (L2) or γ/d² (L∞). Label only.

What the target receives is on the 8-bit grid (``oracle.sent``), so two changes, both documented in
docs/attacks.md: δ is kept at least √d/255 (a probe below one grid step is rounded away and answers
nothing), and a binary-search point whose sent pixels equal an end already answered is not asked again
(its answer is known). The attack stops a sample as soon as its example lies within ε (it is then broken)
or when its budget is spent; the example returned is the last one the target confirmed adversarial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.errors import ConfigError
from engine.perturbations.base import BatchContext
from engine.perturbations.query import Asker, Found, OutOfBudget, QueryAttack

Decide = Callable[[torch.Tensor], torch.Tensor]  # images (k×C×H×W) → adversarial? (bool, k)
Send = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HopSkipJump(QueryAttack):
    """HopSkipJump, untargeted, geometric step search (module docstring); one sample at a time."""

    gamma: float = 1.0
    init_num_evals: int = 100
    max_num_evals: int = 10_000
    max_iterations: int = 10_000  # the budget usually ends the search first
    init_tries: int = 100  # random starts tried before a sample is given up as not attackable

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("init_num_evals", "max_num_evals", "max_iterations", "init_tries"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"perturbation {self.name!r}: {key} must be ≥ 1")
        if not self.gamma > 0:
            raise ConfigError(f"perturbation {self.name!r}: gamma must be > 0")

    def search(self, ask: Asker, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, level: float,
               ctx: BatchContext) -> Found:
        x_adv = x[pool.to(x.device)].clone()
        claimed = torch.zeros(len(pool), dtype=torch.bool)
        for k, (r, gen) in enumerate(zip(pool.tolist(), self.generators(ctx, pool, level), strict=True)):
            x_adv[k], claimed[k] = self._one(ask, x[r], r, gen, level)
        return Found(x_adv, claimed)

    def _dist(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(self.ball.measure((a - b)[None])[0])

    def _one(self, ask: Asker, x0: torch.Tensor, r: int, gen: torch.Generator, eps: float) -> tuple[torch.Tensor,
                                                                                                     bool]:
        """One sample's HopSkipJump; returns its last confirmed adversarial example and whether it is within ε."""
        send: Send = ask.oracle.sent
        linf = self.ball.name == "linf"
        d = x0.numel()
        theta = self.gamma / (d * d) if linf else self.gamma / (math.sqrt(d) * d)

        def decide(imgs: torch.Tensor) -> torch.Tensor:
            return ask.wrong(imgs, torch.full((imgs.shape[0],), r, dtype=torch.int64)).cpu()

        best: torch.Tensor | None = None
        try:
            start = self._initialize(decide, send, x0, gen)
            if start is None:
                return x0, False
            best, dist_post = self._binary_search(decide, send, x0, start, theta)
            dist = self._dist(best, x0)
            for t in range(1, self.max_iterations + 1):
                if dist <= self.ball.bound(eps):
                    break
                delta = 0.1 if t == 1 else (d * theta if linf else math.sqrt(d) * theta) * dist_post
                delta = max(delta, math.sqrt(d) / 255)  # a probe below one grid step is rounded away
                num_evals = min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)
                num_evals = min(num_evals, int(ask.left(torch.tensor([r]))[0]) - 1)
                if num_evals < 2:
                    break
                grad = self._gradient(decide, send, best, num_evals, delta, gen)
                update = grad.sign() if linf else grad
                step = self._step_size(decide, send, best, update, dist, t)
                if step is None:
                    break
                moved = send((best + step * update).clamp(0.0, 1.0)[None])[0]
                best, dist_post = self._binary_search(decide, send, x0, moved, theta)
                dist = self._dist(best, x0)
        except OutOfBudget:
            pass
        if best is None:
            return x0, False
        return best, self._dist(best, x0) <= self.ball.bound(eps)

    def _initialize(self, decide: Decide, send: Send, x0: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor | None:
        """Uniform noise until one is adversarial, then the blend towards ``x0`` bisected to 0.001."""
        for _ in range(self.init_tries):
            noise = send(torch.rand(x0.shape, generator=gen).to(x0.device)[None])[0]
            if bool(decide(noise[None])[0]):
                break
        else:
            return None
        low, high = 0.0, 1.0
        while high - low > 0.001:
            mid = (high + low) / 2.0
            if bool(decide(send(((1 - mid) * x0 + mid * noise)[None]))[0]):
                high = mid
            else:
                low = mid
        return send(((1 - high) * x0 + high * noise)[None])[0]

    def _project(self, x0: torch.Tensor, p: torch.Tensor, alpha: float) -> torch.Tensor:
        if self.ball.name == "l2":
            return (1 - alpha) * x0 + alpha * p
        return torch.minimum(torch.maximum(p, x0 - alpha), x0 + alpha)

    def _binary_search(self, decide: Decide, send: Send, x0: torch.Tensor, p: torch.Tensor,
                       theta: float) -> tuple[torch.Tensor, float]:
        """The reference ``binary_search_batch`` for one image: the boundary point between ``x0`` and ``p``
        (adversarial), and the distance of ``p`` before the search (what the reference passes on as δ's scale)."""
        dist_post = self._dist(p, x0)
        if self.ball.name == "linf":
            high, threshold = dist_post, min(dist_post * theta, theta)
        else:
            high, threshold = 1.0, theta
        low = 0.0
        at_low, at_high = send(self._project(x0, p, low)[None])[0], send(self._project(x0, p, high)[None])[0]
        while (high - low) / threshold > 1:
            mid = (high + low) / 2.0
            img = send(self._project(x0, p, mid)[None])[0]
            if torch.equal(img, at_high):  # same pixels as a point known adversarial: no query
                high, at_high = mid, img
            elif torch.equal(img, at_low):  # same pixels as a point known not adversarial
                low, at_low = mid, img
            elif bool(decide(img[None])[0]):
                high, at_high = mid, img
            else:
                low, at_low = mid, img
        return at_high, dist_post

    def _gradient(self, decide: Decide, send: Send, p: torch.Tensor, num_evals: int, delta: float,
                  gen: torch.Generator) -> torch.Tensor:
        """Monte-Carlo estimate of the boundary's normal at ``p`` (the reference ``approximate_gradient``)."""
        shape = (num_evals, *p.shape)
        l2 = self.ball.name == "l2"
        rv = (torch.randn(shape, generator=gen) if l2 else 2 * torch.rand(shape, generator=gen) - 1).to(p.device)
        rv = rv / rv.flatten(1).norm(dim=1).view(-1, *([1] * p.dim())).clamp_min(1e-12)
        probes = send((p[None] + delta * rv).clamp(0.0, 1.0))
        rv = (probes - p[None]) / delta
        fval = (2 * decide(probes).to(p.device, torch.float32) - 1).view(-1, *([1] * p.dim()))
        mean = float(fval.mean())
        if mean == 1.0:
            grad = rv.mean(0)
        elif mean == -1.0:
            grad = -rv.mean(0)
        else:
            grad = ((fval - mean) * rv).mean(0)
        return grad / grad.norm().clamp_min(1e-12)

    def _step_size(self, decide: Decide, send: Send, p: torch.Tensor, update: torch.Tensor, dist: float,
                   t: int) -> float | None:
        """Geometric progression from dist/√t, halving until the step stays adversarial (None: it never did)."""
        step = dist / math.sqrt(t)
        for _ in range(40):
            img = send((p + step * update).clamp(0.0, 1.0)[None])[0]
            if torch.equal(img, p) or bool(decide(img[None])[0]):
                return step
            step /= 2.0
        return None
