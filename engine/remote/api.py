"""The contract between query-based code (attacks, extraction, the probe) and the oracle that owns every query.

Nothing else may call a target: an attack holds an :class:`Oracle`, asks it for answers, and the oracle encodes
the batch as the endpoint receives it, counts every row (cache hits and success checks included), and refuses a
query past a sample's budget by raising :class:`QueryBudgetExhausted` (an attack cannot overspend). Query-based
attacks also run against a local model through the same oracle (``engine.remote.local``), so their accounting
is the same whether the target is a checkpoint or an endpoint.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from engine.errors import GauntletError

# What an endpoint answers: the top-1 label only, the top-k scores, a full probability vector (maybe rounded),
# or raw logits. Decision-based attacks need only "label"; score-based ones need one of the others.
Output = Literal["label", "topk", "probs", "logits"]


class QueryBudgetExhausted(GauntletError):
    """A query would take a sample (or the run) past its budget; the oracle refused it before sending anything."""


class RemoteError(GauntletError):
    """A call failed after its retries, or its answer cannot be read; the message names the endpoint and status.

    Never turned into a prediction: the task fails (or, with ``on_error: skip``, the sample is excluded and counted).
    """


@dataclass(frozen=True)
class Answer:
    """The oracle's answer for one batch, row for row."""

    labels: torch.Tensor  # int64, (N,): the target's top-1 label
    scores: torch.Tensor | None  # float, (N, K) as the contract returns them (None for label-only)
    cached: torch.Tensor  # bool, (N,): answered from the oracle's cache (counted, and reported as cached)


@runtime_checkable
class Oracle(Protocol):
    """Every query to a target goes through one of these."""

    output: Output
    num_classes: int

    def query(self, x: torch.Tensor, sample_ids: torch.Tensor) -> Answer:
        """Answer for ``x`` (N×C×H×W in [0, 1]); row i is charged to ``sample_ids[i]`` in the current scope.

        Raises QueryBudgetExhausted before sending anything if a row's sample (or the run) has no budget left.
        """
        ...

    def remaining(self, sample_ids: torch.Tensor) -> torch.Tensor:
        """Queries each sample may still spend in the current scope (int64, (N,))."""
        ...

    def used(self, sample_ids: torch.Tensor) -> torch.Tensor:
        """Queries each sample has spent in the current scope (int64, (N,)), cache hits included."""
        ...

    def sent(self, x: torch.Tensor) -> torch.Tensor:
        """The pixels the endpoint receives for ``x`` (8-bit grid; for JPEG, the decoded JPEG), in [0, 1].

        Perturbation sizes are measured on these, never on the float tensor an attack computed.
        """
        ...

    def scope(self, key: str, budget_per_sample: int | None) -> AbstractContextManager[None]:
        """Per-sample counts and budgets within one (perturbation, level): ``with oracle.scope("sq@0.1", 5000):``."""
        ...


def oracle_of(model: object) -> Oracle | None:
    """The oracle behind a model that is reached only through queries (a remote model), else None."""
    found = getattr(model, "oracle", None)
    return found if isinstance(found, Oracle) else None
