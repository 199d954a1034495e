"""Threat models as a checked structure: parse a perturbation's ``tags`` (list or mapping) into who, how, and which ids.

Every perturbation config carries ``tags``. The historic form is a list of words
(``[white-box, AML.T0043.000, AML.T0015]``) and stays valid; the mapping form
spells the structure out::

    tags:
      knowledge: white-box          # white-box | black-box | none (natural shift, no adversary)
      goal: untargeted              # untargeted | targeted | natural-shift | none
      atlas: [AML.T0043.000, AML.T0015]
      stride: tampering
      labels: [my-label]            # free words, kept as they are

Both forms are parsed by :func:`parse_tags` into a :class:`ThreatModel`; ATLAS
ids, knowledge words, goals and STRIDE categories are checked against the
vocabularies below and a mistake is a ``ConfigError`` naming the valid values.
:func:`canonical_tags` turns either form back into the list form, so code that
asks ``"white-box" in pert.tags`` keeps working. docs/threat-model.md explains
what these ids mean for a reviewer and what Gauntlet does not cover.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError

# MITRE ATLAS techniques a reviewer meets when mapping a threat model onto Gauntlet (atlas.mitre.org).
ATLAS: dict[str, str] = {
    "AML.T0005": "Create Proxy ML Model",
    "AML.T0005.001": "Create Proxy ML Model: Train Proxy via Replication",
    "AML.T0015": "Evade ML Model",
    "AML.T0018": "Manipulate AI Model (backdoor)",
    "AML.T0020": "Poison Training Data",
    "AML.T0024": "Exfiltration via ML Inference API",
    "AML.T0024.000": "Infer Training Data Membership",
    "AML.T0024.001": "Invert ML Model",
    "AML.T0024.002": "Extract ML Model",
    "AML.T0029": "Denial of ML Service",
    "AML.T0031": "Erode ML Model Integrity",
    "AML.T0034": "Cost Harvesting",
    "AML.T0040": "ML Model Inference API Access",
    "AML.T0042": "Verify Attack",
    "AML.T0043": "Craft Adversarial Data",
    "AML.T0043.000": "Craft Adversarial Data: White-Box Optimization",
    "AML.T0043.001": "Craft Adversarial Data: Black-Box Optimization",
    "AML.T0043.002": "Craft Adversarial Data: Black-Box Transfer",
    "AML.T0043.003": "Craft Adversarial Data: Manual Modification",
    "AML.T0044": "Full ML Model Access",
}
# What Gauntlet evaluates today (docs/threat-model.md); the others are named so a reviewer can state the gap.
COVERED_ATLAS = frozenset({"AML.T0015", "AML.T0040", "AML.T0043", "AML.T0043.000", "AML.T0043.001",
                           "AML.T0043.002", "AML.T0044",
                           # gauntlet extract (docs/extraction.md) and gauntlet probe (denial of service)
                           "AML.T0005", "AML.T0005.001", "AML.T0024.002", "AML.T0042", "AML.T0029", "AML.T0034"})
KNOWLEDGE = ("white-box", "black-box", "none")
GOALS = ("untargeted", "targeted", "natural-shift", "none")
STRIDE = ("spoofing", "tampering", "repudiation", "information-disclosure", "denial-of-service",
          "elevation-of-privilege")
# List-form words that mean "no adversary": corruptions and the clean baseline.
NO_ADVERSARY = frozenset({"natural-shift", "non-adversarial", "baseline"})
MAPPING_KEYS = ("knowledge", "goal", "atlas", "stride", "labels")


@dataclass(frozen=True)
class ThreatModel:
    """Who the adversary is (knowledge), what they want (goal), the ATLAS ids and STRIDE category."""

    knowledge: tuple[str, ...]  # one or more of KNOWLEDGE: a suite mixing members is white-box and black-box
    goal: str
    atlas: tuple[str, ...]
    stride: str | None
    labels: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"knowledge": list(self.knowledge), "goal": self.goal,
                "atlas": {i: ATLAS[i] for i in self.atlas}, "stride": self.stride, "labels": list(self.labels)}

    def adversary(self) -> str:
        """'a white-box adversary who knows the weights' and the like, for a verdict's sentence."""
        if self.knowledge == ("none",):
            return "natural distribution shift (no adversary)"
        parts = []
        if "white-box" in self.knowledge:
            parts.append("a white-box adversary who knows the weights and gradients")
        if "black-box" in self.knowledge:
            parts.append("a black-box adversary with query access to the scores")
        return " and ".join(parts)

    def not_covered(self) -> list[str]:
        """The ATLAS techniques this evaluation says nothing about (the reviewer's gap list)."""
        return [f"{ATLAS[i]} ({i})" for i in ("AML.T0020", "AML.T0018", "AML.T0024.002", "AML.T0024.000",
                                               "AML.T0029") if i not in self.atlas]


def _suggest(word: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_atlas(where: str, ids: Sequence[str]) -> tuple[str, ...]:
    for i in ids:
        if i not in ATLAS:
            raise ConfigError(f"{where}: unknown MITRE ATLAS id {i!r}{_suggest(str(i), list(ATLAS))}; "
                              f"known ids: {', '.join(ATLAS)} (docs/threat-model.md)")
    return tuple(dict.fromkeys(ids))


def _check_word(where: str, key: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(f"{where}: tags.{key}={value!r} is not one of {', '.join(valid)}{_suggest(value, valid)}")
    return value


def _from_list(where: str, tags: Sequence[Any], family: str | None) -> ThreatModel:
    knowledge: list[str] = []
    atlas: list[str] = []
    labels: list[str] = []
    goal, stride = None, None
    for raw in tags:
        tag = str(raw)
        if tag.upper().startswith("AML."):
            atlas.append(tag)
        elif tag in ("white-box", "black-box"):
            knowledge.append(tag)
        elif tag.startswith("goal:"):
            goal = _check_word(where, "goal", tag[5:], GOALS)
        elif tag.startswith("stride:"):
            stride = _check_word(where, "stride", tag[7:], STRIDE)
        elif tag.replace("_", "-").replace(" ", "-").lower() in ("whitebox", "white-box", "blackbox", "black-box",
                                                                 "greybox", "grey-box", "graybox", "gray-box"):
            raise ConfigError(f"{where}: tag {tag!r} is not a knowledge word; use white-box or black-box "
                              "(or the mapping form, docs/threat-model.md)")
        else:
            labels.append(tag)
    adversarial = family == "attack" or bool(knowledge) or bool(atlas)
    if not knowledge:
        knowledge = ["white-box"] if family == "attack" else ["none"]
    if goal is None:
        goal = "untargeted" if adversarial and not NO_ADVERSARY & set(labels) else (
            "none" if "baseline" in labels else "natural-shift")
    if stride is None and adversarial:
        stride = "tampering"  # the adversary tampers with the model's inputs
    return ThreatModel(tuple(knowledge), goal, _check_atlas(where, atlas), stride, tuple(labels))


def _from_mapping(where: str, tags: Mapping[str, Any]) -> ThreatModel:
    unknown = sorted(set(tags) - set(MAPPING_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown tags key(s) {unknown}; valid keys: {', '.join(MAPPING_KEYS)}")
    raw_k = tags.get("knowledge", "white-box")
    knowledge = [raw_k] if isinstance(raw_k, str) else list(raw_k)
    for k in knowledge:
        _check_word(where, "knowledge", str(k), KNOWLEDGE)
    goal = _check_word(where, "goal", str(tags.get("goal", "untargeted")), GOALS)
    stride = tags.get("stride")
    if stride is not None:
        stride = _check_word(where, "stride", str(stride), STRIDE)
    atlas = tags.get("atlas", [])
    atlas = [atlas] if isinstance(atlas, str) else list(atlas)
    labels = tuple(str(x) for x in tags.get("labels", []) or [])
    return ThreatModel(tuple(str(k) for k in knowledge), goal, _check_atlas(where, [str(a) for a in atlas]),
                       stride, labels)


def parse_tags(where: str, tags: Any, family: str | None = None) -> ThreatModel:
    """The threat model a perturbation's ``tags`` describe (list or mapping form); ``ConfigError`` on a mistake.

    ``family`` ('attack', 'corruption', 'clean') fills what the list form leaves out:
    an attack without a knowledge word is white-box, a corruption has no adversary.
    """
    if tags is None:
        tags = []
    if isinstance(tags, Mapping):
        return _from_mapping(where, tags)
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise ConfigError(f"{where}: tags must be a list of words or a mapping with keys "
                          f"{', '.join(MAPPING_KEYS)}, got {tags!r}")
    return _from_list(where, tags, family)


def canonical_tags(tags: Any) -> tuple[str, ...]:
    """The list form of ``tags`` (a mapping becomes knowledge words, ATLAS ids, goal:…, stride:…, labels)."""
    if not isinstance(tags, Mapping):
        return tuple(str(t) for t in (tags or ()))
    tm = _from_mapping("tags", tags)
    out = [k for k in tm.knowledge if k != "none"] + list(tm.atlas) + [f"goal:{tm.goal}"]
    if tm.stride:
        out.append(f"stride:{tm.stride}")
    if "none" in tm.knowledge:
        out.append("non-adversarial")
    return (*out, *tm.labels)


def describe(tm: ThreatModel, norm: str | None, eps: str | None) -> str:
    """One sentence: what a verdict under ``tm`` holds for, and what it says nothing about."""
    if tm.knowledge == ("none",):
        return ("holds for natural distribution shift (common corruptions) with no adversary; "
                "says nothing about adversarial inputs, poisoning or extraction")
    ball = f"{'L∞' if norm == 'linf' else 'L2' if norm == 'l2' else norm} " if norm else ""
    radius = f" with ε = {eps}" if eps else ""
    gaps = ["black-box API abuse"] if "black-box" not in tm.knowledge else []
    gaps += ["poisoning", "extraction", "membership inference", "denial of service"]
    who = tm.adversary().replace("a white-box adversary", f"a white-box {ball}adversary{radius}", 1) \
        if "white-box" in tm.knowledge else f"{ball}{tm.adversary()}{radius}"
    return f"holds for {who}; says nothing about {', '.join(gaps[:-1])} or {gaps[-1]}"
