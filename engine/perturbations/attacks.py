"""Gradient attacks from torchattacks (FGSM, PGD in L∞ and L2) at a list of ε in pixel units.

torchattacks differentiates the model itself; it gets the model through
:class:`engine.perturbations.suite.GradientPath`, so a model that breaks the autograd
graph gives zero gradients (the attack runs and fails) instead of a RuntimeError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torchattacks

from engine.errors import ConfigError
from engine.perturbations.base import (
    BatchContext,
    Family,
    LevelOutput,
    Perturbation,
    check_eps_list,
    zero_cost,
)
from engine.perturbations.suite import GradientPath


@dataclass(frozen=True)
class GradientAttack(Perturbation):
    """An ε-list attack backed by a torchattacks class; ε = 0 is the clean input at zero cost."""

    family: ClassVar[Family] = "attack"
    needs_model: ClassVar[bool] = True

    eps: Sequence[float] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_eps_list(self.name, list(self.eps))
        object.__setattr__(self, "eps", tuple(sorted(float(e) for e in self.eps)))
        if self.norm is None:
            raise ConfigError(f"perturbation {self.name!r}: an attack must declare its norm")
        super().__post_init__()

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.eps)

    def build(self, model: torch.nn.Module, eps: float) -> torchattacks.Attack:
        raise NotImplementedError

    def grad_evals_per_sample(self) -> int:
        raise NotImplementedError

    def run(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> Iterator[LevelOutput]:
        """Attack each ε in ascending order, only on the samples not broken at a smaller ε.

        A sample misclassified at ε keeps that example at every larger ε (it lies
        inside every larger ball), so the curve is a per-sample worst case over
        the levels, non-increasing by construction, and costs nothing twice.
        ``grad_evals`` counts what was spent on the sample at that level.
        """
        best = x.clone()
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for level in self.levels:
            todo = ~broken
            grad_evals, queries = zero_cost(len(x)), zero_cost(len(x))
            if level > 0 and bool(todo.any()):
                idx = todo.nonzero().squeeze(1)
                sub_ctx = BatchContext(ctx.model, ctx.seed, ctx.sample_ids[idx.cpu()])
                out = self.perturb_level(x[idx], y[idx], level, sub_ctx)
                with torch.no_grad():
                    fooled = ctx.model(out.x).argmax(dim=1) != y[idx]
                best[idx[fooled]] = out.x[fooled]
                broken[idx[fooled]] = True
                grad_evals[idx.cpu()] = out.grad_evals
                queries[idx.cpu()] = out.queries
                level_x = best.clone()
                level_x[idx[~fooled]] = out.x[~fooled]
            else:
                level_x = best.clone()
            yield LevelOutput(level, level_x, grad_evals, queries)

    def perturb_level(
        self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext
    ) -> LevelOutput:
        n = x.shape[0]
        if level == 0.0:
            return LevelOutput(level, x, zero_cost(n), zero_cost(n))
        attack = self.build(GradientPath(ctx.model), level)
        # torchattacks draws random starts from the global RNG: fork it and seed
        # it from (seed, these samples, attack, ε) so runs are reproducible and
        # the caller's RNG state is untouched.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(ctx.batch_seed(self.name, level))
            # contiguous: torchattacks' PGDL2 .view()s the perturbation, which a permuted batch (an HWC layout
            # read as CHW, a channels_last tensor) cannot take
            x_adv = attack(x.contiguous(), y)
        cost = torch.full((n,), self.grad_evals_per_sample(), dtype=torch.int64)
        return LevelOutput(level, x_adv.detach(), cost, zero_cost(n))


@dataclass(frozen=True)
class FGSM(GradientAttack):
    """Fast gradient sign method (L∞, one gradient step of size ε)."""

    norm: str | None = "linf"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "linf":
            raise ConfigError(f"perturbation {self.name!r}: FGSM is an L∞ attack, got norm {self.norm!r}")

    def build(self, model: torch.nn.Module, eps: float) -> torchattacks.Attack:
        return torchattacks.FGSM(model, eps=eps)

    def grad_evals_per_sample(self) -> int:
        return 1


@dataclass(frozen=True)
class PGD(GradientAttack):
    """Projected gradient descent (Madry et al.) in L∞ or L2 with a random start.

    The step size is ``step_size_factor · ε / steps`` (2.5 is Madry's choice), so
    one config covers every ε in the list.
    """

    stochastic: ClassVar[bool] = True

    norm: str | None = "linf"
    steps: int = 10
    step_size_factor: float = 2.5
    random_start: bool = True
    restarts: int = 1

    _BACKENDS: ClassVar[dict[str, Any]] = {"linf": torchattacks.PGD, "l2": torchattacks.PGDL2}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in self._BACKENDS:
            raise ConfigError(
                f"perturbation {self.name!r}: PGD supports norms {sorted(self._BACKENDS)}, got {self.norm!r}"
            )
        if self.steps < 1:
            raise ConfigError(f"perturbation {self.name!r}: steps must be ≥ 1, got {self.steps}")
        if self.step_size_factor <= 0:
            raise ConfigError(f"perturbation {self.name!r}: step_size_factor must be > 0")
        if self.restarts < 1:
            raise ConfigError(f"perturbation {self.name!r}: restarts must be ≥ 1, got {self.restarts}")

    def task_extras(self, batch_size: int) -> dict[str, object]:
        # The random start is drawn per batch, so the batch layout changes the rows.
        return {"batch_size": batch_size} if self.random_start else {}

    def build(self, model: torch.nn.Module, eps: float) -> torchattacks.Attack:
        alpha = self.step_size_factor * eps / self.steps
        backend = self._BACKENDS[str(self.norm)]
        return backend(model, eps=eps, alpha=alpha, steps=self.steps, random_start=self.random_start)

    def grad_evals_per_sample(self) -> int:
        return self.steps

    def perturb_level(
        self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext
    ) -> LevelOutput:
        """Restart 0 is plain torchattacks PGD; each further restart re-attacks only the samples still correct."""
        out = super().perturb_level(x, y, level, ctx)
        if self.restarts == 1 or level == 0.0:
            return out
        x_adv, grads, queries = out.x.clone(), out.grad_evals.clone(), out.queries.clone()
        attack = self.build(GradientPath(ctx.model), level)
        devices = [x.device] if x.device.type == "cuda" else []
        for restart in range(1, self.restarts):
            with torch.no_grad():
                still = (ctx.model(x_adv).argmax(1) == y).cpu()
            queries += 1
            if not bool(still.any()):
                break
            rows = still.nonzero().squeeze(1)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(ctx.batch_seed(self.name, level, restart))
                x_adv[rows.to(x.device)] = attack(x[rows.to(x.device)], y[rows.to(x.device)]).detach()
            grads[rows] += self.steps
        return LevelOutput(level, x_adv, grads, queries)
