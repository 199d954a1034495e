"""A small test double of the oracle contract (engine/remote/api.py) for the query-attack tests.

It answers from a local model, puts every query on the 8-bit grid (what an endpoint receives as PNG), counts
every row per (scope, sample) (cache hits included), refuses a query past a sample's budget with
``QueryBudgetExhausted`` before answering, and keeps a log of every row it answered so a test can count them
itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from engine.remote.api import Answer, Output, QueryBudgetExhausted


class DoubleOracle:
    """Answers ``model`` on 8-bit pixels; budgets and counts per scope and sample."""

    def __init__(self, model: nn.Module, output: Output = "logits", num_classes: int = 10) -> None:
        self.model, self.output, self.num_classes = model, output, num_classes
        self.counts: dict[tuple[str, int], int] = {}
        self.log: list[tuple[str, int]] = []  # (scope, sample id) per answered row
        self.key: str | None = None
        self.budget: int | None = None
        self.cache: dict[bytes, tuple[int, torch.Tensor]] = {}

    def sent(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x.clamp(0.0, 1.0) * 255) / 255

    def _count(self, sid: int) -> int:
        assert self.key is not None, "query outside a scope"
        return self.counts.get((self.key, sid), 0)

    def remaining(self, sample_ids: torch.Tensor) -> torch.Tensor:
        if self.budget is None:
            return torch.full((len(sample_ids),), 10**12, dtype=torch.int64)
        return torch.tensor([self.budget - self._count(int(s)) for s in sample_ids.tolist()], dtype=torch.int64)

    def used(self, sample_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._count(int(s)) for s in sample_ids.tolist()], dtype=torch.int64)

    def query(self, x: torch.Tensor, sample_ids: torch.Tensor) -> Answer:
        ids = [int(s) for s in sample_ids.tolist()]
        assert len(ids) == x.shape[0]
        need: dict[int, int] = {}
        for s in ids:
            need[s] = need.get(s, 0) + 1
        if self.budget is not None and any(self._count(s) + k > self.budget for s, k in need.items()):
            raise QueryBudgetExhausted("a sample has no budget left")
        px = self.sent(x)
        with torch.no_grad():
            logits = self.model(px)
        cached = torch.zeros(len(ids), dtype=torch.bool)
        for i, s in enumerate(ids):
            key = px[i].cpu().numpy().tobytes()
            cached[i] = key in self.cache
            self.cache[key] = (int(logits[i].argmax()), logits[i])
            assert self.key is not None
            self.counts[(self.key, s)] = self._count(s) + 1
            self.log.append((self.key, s))
        scores = None if self.output == "label" else logits.detach().clone()
        return Answer(logits.argmax(1), scores, cached)

    @contextmanager
    def scope(self, key: str, budget_per_sample: int | None) -> Iterator[None]:
        prev = (self.key, self.budget)
        self.key, self.budget = key, budget_per_sample
        try:
            yield
        finally:
            self.key, self.budget = prev


class Served(nn.Module):
    """A model reached only through its oracle (what a remote model looks like to an attack)."""

    def __init__(self, model: nn.Module, output: Output = "logits") -> None:
        super().__init__()
        self.model = model
        self.oracle = DoubleOracle(model, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out
