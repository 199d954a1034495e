"""The transfer-failure indicator (Pintor et al.): do examples crafted on the differentiable surrogate fool the
real model? Measured on the samples the base run left robust, at each claimed ε.

The surrogate is the model with its non-differentiable pre-processing bypassed
(engine.perturbations.adaptive, ``mode: transfer``). When it is fooled on many
samples but few of its examples fool the real model, the surrogate is not a
faithful stand-in, and neither BPDA nor transfer results can clear the claim.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.claims.indicators import TRACE_SAMPLES, Indicator, trace_member
from engine.data import Dataset
from engine.perturbations.adaptive import GradientView
from engine.perturbations.norms import get_norm
from engine.perturbations.suite import AttackSuite, MemberContext
from engine.seeding import derive_seed

MIN_SURROGATE = 2  # fire only when the surrogate itself was fooled on at least this many samples
MIN_RATE = 0.5  # ... and fewer than this share of its examples fool the real model


def transfer_indicator(nc: Any, model: torch.nn.Module, data: Dataset, suite: AttackSuite,
                       device: torch.device, eps: float | None = None) -> Indicator:
    """Transfer rate of APGD-CE examples from the bypass surrogate to the real model at ``eps`` (default: the
    largest claimed ε; ``nc``: a NormCheck); only the rows measured are decoded from ``data``."""
    eps = float(nc.eps[-1] if eps is None else eps)
    ids = list(nc.base_robust[eps])[:TRACE_SAMPLES]
    if not ids:
        return Indicator("transfer_failure", False, 0, 0, f"no robust sample at ε={eps:g} to measure transfer on",
                         details={"eps": eps})
    pos = {int(s): i for i, s in enumerate(data.sample_ids.tolist())}
    batch = data.take([pos[int(s)] for s in ids])
    x, y = batch.images.to(device), batch.labels.to(device)
    member = trace_member(suite)
    surrogate = GradientView(model, str(nc.at), "transfer")
    norm = get_norm(nc.norm)
    mctx = MemberContext(
        model=surrogate, norm=norm, eps=eps, num_classes=data.num_classes,
        sample_seeds=tuple(derive_seed(0, s, "claims-transfer", eps) for s in ids),
        shared_seed=derive_seed(0, "claims-transfer", eps), max_rows=len(ids),
    )
    res = member.attack(x, y, mctx)
    inside = (norm.measure(res.x_adv - x) <= norm.bound(eps)).to(device)
    with torch.no_grad():
        fooled_s = (surrogate(res.x_adv).argmax(1) != y) & inside
        fooled_r = (model(res.x_adv).argmax(1) != y) & inside & fooled_s
    s, r = int(fooled_s.sum()), int(fooled_r.sum())
    fired = s >= MIN_SURROGATE and r < MIN_RATE * s
    return Indicator(
        "transfer_failure", fired, s - r, len(ids),
        f"examples crafted on the surrogate (pre-processing before {nc.at!r} bypassed) fooled the surrogate on "
        f"{s}/{len(ids)} samples and the real model on {r} of those at ε={eps:g}"
        + (": the surrogate is not faithful, so BPDA/transfer results cannot vouch for the claim" if fired else ""),
        details={"eps": eps, "surrogate_fooled": s, "real_fooled": r, "at": nc.at},
    )
