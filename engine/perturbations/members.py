"""Suite members backed by torchattacks: CW-L2, DeepFool (minimal-norm) and EOT-PGD (randomised models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torchattacks
from torch import nn

from engine.perturbations.suite import GradientPath, MemberContext, MemberResult, SuiteMember
from engine.seeding import derive_seed


class CountingModel(nn.Module):
    """Counts the samples a wrapped model sees, split into gradient passes and plain queries."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_samples = 0
        self.query_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_samples += x.shape[0]
        else:
            self.query_samples += x.shape[0]
        out: torch.Tensor = self.model(x)
        return out


@dataclass(frozen=True)
class TorchattacksMember(SuiteMember):
    """A torchattacks attack inside a suite. torchattacks draws from the global RNG per batch, so the
    global RNG is forked and seeded from (seed, suite, member, ε, these samples): reproducible, but the batch
    layout matters. Costs are the counted totals of the batch, spread evenly over its samples."""

    batch_dependent: ClassVar[bool] = True

    def grads_per_forward(self, num_classes: int) -> int:
        """Backward passes per gradient-enabled forward (DeepFool builds a K-row Jacobian)."""
        return 1

    def build(self, model: nn.Module, eps: float) -> torchattacks.Attack:
        raise NotImplementedError

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        counted = CountingModel(GradientPath(ctx.model))  # zero gradients, not an error, on a broken graph
        atk = self.build(counted, ctx.eps)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(ctx.shared_seed, list(ctx.sample_seeds)))
            x_adv = atk(x, y).detach()
        with torch.no_grad():
            wrong = ctx.model(x_adv).argmax(1) != y
        n = x.shape[0]
        size = ctx.norm.measure(x_adv - x).to(x.device).float()
        success = wrong & (size <= ctx.norm.bound(ctx.eps))
        per = self.grads_per_forward(ctx.num_classes)
        grads = torch.full((n,), -(-counted.grad_samples * per // n), dtype=torch.int64, device=x.device)
        queries = torch.full((n,), -(-counted.query_samples // n) + 1, dtype=torch.int64, device=x.device)
        if not self.minimal_norm:
            return MemberResult(x_adv, success, grads, queries)
        size = torch.where(wrong, size, torch.full_like(size, float("inf")))
        return MemberResult(x_adv, success, grads, queries, size=size, exhaustive=torch.ones_like(success))


@dataclass(frozen=True)
class CWL2(TorchattacksMember):
    """Carlini-Wagner L2 (torchattacks ``CW``): minimal-norm, ε-independent; an example counts where ‖δ‖₂ ≤ ε."""

    minimal_norm: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = ("l2",)

    c: float = 1.0
    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.01

    @property
    def eps_independent(self) -> bool:
        return True

    def build(self, model: nn.Module, eps: float) -> torchattacks.Attack:
        return torchattacks.CW(model, c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr)


@dataclass(frozen=True)
class DeepFool(TorchattacksMember):
    """DeepFool (torchattacks): minimal L2 perturbation by linearising the decision boundary (K gradients/step)."""

    minimal_norm: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = ("l2",)

    steps: int = 50
    overshoot: float = 0.02

    @property
    def eps_independent(self) -> bool:
        return True

    def grads_per_forward(self, num_classes: int) -> int:
        return num_classes

    def build(self, model: nn.Module, eps: float) -> torchattacks.Attack:
        return torchattacks.DeepFool(model, steps=self.steps, overshoot=self.overshoot)


@dataclass(frozen=True)
class EOTPGD(TorchattacksMember):
    """PGD with Expectation over Transformation (torchattacks ``EOTPGD``) for randomised models, L∞."""

    norms: ClassVar[tuple[str, ...]] = ("linf",)

    steps: int = 20
    eot: int = 10
    step_size_factor: float = 2.5
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("steps", "eot")

    @property
    def eot_iter(self) -> int:
        return self.eot

    def build(self, model: nn.Module, eps: float) -> torchattacks.Attack:
        return torchattacks.EOTPGD(model, eps=eps, alpha=self.step_size_factor * eps / self.steps,
                                   steps=self.steps, eot_iter=self.eot, random_start=self.random_start)
