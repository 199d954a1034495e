"""Perturbation levels as users write them: ``eps=0.1`` or ``eps=[8/255]``, checked for repeats and units.

``normalize_levels`` turns each perturbation's ``eps`` / ``severities`` into a list of
floats before anything is built or hashed (so ``[8/255]`` and ``[0.0313725…]`` are one
task), and keeps the text a fraction was written as, for printing it back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from engine.errors import ConfigError

LEVEL_KEYS = ("eps", "severities")
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")

Labels = dict[str, dict[float, str]]


def _parse(value: Any) -> tuple[Any, str | None]:
    """A fraction string → (float, its text); anything else unchanged (the perturbation checks it)."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m and float(m.group(2)) != 0:
            return float(m.group(1)) / float(m.group(2)), value.replace(" ", "")
    return value, None


def normalize_levels(perturbations: Mapping[str, Any]) -> tuple[dict[str, Any], Labels]:
    """Each perturbation config with its level list normalised, and the labels of fractions.

    A scalar becomes a one-element list; a level that appears twice is refused (it
    would duplicate every row of that level and double the n of its interval).
    """
    out: dict[str, Any] = {}
    labels: Labels = {}
    for name, pcfg in perturbations.items():
        pcfg = dict(pcfg)
        for key in LEVEL_KEYS:
            if key not in pcfg:
                continue
            raw = pcfg[key]
            values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
            parsed = [_parse(v) for v in values]
            pcfg[key] = [v for v, _ in parsed]
            labels.setdefault(name, {}).update({v: text for v, text in parsed if text is not None})
            seen: set[float] = set()
            for v in pcfg[key]:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    if float(v) in seen:
                        raise ConfigError(
                            f"perturbation.{name}.{key} lists {v:g} more than once; give each level once "
                            "(a repeated level would count every sample twice)"
                        )
                    seen.add(float(v))
        out[name] = pcfg
    return out, labels


def check_units(name: str, norm: str | None, levels: tuple[float, ...], image_shape: tuple[int, ...]) -> None:
    """ε beyond what the norm can reach on images in [0, 1] is a units mistake (e.g. 8 meant as 8/255)."""
    if norm is None or not levels:
        return
    dim = math.prod(image_shape)
    top = max(levels)
    limits = {"linf": (1.0, "L∞ ε is in pixel units on the [0, 1] scale, at most 1 (write 8/255, not 8)"),
              "l2": (math.sqrt(dim), f"L2 ε is in [0, 1] pixel units; the largest possible ‖δ‖₂ for "
                                     f"{'×'.join(map(str, image_shape))} images is √{dim} = {math.sqrt(dim):.4g}"),
              "l1": (float(dim), f"L1 ε is in [0, 1] pixel units; the largest possible ‖δ‖₁ is {dim}")}
    if norm in limits and top > limits[norm][0]:
        raise ConfigError(f"perturbation.{name}: ε {top:g} is larger than any {norm} perturbation of an image "
                          f"can be. {limits[norm][1]}")


def level_label(labels: Labels, perturbation: str, level: float) -> str | None:
    """The text a level was written as (``8/255``), or None when it was a plain number."""
    return labels.get(perturbation, {}).get(level)
