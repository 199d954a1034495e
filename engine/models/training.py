"""Deterministic CPU training of the embedded digits checkpoints (standard and PGD-adversarial)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from engine.data.digits import load_digits
from engine.models.arch import instantiate_arch
from engine.models.checkpoint import save_checkpoint
from engine.models.wrapper import NormalizedModel

log = logging.getLogger(__name__)


def pgd_linf_train_batch(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, gen: torch.Generator
) -> torch.Tensor:
    """L∞ PGD with a random start and step 2.5·ε/steps: the training-time attack (Madry et al.)."""
    alpha = 2.5 * eps / steps
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def train_embedded(
    name: str, arch_cfg: Mapping[str, Any], mean: list[float], std: list[float],
    recipe: Mapping[str, Any], path: Path, progress: bool = True,
) -> str:
    """Train ``arch_cfg`` on the digits train split per ``recipe``, save to ``path``; return its sha256.

    Deterministic on one machine: fixed seed, fixed shuffling generator,
    ``torch.use_deterministic_algorithms`` during training.
    """
    started = time.perf_counter()
    data = load_digits(split="train", image_size=32)
    gen = torch.Generator().manual_seed(int(recipe["seed"]))
    torch.manual_seed(int(recipe["seed"]))
    net = instantiate_arch(name, arch_cfg)
    model = NormalizedModel(net, mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=float(recipe["lr"]))
    epochs, bs = int(recipe["epochs"]), int(recipe["batch_size"])
    adv_eps, adv_steps = float(recipe["adv_eps"]), int(recipe["adv_steps"])
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        bar = tqdm(range(epochs), desc=f"training {name}", disable=not progress, leave=False)
        for epoch in bar:
            # Ramp ε over the first third of training: AT from scratch at full ε often stalls.
            eps_now = adv_eps * min(1.0, (epoch + 1) / max(1, epochs // 3))
            order = torch.randperm(len(data), generator=gen)
            for i in range(0, len(order), bs):
                idx = order[i : i + bs]
                x, y = data.images[idx], data.labels[idx]
                if adv_eps > 0:
                    model.eval()
                    x = pgd_linf_train_batch(model, x, y, eps_now, adv_steps, gen)
                model.train()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        torch.use_deterministic_algorithms(prev)
    info = {"model": name, "recipe": dict(recipe), "torch": torch.__version__,
            "train_seconds": round(time.perf_counter() - started, 1)}
    digest = save_checkpoint(net.state_dict(), path, info)
    log.info("trained embedded checkpoint %s in %.0f s → %s (sha256 %s)",
             name, info["train_seconds"], path, digest[:12])
    return digest
