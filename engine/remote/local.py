"""An in-process model behind the oracle: the same encoding, cache, budgets and counts as an endpoint.

Query-based attacks run against a local checkpoint through this, so their numbers (and their query counts) mean
the same as against a deployed model; the model sees exactly the pixels an endpoint would decode.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from engine.remote.accounting import Limiter
from engine.remote.api import Oracle, Output, oracle_of
from engine.remote.encoding import ImageContract
from engine.remote.oracle import BaseOracle, Reply, shape_scores


class LocalOracle(BaseOracle):
    """``model`` (an nn.Module taking N×C×H×W in [0, 1], returning logits) answered under a remote contract."""

    endpoint = "in-process"

    def __init__(self, model: nn.Module, *, output: Output = "probs", num_classes: int,
                 budget_per_sample: int | None = None, run_budget: int | None = None, encoding: str = "png",
                 jpeg_quality: int = 95, top_k: int | None = None, round_digits: int | None = None,
                 cache: bool = True, limiter: Limiter | None = None, batch_size: int = 256,
                 reencode_jpeg: int | None = None) -> None:
        # reencode_jpeg is a declaration about the model given (e.g. one that JPEG-re-encodes in its forward), as
        # for an endpoint: recorded for crafting (``seen``), never applied here
        super().__init__(output=output, num_classes=num_classes, budget_per_sample=budget_per_sample,
                         run_budget=run_budget,
                         image=ImageContract(encoding, jpeg_quality, None, reencode_jpeg),  # type: ignore[arg-type]
                         top_k=top_k, round_digits=round_digits, cache=cache, limiter=limiter)
        self.model = model
        self.batch_size = batch_size
        self.endpoint = f"in-process {type(model).__name__}"

    def _fetch(self, grid: torch.Tensor, payloads: list[bytes] | None) -> Reply:
        pixels = self._sent_grid(grid).float() / 255.0  # what an endpoint decodes from the files sent
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        outs = []
        with self.limiter.slot(), torch.no_grad():
            start = time.perf_counter()
            for first in range(0, len(pixels), self.batch_size):
                outs.append(self.model(pixels[first:first + self.batch_size].to(device)).float().cpu())
            self.stats.latencies.append(time.perf_counter() - start)
            self.stats.calls += 1
        logits = torch.cat(outs)
        return Reply(logits.argmax(dim=1), shape_scores(logits, self.output, self.top_k, self.round_digits))


def oracle_for(model: nn.Module, num_classes: int, **contract: Any) -> Oracle:
    """The oracle a query-based attack uses on ``model``: a remote model's own, else a ``LocalOracle`` over it.

    ``contract`` (output, budget_per_sample, encoding, ...) applies to the local case only: a remote model's
    contract is the endpoint's and cannot be changed from here.
    """
    found = oracle_of(model)
    return found if found is not None else LocalOracle(model, num_classes=num_classes, **contract)
