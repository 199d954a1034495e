"""The one protocol for attacks and corruptions: given a batch in [0, 1], yield one perturbed batch per level."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from engine.compose.threat_model import ThreatModel, canonical_tags, parse_tags
from engine.errors import ConfigError
from engine.perturbations.norms import Norm, get_norm
from engine.seeding import derive_seed

Family = Literal["clean", "attack", "corruption"]
# (evals spent, planned evals found unnecessary) since the last call: progress from inside a batch
WorkReport = Callable[[int, int], None]

BUDGET_KEYS = ("steps", "n_iter", "n_queries")  # per-level work of an attack (first present)
RESTART_KEYS = ("restarts", "n_restarts")


def budget_of(obj: object) -> int:
    """Evals one sample costs ``obj`` (an attack or a suite member) at one level, read from its settings:
    steps (or iterations, or queries) × restarts × EOT draws. The plan the progress bar starts from."""
    steps = next((int(getattr(obj, k)) for k in BUDGET_KEYS if isinstance(getattr(obj, k, None), int)), 1)
    restarts = next((int(getattr(obj, k)) for k in RESTART_KEYS if isinstance(getattr(obj, k, None), int)), 1)
    eot = getattr(obj, "eot_iter", 1)
    return max(1, steps) * max(1, restarts) * (eot if isinstance(eot, int) and eot > 0 else 1)


@dataclass(frozen=True)
class BatchContext:
    """What a perturbation may use besides the pixels: the model, the seed, and who the samples are."""

    model: nn.Module
    seed: int
    sample_ids: torch.Tensor  # int64, CPU, one id per row of the batch
    # source models of a transfer attack (name → model on the device), built by the evaluator's resources from
    # the perturbation's ``surrogates``: perturbations never load a model themselves
    surrogates: Mapping[str, nn.Module] = field(default_factory=dict)
    progress: WorkReport | None = None  # the evaluator's meter (engine/evaluation/evaluate.py), or None

    def report(self, spent: int, skipped: int = 0) -> None:
        """Tell the progress meter of ``spent`` evals done and ``skipped`` planned evals found unnecessary (a
        sample that broke early); optional: the evaluator settles each level's account from its costs anyway."""
        if self.progress is not None and (spent or skipped):
            self.progress(int(spent), int(skipped))

    def batch_seed(self, *parts: object) -> int:
        """A seed fixed by the global seed, these sample ids, and ``parts`` (name, level, ...)."""
        return derive_seed(self.seed, self.sample_ids.tolist(), *parts)

    def sample_generators(self, *parts: object) -> list[torch.Generator]:
        """One CPU generator per sample, seeded by (global seed, sample id, ``parts``).

        A sample's draws do not depend on the batch it lands in.
        """
        gens = []
        for sid in self.sample_ids.tolist():
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, int(sid), *parts))
            gens.append(g)
        return gens


@dataclass(frozen=True)
class LevelOutput:
    """One level's perturbed batch, with its per-sample cost (gradient evaluations, model queries)."""

    level: float
    x: torch.Tensor
    grad_evals: torch.Tensor  # int64, shape N
    queries: torch.Tensor  # int64, shape N
    # Per sample, the attack whose example is returned ("" when none changed the
    # input); suites fill it, single attacks leave it None (= the attack itself).
    broken_by: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Perturbation:
    """Base of every perturbation. Subclasses set ``family`` and implement ``perturb_level``.

    ``name`` is the config key it was selected under; ``levels`` are ε in pixel
    units ([0, 1] scale) for attacks and integer severities 1-5 for corruptions.
    """

    family: ClassVar[Family]
    needs_model: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    name: str = ""
    norm: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # list or mapping form (engine/compose/threat_model.py), kept as the list form; a bad ATLAS id fails here
        object.__setattr__(self, "tags", canonical_tags(self.tags))
        parse_tags(f"perturbation {self.name!r}", self.tags, self.family)
        if self.norm is not None:
            get_norm(self.norm)
        if not self.levels:
            raise ConfigError(f"perturbation {self.name!r}: its list of levels is empty")

    @property
    def levels(self) -> tuple[float, ...]:
        """ε values (attacks) or severities (corruptions), ascending."""
        raise NotImplementedError

    @property
    def threat_model(self) -> ThreatModel:
        """The checked structure behind ``tags`` (knowledge, goal, MITRE ATLAS ids, STRIDE category)."""
        return parse_tags(f"perturbation {self.name!r}", self.tags, self.family)

    @property
    def norm_obj(self) -> Norm | None:
        return None if self.norm is None else get_norm(self.norm)

    def task_extras(self, batch_size: int) -> dict[str, object]:
        """Settings outside this config that change the rows (part of the task id)."""
        return {}

    @property
    def surrogates(self) -> dict[str, Mapping[str, Any]]:
        """Other models this perturbation attacks (name → model config): the source of a transfer attack. The
        planner checks their checkpoints (sha256 in the task id), the evaluator builds them (``BatchContext``)."""
        return {}

    @property
    def eot_iter(self) -> int:
        """Model samples averaged per gradient (Expectation over Transformation); 1 means no EOT."""
        return 1

    @property
    def planned_evals(self) -> int:
        """Evals one sample is planned to cost at one level: its budget for an attack, 1 (one classification)
        otherwise. An upper bound the progress bar starts from; work found unnecessary is taken off as it ends."""
        return budget_of(self) if self.family == "attack" else 1

    @property
    def score_draws(self) -> int:
        """How many times the evaluator classifies each perturbed input (1: once). Above 1, for a randomised
        model: a sample counts as correct only when every one of these classifications is (:func:`worst_of`)."""
        return 1

    def threat_of(self, breaker: str) -> str | None:
        """'white-box' or 'black-box' for the attack named ``breaker`` (suites ask their member), from the tags."""
        if self.family != "attack" or not breaker:
            return None
        return "black-box" if "black-box" in self.tags and "white-box" not in self.tags else "white-box"

    def run(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> Iterator[LevelOutput]:
        """Yield one perturbed batch per level, in ascending level order."""
        for level in self.levels:
            yield self.perturb_level(x, y, float(level), ctx)

    def perturb_level(
        self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext
    ) -> LevelOutput:
        raise NotImplementedError


def zero_cost(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64)


def check_eps_list(name: str, eps: Sequence[float]) -> None:
    """ε must be finite, non-negative numbers in pixel units; anything above 1 is a units mistake."""
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
            raise ConfigError(f"perturbation {name!r}: ε {e!r} is not a finite number")
        if e < 0:
            raise ConfigError(f"perturbation {name!r}: ε {e} is negative; ε is a radius ≥ 0")


def check_severities(name: str, severities: Sequence[float]) -> None:
    for s in severities:
        if isinstance(s, bool) or not float(s).is_integer() or not 1 <= s <= 5:
            raise ConfigError(
                f"perturbation {name!r}: severity {s!r} is outside 1-5; "
                "corruption severities are the integers 1, 2, 3, 4, 5"
            )


def margins_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit (> 0 ⇔ correct, barring ties)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


def worst_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify ``x`` ``draws`` times (no gradients): per row the logits of the draw with the smallest margin
    (the worst case: misclassified if any draw is) and how many draws misclassified it."""
    with torch.no_grad():
        worst = model(x)
        margin = margins_of(worst, y)
        count = (worst.argmax(1) != y).long()
        for _ in range(draws - 1):
            logits = model(x)
            m = margins_of(logits, y)
            count += (logits.argmax(1) != y).long()
            lower = m < margin
            worst = torch.where(lower[:, None], logits, worst)
            margin = torch.where(lower, m, margin)
    return worst, count
