"""Transfer from a local model to the target (AML.T0043.002, then AML.T0042 "Verify Attack").

Examples are crafted white-box (PGD L∞) on the local model, put on the 8-bit grid inside the ε-ball, measured on
the pixels the endpoint receives (``oracle.sent``), and sent once through the oracle in their own scope. Success
is counted only on samples the target answered correctly before, and only for examples inside the ball as sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.evaluation.checks import verify_batch
from engine.perturbations.attacks import PGD
from engine.perturbations.base import BatchContext
from engine.perturbations.norms import NORMS
from engine.remote.api import Oracle

SEND_BATCH = 128  # rows per oracle call


@dataclass(frozen=True)
class TransferResult:
    attacked: int  # samples the target answered correctly before (the denominator)
    fooled: int  # of those, answered wrongly after, with the example inside the ball as sent
    outside: int  # examples that left the ball once encoded as sent: never counted as successes
    queries: int  # what the oracle counted in this scope

    @property
    def success(self) -> float:
        return self.fooled / self.attacked if self.attacked else float("nan")


def on_grid_in_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` rounded to the 8-bit grid, each pixel moved one step back toward ``x`` where rounding left the ball."""
    k = torch.round(x_adv * 255)  # grid levels, moved as integers so the result is exactly k/255
    k = torch.where(k / 255 - x > eps, k - 1, k)
    k = torch.where(x - k / 255 > eps, k + 1, k)
    return k.clamp(0, 255) / 255


def craft(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, eps: float, steps: int,
          seed: int) -> torch.Tensor:
    """PGD L∞ on the local model (random start, seeded by the sample ids), then on the grid inside the ball."""
    pgd = PGD(name="extract-transfer", eps=(eps,), norm="linf", steps=steps)
    out = pgd.perturb_level(x, y, eps, BatchContext(model, seed, ids))
    x_q = on_grid_in_ball(x, out.x, eps)
    verify_batch(pgd, eps, x, x_q)  # the engine's own check, before anything is sent
    return x_q


def send_once(oracle: Oracle, scope: str, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              ids: torch.Tensor, eps: float) -> TransferResult:
    """Send each example once; count it as a success only if inside the ball as sent and answered ≠ y."""
    fooled = outside = 0
    with oracle.scope(scope, 1):
        for i in range(0, len(x_adv), SEND_BATCH):
            sl = slice(i, i + SEND_BATCH)
            sent = oracle.sent(x_adv[sl])
            inside = NORMS["linf"].measure(sent - x[sl]) <= NORMS["linf"].bound(eps)
            answer = oracle.query(x_adv[sl], ids[sl])
            fooled += int(((answer.labels.cpu() != y[sl]) & inside).sum())
            outside += int((~inside).sum())
        queries = int(oracle.used(ids).sum())
    return TransferResult(len(x_adv), fooled, outside, queries)


def transfer(model: torch.nn.Module, oracle: Oracle, scope: str, x: torch.Tensor, y: torch.Tensor,
             ids: torch.Tensor, target_labels: torch.Tensor, eps: float, steps: int, seed: int) -> TransferResult:
    """Craft on ``model`` for the samples the target got right (``target_labels == y``) and send them once."""
    right = (target_labels == y).nonzero().squeeze(1)
    if len(right) == 0:
        return TransferResult(0, 0, 0, 0)
    xs, ys, ids_r = x[right], y[right], ids[right]
    x_adv = craft(model, xs, ys, ids_r, eps, steps, seed)
    return send_once(oracle, scope, x_adv, xs, ys, ids_r, eps)
