"""Put attack examples on an integer pixel grid (``quantize: uint8 | uint16``) without leaving their ε ball.

A float adversarial example is not an image anyone can save as a PNG: its pixels lie between
the grid points k / M (M = 255 for 8-bit images, 65535 for 16-bit ones). Rounding to the
nearest grid point can move a pixel past ε, so the grid point is chosen inside the ball
(all in grid steps, float64; ``c`` = the clean pixel × M, snapped to its integer when the
clean sample is itself on the grid, every pixel of it):

* L∞: each pixel's grid points within ε are ``⌈c − ε·M⌉ … ⌊c + ε·M⌋`` (ε written as k/255
  counts as k steps); the rounded value is clamped into that range. For clean inputs on the
  grid this is ``k₀ ± ⌊ε·M⌋``.
* L2 / L1: round every pixel; while the rounded example is outside the ball, pixels fall
  back — those whose rounding added most to ‖δ‖ first — to the grid neighbour of the float
  pixel that is nearer the clean value (truncation toward it when the clean input is on the
  grid: ‖δ_trunc‖ ≤ ‖δ_float‖ coordinate by coordinate, so this ends inside the ball), then,
  if still outside, to the grid point nearest the clean pixel (the nearest grid point of all).

A sample whose ball holds no grid point at all (ε smaller than the clean input's distance to the
grid: ε = 0 on data that is not on the grid, such as the embedded digits, which are resized
bilinearly) keeps its clean input: it is the only input of its ball. The result is ``k / M`` in
float32 for an integer ``k`` in [0, M], the same float a ``uint8`` (``uint16``) image gives
with ``img.float() / M``.

16-bit data: ``uint16`` is its own grid (what a 16-bit PNG stores; it holds every 8-bit value,
k/255 = 257·k/65535); ``uint8`` delivers 8-bit images, which the clean 16-bit input is not.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from engine.errors import ConfigError
from engine.evaluation.checks import verify_batch
from engine.perturbations.base import LevelOutput, Perturbation, worst_of

GRIDS = {"uint8": 255, "uint16": 65535}
MODES = ("none", *GRIDS)
# how far x·M may be from an integer and still count as on the grid (float32 rounding of k / M)
_ON_GRID_TOL = {"uint8": 1e-3, "uint16": 1e-2}
# ε written as k / M (8/255) is k·(1 ± 1e-16) grid steps in float64: allow that much, no more
_EPS_SLACK = 1e-7


def grid_size(quantize: str) -> int:
    """M of the grid ``quantize`` names; one clear message for anything else."""
    if quantize not in GRIDS:
        raise ConfigError(f"quantize={quantize!r} is not one of {', '.join(MODES)}")
    return GRIDS[quantize]


def off_grid(x: torch.Tensor, quantize: str) -> int:
    """How many values of ``x`` are not on the grid ``quantize`` names (0 when all are)."""
    m = grid_size(quantize)
    scaled = x.detach().double() * m
    return int(((scaled - scaled.round()).abs() > _ON_GRID_TOL[quantize]).sum())


def grid_steps(x: torch.Tensor, quantize: str) -> torch.Tensor:
    """The integer grid index k of every value of ``x`` (int64); ``x`` must be on the grid."""
    return (x.detach().double() * grid_size(quantize)).round().long()


def from_steps(k: torch.Tensor, quantize: str, dtype: torch.dtype) -> torch.Tensor:
    """``k / M`` in ``dtype``: the float pixel of grid index ``k`` (as ``uint8_image.float() / 255``)."""
    return k.to(dtype) / grid_size(quantize)


def _linf(r: torch.Tensor, c: torch.Tensor, eps_steps: float, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp rounded steps ``r`` into the grid points within ε of ``c`` (all in grid steps); per sample, whether
    every pixel's ball holds a grid point."""
    lo = (c - eps_steps - _EPS_SLACK).ceil().clamp(0, m).long()
    hi = (c + eps_steps + _EPS_SLACK).floor().clamp(0, m).long()
    ok = (lo <= hi).flatten(1).all(dim=1)
    return torch.maximum(torch.minimum(r, hi), lo), ok


def _greedy(r: torch.Tensor, t: torch.Tensor, c: torch.Tensor, p: float, budget: float) -> torch.Tensor:
    """Per sample (rows of N×D), replace steps ``r`` by ``t`` (each no farther from ``c``), the pixels where that
    gains most first, until Σ|·−c|^p ≤ ``budget`` (or every pixel is replaced)."""
    rp, tp = (r - c).abs() ** p, (t - c).abs() ** p
    gain, order = (rp - tp).sort(dim=1, descending=True)
    left = rp.sum(dim=1, keepdim=True) - torch.cat([gain.new_zeros(len(r), 1), gain.cumsum(dim=1)], dim=1)
    n_fix = (left > budget).sum(dim=1)  # left only decreases: the shortest prefix that is within budget
    mask_sorted = torch.arange(r.shape[1], device=r.device)[None, :] < n_fix[:, None]
    mask = torch.zeros_like(mask_sorted).scatter(1, order, mask_sorted)
    return torch.where(mask, t, r)


def _lp(r: torch.Tensor, a: torch.Tensor, c: torch.Tensor, p: float, eps_steps: float,
        m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rounded steps ``r`` moved into the Lp ball in two fall-backs: to the grid neighbour of ``a`` nearer to the
    clean ``c`` (truncation toward it), then to the grid point nearest ``c``; per sample, whether it fits."""
    budget = eps_steps ** p * (1 + 1e-12)
    lo, hi = a.floor().clamp(0, m), a.ceil().clamp(0, m)
    t = torch.where((lo - c).abs() <= (hi - c).abs(), lo, hi)
    g0 = c.round().clamp(0, m)  # the grid point nearest the clean input: if it is outside, every one is
    out = _greedy(_greedy(r, t, c, p, budget), g0, c, p, budget)
    ok = ((out - c).abs() ** p).sum(dim=1) <= budget
    return out, ok


def to_grid(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str, quantize: str) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """``x_adv`` moved onto the grid inside the ``norm`` ball of radius ``eps`` around ``x`` (module docstring),
    in ``x_adv``'s dtype, and per sample whether that was possible. A sample whose ball holds no grid point
    (ε below the clean input's distance to the grid: ε = 0 on data that is not itself on the grid) gets the
    clean input back, the only input of its ball."""
    m = grid_size(quantize)
    c, a = x.detach().double() * m, x_adv.detach().double() * m
    # a sample on the grid (float32 k/M) is taken as exactly k/M; an off-grid one stays as it is, every pixel
    on = ((c - c.round()).abs() <= _ON_GRID_TOL[quantize]).flatten(1).all(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
    c = torch.where(on, c.round(), c)
    r = a.round().clamp(0, m)  # the nearest grid point, inside [0, 1]
    if norm == "linf":
        k, ok = _linf(r, c, eps * m, m)
    else:
        flat, ok = _lp(r.flatten(1), a.flatten(1), c.flatten(1), {"l2": 2.0, "l1": 1.0}[norm], eps * m, m)
        k = flat.reshape(r.shape)
    xq = from_steps(k.long(), quantize, x_adv.dtype)
    keep = ok.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, xq, x.to(x_adv.dtype)), ok


def on_grid(out: LevelOutput, x: torch.Tensor, y: torch.Tensor, pert: Perturbation, model: torch.nn.Module,
            quantize: str) -> tuple[LevelOutput, torch.Tensor, torch.Tensor]:
    """An attack's verified float output → (the output on the grid, its sizes, whether the float example was
    classified correctly). The grid example is verified again against the threat model before it is scored."""
    float_logits, _ = worst_of(model, out.x, y, pert.score_draws)
    float_correct = (float_logits.argmax(dim=1) == y).cpu()
    norm = pert.norm_obj
    assert norm is not None  # attacks declare a norm (checked by the planner and by verify_batch above)
    xq, _ = to_grid(x, out.x, out.level, norm.name, quantize)
    sizes = verify_batch(pert, out.level, x, xq)
    return replace(out, x=xq), sizes, float_correct
