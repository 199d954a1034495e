"""Transfer attacks: craft the examples with a white-box attack on a source (surrogate) model, score them on the
sweep's model.

``Transfer`` wraps any attack or attack suite config (``attack``: ``pgd_linf``, ``apgd_ce_linf``,
``autoattack_standard_linf``, ...) and names a source model (``source`` and its model config
``source_model``). The inner attack runs exactly as in a white-box sweep of the source model (same
name, so the same seeds, the same ε list, the same cascade), against the source model only; the
evaluator then verifies its examples against the threat model and classifies them with the target
model, like any perturbation's. So a transfer from a model to itself reproduces that model's
white-box rows exactly.

This module never builds a model: the planner checks the source checkpoint (its sha256 is part of
the task id) and ``engine.evaluation.resources`` builds it and hands it over in
``BatchContext.surrogates`` (perturbations sit below the models' loader).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from engine.errors import ConfigError
from engine.perturbations.base import BatchContext, Family, LevelOutput, Perturbation
from engine.perturbations.query import grid_ball
from engine.remote.api import oracle_of

TRANSFER_TAGS = ("black-box", "AML.T0043.002")  # ATLAS: Craft Adversarial Data: Black-Box Transfer


class ThroughEndpoint(nn.Module):
    """The source model seeing what the target's model is declared to see (``oracle.seen``: the JPEG sent and/or
    the endpoint's declared re-encoding). Forward through the real JPEG round trip; backward straight through it
    (BPDA with the identity, Athalye et al. 2018), so white-box attacks on the source craft examples that survive
    the re-encoding; query-based inner attacks see the JPEG in every answer."""

    def __init__(self, source: nn.Module, seen: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.source = source
        self._seen = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.source(x + (self._seen(x) - x).detach())
        return out


@dataclass(frozen=True)
class Transfer(Perturbation):
    """The examples ``attack`` crafts on model ``source`` (config ``source_model``), scored on the sweep's model.

    Costs: ``grad_evals`` and ``queries`` are the inner attack's, spent on the source model; the target
    model itself is only asked once per example, by the evaluator.
    """

    family: ClassVar[Family] = "attack"
    needs_model: ClassVar[bool] = True
    plain_fields: ClassVar[tuple[str, ...]] = ("source_model",)  # handed over as data, never instantiated

    source: str = ""
    source_model: Mapping[str, Any] = field(default_factory=dict)
    attack: Any = None  # the inner Perturbation (built by Hydra from its own _target_ block; its name is kept)
    tags: Any = TRANSFER_TAGS

    def __post_init__(self) -> None:
        where = f"perturbation {self.name!r}"
        if not self.source or not isinstance(self.source, str):
            raise ConfigError(f"{where}: 'source' must name the source (surrogate) model")
        if not isinstance(self.source_model, Mapping) or not self.source_model:
            raise ConfigError(f"{where}: 'source_model' must be the source model's config (arch, checkpoint, ...)")
        inner = self.attack
        if not isinstance(inner, Perturbation):
            raise ConfigError(f"{where}: 'attack' must be an attack config block with a _target_ (e.g. the "
                              "contents of configs/perturbation/apgd_ce_linf.yaml) and a name")
        if inner.family != "attack":
            raise ConfigError(f"{where}: 'attack' must be an attack, got a {inner.family} perturbation")
        if not inner.name:
            raise ConfigError(f"{where}: the inner attack needs a name (its seeds derive from it: give the name it "
                              "has in a white-box sweep, e.g. name: apgd_ce_linf)")
        if isinstance(inner, Transfer):
            raise ConfigError(f"{where}: the inner attack is itself a transfer attack; name a white-box attack")
        if self.norm is not None and self.norm != inner.norm:
            raise ConfigError(f"{where}: norm {self.norm!r} differs from its attack's norm {inner.norm!r}")
        object.__setattr__(self, "norm", inner.norm)
        object.__setattr__(self, "source_model", dict(self.source_model))
        super().__post_init__()

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.attack.levels)

    @property
    def surrogates(self) -> dict[str, Mapping[str, Any]]:
        return {self.source: self.source_model}

    @property
    def attacks(self) -> tuple[Any, ...]:
        """What crafts the examples: the inner suite's members, or the inner attack (its budget, for progress)."""
        return tuple(getattr(self.attack, "attacks", None) or (self.attack,))

    @property
    def planned_evals(self) -> int:
        """The inner attack's budget per sample and level (the progress bar's plan)."""
        return int(self.attack.planned_evals)

    @property
    def eot_iter(self) -> int:
        return int(self.attack.eot_iter)

    @property
    def score_draws(self) -> int:
        return int(self.attack.score_draws)

    def threat_of(self, breaker: str) -> str | None:
        """Whatever broke it on the source, the target only ever saw the finished example: black-box."""
        return "black-box" if breaker else None

    def task_extras(self, batch_size: int) -> dict[str, object]:
        # the inner attack's (batch layout for per-batch draws); the source sha256 is added by the planner
        return dict(self.attack.task_extras(batch_size))

    def run(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> Iterator[LevelOutput]:
        """The inner attack's levels, crafted on the source model with the seeds of a white-box sweep."""
        source = ctx.surrogates.get(self.source)
        if source is None:
            raise ConfigError(f"perturbation {self.name!r}: source model {self.source!r} was not provided to it "
                              "(evaluate it through the engine's evaluator, which builds the source model)")
        oracle = oracle_of(ctx.model)
        seen = getattr(oracle, "seen", None)
        if seen is not None and getattr(getattr(oracle, "image", None), "lossy", False):
            source = ThroughEndpoint(source, seen)  # craft knowing the contract's JPEG step(s)
        inner_ctx = BatchContext(model=source, seed=ctx.seed, sample_ids=ctx.sample_ids, progress=ctx.progress)
        # a remote target receives the clean image as sent (8-bit grid, JPEG): the engine measures the ball around
        # that, so the examples are crafted around it too
        centre = x if oracle is None else oracle.sent(x)
        for out in self.attack.run(centre, y, inner_ctx):
            x_adv = out.x
            if oracle is not None and self.norm_obj is not None:
                # the example as sent, inside the ball it is measured in (a float example rounded on its own can
                # land half a grey level outside ε); a row that never fits is sent clean: not broken
                x_adv = grid_ball(oracle, centre, out.x, self.norm_obj, out.level)
            yield LevelOutput(out.level, x_adv, out.grad_evals, out.queries, out.broken_by)

    def perturb_level(self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext) -> LevelOutput:
        """One level alone: the inner attack's whole ε list is run (its levels share work), this one kept."""
        for out in self.run(x, y, ctx):
            if out.level == level:
                return out
        raise ConfigError(f"perturbation {self.name!r}: level {level:g} is not one of {list(self.levels)}")
