"""Which perturbations a remote model can take: only those that need its outputs, never its gradients.

Refused at plan time, before any query is spent, naming the perturbations of the sweep that fit. A perturbation
fits when it is not an attack (clean, every corruption) or when its threat model is black-box only; on a
label-only endpoint an attack must also declare ``oracle_output = "label"`` (decision-based: HopSkipJump, RayS).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import ConfigError
from engine.perturbations.base import Perturbation
from engine.remote.model import is_remote, remote_settings


def _needs(pert: Perturbation) -> str | None:
    """What ``pert`` needs from a model: None (nothing), 'gradients', 'scores' or 'label'."""
    if pert.family != "attack":
        return None
    if tuple(pert.threat_model.knowledge) != ("black-box",):
        return "gradients"
    return str(getattr(pert, "oracle_output", "scores"))


def _fits(output: str, need: str | None) -> bool:
    if need is None:
        return True
    if need == "gradients":
        return False
    return need == "label" or output != "label"  # a score-based attack needs scores


def check_remote_perturbations(models: Mapping[str, Mapping[str, Any]], perts: Mapping[str, Perturbation]) -> None:
    """Raise ConfigError if a remote model meets a perturbation that needs what its endpoint does not give."""
    for name, model_cfg in models.items():
        if not is_remote(model_cfg):
            continue
        output = str(remote_settings(name, model_cfg).get("output", "probs"))
        bad = {p: _needs(pert) for p, pert in perts.items() if not _fits(output, _needs(pert))}
        if not bad:
            continue
        fit = [p for p in perts if p not in bad]
        why = "; ".join(f"{p} needs {need}" for p, need in bad.items())
        raise ConfigError(
            f"model {name!r} is a remote target (output: {output}, no gradients): {why}. Perturbations of this "
            f"sweep that fit: {', '.join(fit) or 'none'}; in general clean, every corruption, and black-box "
            f"attacks{' that need only the label (decision-based)' if output == 'label' else ' (square_linf)'} "
            "(docs/remote-targets.md)")
