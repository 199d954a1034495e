"""Train a copy from the target's answers: hard labels with cross-entropy, scores with soft cross-entropy.

Deterministic on one machine: the initial weights come from ``seed`` alone (every budget and contract starts
from the same weights), batches from a seeded generator, and ``torch.use_deterministic_algorithms`` holds
while training. A fixed number of optimiser steps per copy keeps a small budget from being under-trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from engine.models.arch import instantiate_arch
from engine.models.wrapper import NormalizedModel
from engine.seeding import derive_seed


def targets_of(output: str, labels: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    """What the copy learns from: class indices for ``label``, a probability vector per row otherwise."""
    if output == "label" or scores is None:
        return labels.long()
    if output == "logits":
        return torch.softmax(scores.float(), dim=1)
    # probabilities as answered (maybe rounded): clamp and renormalise, so a row of rounded zeros still sums to 1
    p = scores.float().clamp_min(0)
    total = p.sum(dim=1, keepdim=True)
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return torch.where(total > 0, p / total.clamp_min(1e-12), uniform)


def new_model(name: str, model_cfg: Mapping[str, Any], seed: int, role: str) -> NormalizedModel:
    """The copy's architecture with initial weights fixed by (seed, role)."""
    torch.manual_seed(derive_seed(seed, "extract-init", role))
    net = instantiate_arch(name, model_cfg.get("arch") or {})
    return NormalizedModel(net, list(model_cfg["mean"]), list(model_cfg["std"]))


def fit(model: NormalizedModel, x: torch.Tensor, target: torch.Tensor, settings: Any, role: str,
        device: torch.device) -> NormalizedModel:
    """``settings.train_steps`` Adam steps on (x, target); returns the model in eval mode, frozen, on CPU."""
    gen = torch.Generator().manual_seed(derive_seed(settings.seed, "extract-batches", role))
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    bs = min(settings.batch_size, len(x))
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        order = torch.randperm(len(x), generator=gen)
        pos = 0
        model.train()
        for _ in range(settings.train_steps):
            if pos + bs > len(order):  # a new epoch: a new seeded order
                order, pos = torch.randperm(len(x), generator=gen), 0
            idx = order[pos : pos + bs]
            pos += bs
            logits = model(x[idx].to(device))
            t = target[idx].to(device)
            loss = F.cross_entropy(logits, t)  # class indices or probabilities: both are cross-entropy
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.use_deterministic_algorithms(prev)
    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Top-1 labels of a local model (the copy or the baseline: no query to the target)."""
    return torch.cat([model(x[i : i + batch]).argmax(dim=1) for i in range(0, len(x), batch)]) if len(x) else (
        torch.zeros(0, dtype=torch.int64))
