"""Adaptive attacks for defences that break gradients: BPDA and transfer from a differentiable surrogate.

Both wrap an ordinary suite member (APGD, FAB, Square) and change only what the
member differentiates, never what is counted:

* ``mode: bpda`` (Athalye et al. 2018, Backward Pass Differentiable
  Approximation): the forward pass is the real model, bit for bit; the backward
  pass treats the non-differentiable pre-processing in front of the module
  ``at`` as the identity.
* ``mode: transfer``: the member attacks a surrogate, the model with that
  pre-processing bypassed (the module ``at`` sees the normalised input
  directly), and the examples are then scored on the real model.

``at`` is a dotted module path inside the model's architecture (``model.arch``):
the module that receives the pre-processed input, whose input has the shape of
the architecture's input. Whatever the member claims, the suite re-classifies
every example on the real model and checks it against the ε ball (suite.py),
and the evaluator does it again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from engine.errors import ConfigError
from engine.perturbations.suite import MemberContext, MemberResult, SuiteMember

MODES = ("bpda", "transfer")


def arch_of(model: nn.Module) -> nn.Module:
    """The architecture inside Gauntlet's normalising wrapper (``model.net``), else the model itself."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def resolve_module(model: nn.Module, at: str) -> nn.Module:
    """The submodule ``at`` (dotted, relative to the architecture); ``ConfigError`` naming the valid ones."""
    arch = arch_of(model)
    try:
        return arch.get_submodule(at)
    except AttributeError:
        names = [n for n, _ in arch.named_modules() if n][:20]
        raise ConfigError(f"module {at!r} is not inside the model's architecture; "
                          f"modules: {', '.join(names)}") from None


class GradientView(nn.Module):
    """The model with the segment between its architecture's input and module ``at`` replaced in backward (bpda)
    or in both passes (transfer). Hooks live only for one forward call, so the real model is left untouched."""

    def __init__(self, model: nn.Module, at: str, mode: str) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"gradient view mode {mode!r}; valid modes: {', '.join(MODES)}")
        self.model = model
        self.arch = arch_of(model)
        self.target = resolve_module(model, at)
        if self.target is self.arch:
            raise ConfigError(f"module {at!r} is the architecture itself; name the module after the pre-processing")
        self.at, self.mode = at, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: dict[str, torch.Tensor] = {}

        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault("z", args[0])

        def swap(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            w, z = args[0], seen["z"]
            if w.shape != z.shape:
                raise ConfigError(f"module {self.at!r} receives shape {tuple(w.shape)}, the architecture's input "
                                  f"is {tuple(z.shape)}: BPDA/transfer need the module right after a "
                                  "shape-preserving pre-processing")
            new = w.detach() + (z - z.detach()) if self.mode == "bpda" else z
            return (new, *args[1:])

        h1 = self.arch.register_forward_pre_hook(grab)
        h2 = self.target.register_forward_pre_hook(swap)
        try:
            out: torch.Tensor = self.model(x)
        finally:
            h1.remove()
            h2.remove()
        return out


@dataclass(frozen=True)
class Adaptive(SuiteMember):
    """A suite member run through a :class:`GradientView` (see module docstring)."""

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    member: Any = None  # the wrapped SuiteMember (built by Hydra from its own _target_ block)
    at: str = ""
    mode: str = "bpda"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.member, SuiteMember):
            raise ConfigError(f"attack {self.name!r}: 'member' must be a suite member block with a _target_")
        if self.member.batch_dependent or self.member.minimal_norm:
            raise ConfigError(f"attack {self.name!r}: wrap APGD or Square (per-sample seeded, fixed-ε members)")
        if self.mode not in MODES:
            raise ConfigError(f"attack {self.name!r}: mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if not self.at:
            raise ConfigError(f"attack {self.name!r}: 'at' must name the module after the pre-processing")

    @property
    def eot_iter(self) -> int:
        return int(self.member.eot_iter)

    @property
    def planned_evals(self) -> int:
        return int(self.member.planned_evals)

    def attack_view(self, model: nn.Module) -> GradientView:
        return GradientView(model, self.at, self.mode)

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        inner: SuiteMember = self.member
        return inner.attack(x, y, replace(ctx, model=self.attack_view(ctx.model)))
