"""Paired comparison of checkpoints on the same samples: A − B per (perturbation, level), McNemar, Bonferroni.

``paired_comparison`` is pure (rows in, rows out); ``compare_runs`` loads run folders in the
order given (optionally labelled ``LABEL=OUT_DIR``), refuses to pair different datasets, and
``render_paired`` prints the table of ``gauntlet compare``. One sign everywhere: A − B, A the
first model or run given. Each interval (Tango's score interval) is the inversion of the test
beside it (McNemar's score test), so the two never disagree; primary rows share a Bonferroni
correction applied to both; secondary rows are unadjusted and descriptive (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import GauntletError
from engine.stats import leaderboard
from engine.stats.intervals import PairedCounts, format_p
from engine.stats.paired import ALPHA, paired_counts, score_test

Key = tuple[str, str, float]  # (perturbation, family, level)
Outcomes = dict[Key, dict[tuple[str, int], bool]]  # key → {(dataset, sample_id): correct}
Endpoint = tuple[str, float | None]  # (perturbation, level); None = every level


@dataclass(frozen=True)
class PairedRow:
    """One (perturbation, level) of model A against model B on the samples both were evaluated on.

    ``difference`` is accuracy A − accuracy B. A primary row is one of ``n_primary`` rows of the
    multiplicity family: its interval has level 1 − 0.05/m and ``p_adjusted = min(1, m·p)``
    (Bonferroni). The interval inverts the test, so it excludes 0 exactly when the p-value at
    its level is below 0.05. A secondary row has the unadjusted 95 % interval, the unadjusted p
    and ``p_adjusted`` None.
    """

    model_a: str
    model_b: str
    perturbation: str
    family: str
    level: float
    counts: PairedCounts
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float  # McNemar score test, unadjusted
    p_adjusted: float | None
    primary: bool
    n_primary: int
    only_in_a: int  # samples evaluated for A but not B (excluded)
    only_in_b: int

    @property
    def n(self) -> int:
        return self.counts.n

    @property
    def accuracy_a(self) -> float:
        return (self.counts.both + self.counts.only_a) / self.n if self.n else float("nan")

    @property
    def accuracy_b(self) -> float:
        return (self.counts.both + self.counts.only_b) / self.n if self.n else float("nan")

    @property
    def difference(self) -> float:
        return self.counts.difference

    @property
    def decision(self) -> str:
        """``a``/``b`` (significantly more accurate), ``none``, ``secondary`` (no claim) or ``empty``."""
        if self.n == 0:
            return "empty"
        if not self.primary or self.p_adjusted is None:
            return "secondary"
        if self.p_adjusted < ALPHA:  # then, by construction, the interval excludes 0 on the same side
            return "a" if self.difference > 0 else "b"
        return "none"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(counts=asdict(self.counts), n=self.n, accuracy_a=self.accuracy_a, accuracy_b=self.accuracy_b,
                 difference=self.difference, decision=self.decision, sentence=sentence(self))
        return d


def json_safe(x: Any) -> Any:
    """NaN (an undefined number, e.g. a difference over zero shared samples) becomes null: valid JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def level_phrase(family: str, level: float) -> str:
    if family == "clean":
        return "on clean inputs"
    if family == "corruption":
        return f"at severity {int(level)}"
    return f"at ε = {level:g}"


def level_cell(family: str, level: float) -> str:
    return "-" if family == "clean" else (f"s{int(level)}" if family == "corruption" else f"ε={level:g}")


def ci_percent(level: float) -> str:
    """``95``, ``99.17``: the interval's level in per cent, as many digits as it needs."""
    return f"{100 * level:.4g}"


def adjustment_phrase(n_primary: int) -> str:
    return "one primary comparison: no adjustment" if n_primary == 1 else f"Bonferroni over {n_primary} primary rows"


def sentence(row: PairedRow) -> str:
    """The row in words, with the table's sign (A − B), interval and the p-value of the same level."""
    a, b = row.model_a, row.model_b
    where = f"{'' if row.family == 'clean' else f'under {row.perturbation} '}{level_phrase(row.family, row.level)}"
    if row.n == 0:
        return f"{a} vs {b} {where}: no sample evaluated for both"
    diff = (f"{a} − {b} = {100 * row.difference:+.1f} pp [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}] "
            f"({ci_percent(row.ci_level)} % CI)")
    decision = row.decision
    if decision == "secondary":
        return (f"secondary ({a} vs {b} {where}, descriptive, not in the multiplicity correction): {diff}, "
                f"{format_p(row.p_value)} (unadjusted)")
    assert row.p_adjusted is not None
    test = f"{format_p(row.p_adjusted)} ({adjustment_phrase(row.n_primary)})"
    if decision in ("a", "b"):
        win, lose = (a, b) if decision == "a" else (b, a)
        verb = "more accurate" if row.family == "clean" else "more robust"
        return f"{win} is {verb} than {lose} {where}: {diff}, {test}"
    return f"no significant difference between {a} and {b} {where}: {diff}, {test}"


def _where(won: Sequence[PairedRow], among: Sequence[PairedRow]) -> str:
    """Where ``won`` lie among the levels compared: ``ε ≥ 0.15``, ``ε ≤ 0.1``, ``every ε`` or the levels; the
    perturbations are named when ``among`` has several (``fgsm_linf and pgd_linf at ε ≥ 0.15``)."""
    groups: dict[str, list[str]] = {}
    for p in dict.fromkeys(r.perturbation for r in won):
        every = sorted(r.level for r in among if r.perturbation == p)
        mine = sorted(r.level for r in won if r.perturbation == p)
        corr = next(r.family for r in won if r.perturbation == p) == "corruption"
        sym, fmt = ("severity", lambda x: f"{int(x)}") if corr else ("ε", lambda x: f"{x:g}")
        if mine == every:
            desc = f"every {sym}" if len(every) > 1 else f"{sym} = {fmt(mine[0])}"
        elif mine == every[-len(mine):]:
            desc = f"{sym} ≥ {fmt(mine[0])}"
        elif mine == every[:len(mine)]:
            desc = f"{sym} ≤ {fmt(mine[-1])}"
        else:
            desc = f"{sym} = " + ", ".join(fmt(x) for x in mine)
        groups.setdefault(desc, []).append(p)
    if len({r.perturbation for r in among}) == 1:
        return next(iter(groups))
    return "; ".join(f"{' and '.join(ps)} at {desc}" for desc, ps in groups.items())


def _count_phrase(rows: Sequence[PairedRow], a: str, b: str, what: str, better: str) -> str:
    """``a is more robust than b at 4 of the 12 attack levels (ε ≥ 0.15), never less`` for one group of rows."""
    wins = {x: [r for r in rows if r.decision == x] for x in ("a", "b")}
    total = f"{len(rows)} {what} levels"
    first = "a" if len(wins["a"]) >= len(wins["b"]) else "b"
    win, lose = (a, b) if first == "a" else (b, a)
    w, lost = wins[first], wins["b" if first == "a" else "a"]
    if len(rows) == 1:
        where = f"under {rows[0].perturbation} {level_phrase(rows[0].family, rows[0].level)}"
        return f"{win} is {better} than {lose} {where}" if w else f"no significant difference between {a} and {b} " \
            + where
    if not w:
        return f"no significant difference between {a} and {b} at any of the {total}"
    if len(w) == len(rows):
        return f"{win} is {better} than {lose} at all {total} ({_where(w, rows)})"
    text = f"{win} is {better} than {lose} at {len(w)} of the {total} ({_where(w, rows)})"
    return text + (", never less" if not lost else f", less at {len(lost)} ({_where(lost, rows)})")


ATTACKED_NOTE = ("Every robust accuracy here is an attacked accuracy, an upper bound on the model's true robust "
                 "accuracy: a stronger attack can only lower it.")


def with_bound_note(sentences: list[str], rows: Sequence[PairedRow]) -> list[str]:
    """The headline, followed by the upper-bound sentence where it speaks of any attack level."""
    attacked = any(r.family == "attack" and r.level > 0 for r in rows)
    return [*sentences, ATTACKED_NOTE] if attacked and sentences else sentences


def pair_headline(rows: Sequence[PairedRow]) -> str:
    """The decision between the two models of ``rows`` in one sentence, from its primary rows (the
    multiplicity family): attack levels counted, clean and corrupted inputs after them."""
    if not rows:
        return "no (perturbation, level) was evaluated for both models"
    a, b = rows[0].model_a, rows[0].model_b
    primary = [r for r in rows if r.primary and r.n > 0]
    attack = [r for r in primary if r.family == "attack" and r.level > 0]
    clean = [r for r in primary if r.family == "clean" or (r.family == "attack" and r.level == 0)]
    corrupt = [r for r in primary if r.family == "corruption"]
    parts = [_count_phrase(attack, a, b, "attack", "more robust")] if attack else []
    quiet = [w for w, g in (("clean", clean), ("corrupted", corrupt)) if g and all(r.decision == "none" for r in g)]
    if quiet:
        parts.append(f"no significant difference on {' or '.join(quiet)} inputs")
    for r in clean:
        if r.decision in ("a", "b"):
            win, lose = (a, b) if r.decision == "a" else (b, a)
            parts.append(f"{win} is more accurate than {lose} on clean inputs ({100 * abs(r.difference):.1f} pp)")
    if corrupt and "corrupted" not in quiet:
        parts.append(_count_phrase(corrupt, a, b, "corruption", "more accurate"))
    if not parts:
        return f"{a} vs {b}: no primary row with a shared sample"
    m = max(r.n_primary for r in primary)
    extra = len([r for r in rows if not r.primary and r.n > 0])
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] if text.startswith("no ") else text) + (
        f" (paired McNemar tests, {adjustment_phrase(m)}"
        + (f"; {extra} secondary row{'s' if extra != 1 else ''} not in this sentence" if extra else "") + ").")


def parse_endpoints(spec: str) -> list[Endpoint]:
    """``pgd_linf@0.1,fgsm_linf,contrast@3,pgd_linf@8/255`` → [(perturbation, level or None), …]."""
    out: list[Endpoint] = []
    for part in (p.strip() for p in spec.split(",")):
        name, at, level = part.partition("@")
        if not name or (at and not level):
            raise GauntletError(f"--primary {spec!r}: {part!r} is not PERTURBATION or PERTURBATION@LEVEL "
                                "(e.g. --primary pgd_linf@0.1,fgsm_linf,contrast@3)")
        value = None
        if at:
            m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+)\s*)?", level)
            try:
                value = float(m[1]) / (float(m[2]) if m[2] else 1.0) if m else None
            except (ValueError, ZeroDivisionError):
                value = None
            if value is None or not math.isfinite(value):
                raise GauntletError(f"--primary {spec!r}: level {level!r} of {name} is not a number (0.1, 8/255, 3)")
        out.append((name, value))
    return out


def _matches(endpoint: Endpoint, key: Key) -> bool:
    name, level = endpoint
    return name == key[0] and (level is None or key[1] == "clean" or math.isclose(level, key[2], abs_tol=1e-9))


def _primary_keys(keys: Sequence[Key], endpoints: Sequence[Endpoint] | None) -> set[Key]:
    """The keys in the multiplicity family: all of them, or those the endpoints name (each must name one)."""
    if endpoints is None:
        return set(keys)
    missing = [e for e in endpoints if not any(_matches(e, k) for k in keys)]
    if missing:
        have = ", ".join(dict.fromkeys(k[0] if k[1] == "clean" else f"{k[0]}@{k[2]:g}" for k in keys)) or "none"
        named = ", ".join(n if lv is None else f"{n}@{lv:g}" for n, lv in missing)
        raise GauntletError(f"--primary names {named}, which no compared row has; rows: {have}")
    return {k for k in keys if any(_matches(e, k) for e in endpoints)}


def _row(a: str, b: str, key: Key, counts: tuple[PairedCounts, int, int], primary: bool, m: int) -> PairedRow:
    table, only_a, only_b = counts
    t = score_test(table, m if primary else 1)
    return PairedRow(a, b, key[0], key[1], key[2], table, t.ci_low, t.ci_high, t.ci_level, t.p_value,
                     t.p_adjusted if primary else None, primary, m if primary else 0, only_a, only_b)


def paired_rows(outcomes: Mapping[str, Outcomes], pairs: Sequence[tuple[str, str]], has_clean: bool,
                primary: Sequence[Endpoint] | None = None) -> list[PairedRow]:
    """Rows for every (A, B) in ``pairs`` and every (perturbation, level) both have.

    Attack rows at ε = 0 are left out when there is a clean perturbation (they repeat it).
    The family for the correction is the primary rows with at least one shared sample.
    """
    raw = []
    for a, b in pairs:
        oa, ob = outcomes[a], outcomes[b]
        for key in sorted(oa.keys() & ob.keys()):
            if not (has_clean and key[1] == "attack" and key[2] == 0):
                raw.append((a, b, key, paired_counts(oa[key], ob[key])))
    chosen = _primary_keys([r[2] for r in raw], primary)
    m = sum(1 for r in raw if r[2] in chosen and r[3][0].n > 0)
    return [_row(a, b, key, c, key in chosen and c[0].n > 0, m) for a, b, key, c in raw]


def outcomes_of(table: pa.Table, model: str) -> Outcomes:
    """``{(perturbation, family, level): {(dataset, sample_id): correct}}`` for one model of ``table``."""
    out: Outcomes = defaultdict(dict)
    cols = table.select(["model", "perturbation", "family", "level", "dataset", "sample_id", "correct"])
    for r in cols.filter(pc.equal(cols["model"], model)).to_pylist():
        cell = out[(r["perturbation"], r["family"], float(r["level"]))]
        sample = (r["dataset"], r["sample_id"])
        if sample in cell:  # the result store refuses this; a hand-made table must not pair twice silently
            raise GauntletError(f"{model} has two rows for sample {sample[1]} of {r['perturbation']} at level "
                                f"{r['level']:g}: one row per sample is needed for a paired comparison")
        cell[sample] = bool(r["correct"])
    return out


def _has_clean(table: pa.Table) -> bool:
    return table.num_rows > 0 and "clean" in set(table["family"].to_pylist())


def paired_comparison(table: pa.Table, pairs: Sequence[tuple[str, str]],
                      primary: Sequence[Endpoint] | None = None) -> list[PairedRow]:
    """``paired_rows`` for models of one table (a run's rows); all rows primary unless ``primary`` names some."""
    outcomes = {m: outcomes_of(table, m) for m in dict.fromkeys(x for pair in pairs for x in pair)}
    return paired_rows(outcomes, pairs, _has_clean(table), primary)


def render_paired(rows: Sequence[PairedRow], notes: Sequence[str] = ()) -> str:
    """Notes (unfinished runs, unpaired models), a fixed-width table, what it means, one sentence per row."""
    head_notes = [f"note: {n}" for n in notes]
    if not rows:
        return "\n".join([*head_notes, "paired comparison: no (perturbation, level) evaluated for both models"])
    head = ("A", "B", "perturbation", "level", "role", "n", "acc A %", "acc B %", "A − B pp [CI]", "CI %", "A only",
            "B only", "p (McNemar)", "p adj.", "excluded")
    body = [(r.model_a, r.model_b, r.perturbation, level_cell(r.family, r.level),
             "primary" if r.primary else "secondary", str(r.n), f"{100 * r.accuracy_a:.1f}",
             f"{100 * r.accuracy_b:.1f}", f"{100 * r.difference:+.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]",
             ci_percent(r.ci_level), str(r.counts.only_a), str(r.counts.only_b), f"{r.p_value:.3g}",
             "-" if r.p_adjusted is None else f"{r.p_adjusted:.3g}", f"{r.only_in_a}+{r.only_in_b}") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
             for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*head_notes, "A − B = accuracy of A minus accuracy of B (positive: A is more accurate); A is "
                      "the model or run given first.", *lines, "",
                      explain(max((r.n_primary for r in rows), default=0)), "", *(sentence(r) for r in rows)])


def explain(m: int) -> str:
    """What the columns mean, for a table whose multiplicity family has ``m`` primary rows."""
    if m > 1:
        family = (f"{m} primary rows: Bonferroni — p adj. = min(1, {m}·p) and a {ci_percent(1 - ALPHA / m)} % "
                  "interval, so the interval and the test answer at the same level (family-wise error ≤ 5 % over "
                  "the primary rows)")
    else:
        family = "one primary row: 95 % interval and p, no adjustment needed" if m else "no primary row"
    return ("CI: Tango's score interval for paired proportions, the inversion of p: McNemar's score test on the "
            "discordant pairs (A only = A right, B wrong), so a CI excludes 0 exactly when its row's p adj. (p for "
            "a secondary row) is below 0.05. "
            f"{family}. Secondary rows: unadjusted 95 % interval and p, descriptive only. excluded = samples "
            "evaluated for only A + only B.")


@dataclass(frozen=True)
class RunSpec:
    path: Path
    label: str | None = None


_LABEL = re.compile(r"[\w.+:-]+")


def parse_run_args(args: Sequence[str], labels: Sequence[str] | None = None) -> list[RunSpec]:
    """``OUT_DIR`` or ``LABEL=OUT_DIR`` per run, or labels from ``--label`` in the same order.

    An argument is ``LABEL=OUT_DIR`` only when what precedes the first ``=`` is a valid label and the
    whole argument is not an existing folder (``runs/lr=0.1`` stays a path).
    """
    specs = []
    for arg in args:
        label, eq, path = arg.partition("=")
        labelled = eq and _LABEL.fullmatch(label) and path and not Path(arg).expanduser().is_dir()
        specs.append(RunSpec(Path(path), label) if labelled else RunSpec(Path(arg)))
    if labels:
        if len(labels) != len(specs):
            raise GauntletError(f"--label given {len(labels)} time(s) for {len(specs)} run(s): give one per run, "
                                "in the order of the runs (or write LABEL=OUT_DIR)")
        clash = [s.path for s in specs if s.label is not None]
        if clash:
            raise GauntletError(f"{clash[0]} has a label both as LABEL=OUT_DIR and from --label: use one of them")
        specs = [RunSpec(s.path, lab) for s, lab in zip(specs, labels, strict=True)]
    seen: set[str] = set()
    for s in specs:
        if s.label is None:
            continue
        if not _LABEL.fullmatch(s.label):
            raise GauntletError(f"label {s.label!r} of {s.path}: use letters, digits and _ . + : - only")
        if s.label in seen:
            raise GauntletError(f"label {s.label!r} is given to two runs: each run needs its own label")
        seen.add(s.label)
    return specs


@dataclass(frozen=True)
class Comparison:
    rows: list[PairedRow]
    notes: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcomes] = field(default_factory=dict)  # label → per-sample outcomes, in order
    norms: dict[str, str | None] = field(default_factory=dict)  # perturbation → threat-model norm
    other_samples: str | None = None  # how the runs' sample sets differ (no leaderboard then)

    def board(self, sort: str | None = None) -> leaderboard.Leaderboard | None:
        """The leaderboard of more than two models on one sample set; else None."""
        if len(self.outcomes) <= 2 or self.other_samples is not None:
            return None
        return leaderboard.build(self.outcomes, self.norms, sort)

    def headline(self, board: leaderboard.Leaderboard | None = None) -> list[str]:
        """The decision first: for two models one sentence; for more, the ranking and its top pair (without a
        leaderboard: one sentence per pair); then, where attacks were run, that their accuracies are upper bounds."""
        if len(self.outcomes) <= 2:
            return with_bound_note([pair_headline(self.rows)], self.rows)
        if board is None:
            pairs = dict.fromkeys((r.model_a, r.model_b) for r in self.rows)
            return with_bound_note([pair_headline([r for r in self.rows if (r.model_a, r.model_b) == p])
                                    for p in pairs], self.rows)
        top = set(board.ranking[:2])
        pair = [r for r in self.rows if {r.model_a, r.model_b} == top]
        return with_bound_note([leaderboard.ranking_sentence(board)] + ([pair_headline(pair)]
                                                                        if pair and len(top) == 2 else []), self.rows)


def _model_names(run: Any) -> list[str]:
    names = list(dict.fromkeys(t["model"] for t in run.tasks))
    return names + sorted(set(run.rows["model"].to_pylist()) - set(names)) if run.rows.num_rows else names


def display_labels(specs: Sequence[RunSpec], runs: Sequence[Any]) -> list[list[tuple[str, str]]]:
    """Per run, (model name, shown label): the label itself for a labelled one-model run, ``model@label``
    for several models, the bare name when no other run holds it, else ``model@<folder>[#position]``."""
    folders = [s.label or r.out_dir.name or str(r.out_dir) for s, r in zip(specs, runs, strict=True)]
    auto = [f if folders.count(f) == 1 or specs[i].label else f"{f}#{i + 1}" for i, f in enumerate(folders)]
    names = [_model_names(r) for r in runs]
    out = []
    for i, (spec, models) in enumerate(zip(specs, names, strict=True)):
        elsewhere = {m for j, other in enumerate(names) if j != i for m in other}
        if spec.label is not None:
            out.append([(m, spec.label if len(models) == 1 else f"{m}@{spec.label}") for m in models])
        else:
            out.append([(m, m if m not in elsewhere else f"{m}@{auto[i]}") for m in models])
    shown = [lab for run in out for _, lab in run]
    dup = next((lab for lab in shown if shown.count(lab) > 1), None)
    if dup is not None:
        raise GauntletError(f"two models would both be shown as {dup!r}: label the runs (gauntlet compare "
                            "A=OUT_A B=OUT_B, or --label A --label B)")
    return out


Pair = tuple[str, str]


def _pairs(per_run: Sequence[Sequence[Pair]], baseline: str | None) -> tuple[list[Pair], list[str]]:
    """(A, B) pairs in the order given, and notes on models left unpaired.

    One run: every pair of its models. Several: across runs only; two runs that share model
    names pair those names (two checkpoints of one config), else every model of one with every
    model of the other. ``baseline``: every other model as A against it as B.
    """
    labels = [lab for run in per_run for _, lab in run]
    if baseline is not None:
        if baseline not in labels:
            raise GauntletError(f"--baseline {baseline!r} is not among the models: {', '.join(labels)}")
        return [(lab, baseline) for lab in labels if lab != baseline], []
    if len(per_run) == 1:
        return [(labels[i], labels[j]) for i in range(len(labels)) for j in range(i + 1, len(labels))], []
    pairs, notes = [], []
    for i in range(len(per_run)):
        for j in range(i + 1, len(per_run)):
            a, b = dict(per_run[i]), dict(per_run[j])
            shared = [m for m in a if m in b]
            pairs += [(a[m], b[m]) for m in shared] if shared else [(x, y) for x in a.values() for y in b.values()]
            left = [a[m] for m in a if m not in b] + [b[m] for m in b if m not in a] if shared else []
            if left:
                notes.append(f"not compared: {', '.join(left)} (no model of that name in the other run; "
                             "--baseline MODEL compares every model against one)")
    return pairs, notes


def _dataset_identity(run: Any) -> tuple[tuple[str, ...], str]:
    """The dataset names in a run's rows and its dataset config (as canonical JSON)."""
    names = tuple(sorted(set(run.rows["dataset"].to_pylist()))) if run.rows.num_rows else ()
    return names, json.dumps(run.config.get("dataset"), sort_keys=True, default=str)


def _content_digest(run: Any) -> str | None:
    """The dataset content digest ``sweep.json`` records (engine/data/fingerprint.py); None for older runs."""
    try:
        ident = json.loads((run.out_dir / "sweep.json").read_text()).get("dataset_identity")
    except (OSError, ValueError, AttributeError):
        return None
    digest = ident.get("digest") if isinstance(ident, dict) else None
    return digest if isinstance(digest, str) and digest else None


def _same_content(runs: Sequence[Any]) -> None:
    """Same dataset config is not enough: a file regenerated at the same path gives other samples."""
    digests = [(r.out_dir, d) for r in runs if (d := _content_digest(r)) is not None]
    for out_dir, digest in digests[1:]:
        if digest != digests[0][1]:
            raise GauntletError(
                f"cannot pair runs over different data: {digests[0][0]} and {out_dir} name the same dataset config, "
                f"but its content differs (dataset digest {digests[0][1][:12]} vs {digest[:12]}: a file was changed "
                "between the runs); re-run both on the current data")


def _samples(run: Any) -> set[tuple[str, int]]:
    t = run.rows.select(["dataset", "sample_id"]).group_by(["dataset", "sample_id"]).aggregate([])
    return set(zip(t["dataset"].to_pylist(), t["sample_id"].to_pylist(), strict=True))


def sample_difference(runs: Sequence[Any]) -> str | None:
    """None when every run evaluated the same samples; else which runs differ and how (a leaderboard needs one
    sample set: each model's accuracy over other samples is not comparable)."""
    ref = _samples(runs[0])
    for run in runs[1:]:
        other = _samples(run)
        if other != ref:
            first, second = sorted(ref - other), sorted(other - ref)
            e_g = (f"sample_id {first[0][1]} only in the first" if first else f"sample_id {second[0][1]} only in "
                   "the second")
            return (f"{runs[0].out_dir} has {len(ref)} samples and {run.out_dir} has {len(other)} ({len(first)} only "
                    f"in the first, {len(second)} only in the second; e.g. {e_g}); run each with the same "
                    "n_examples and dataset subset (and let unfinished runs finish)")
    return None


def load_runs(specs: Sequence[RunSpec]) -> tuple[list[Any], list[str]]:
    """The runs, refusing empty ones and different datasets, and notes on unfinished or repeated ones."""
    from engine.store.rundir import load_run

    runs = [load_run(s.path) for s in specs]
    notes = [st for r in runs if (st := r.status()) is not None]
    for r in runs:
        if r.rows.num_rows == 0:
            raise GauntletError(f"{r.out_dir} has no result rows yet; " + (r.status() or "run the sweep first"))
    ref = _dataset_identity(runs[0])
    for run in runs[1:]:
        other = _dataset_identity(run)
        if other != ref:
            raise GauntletError(
                f"cannot pair runs over different datasets: {runs[0].out_dir} has {', '.join(ref[0])} ({ref[1]}), "
                f"{run.out_dir} has {', '.join(other[0])} ({other[1]}); a paired comparison needs the same samples "
                "(matched by dataset and sample_id): run both models on one dataset config")
    _same_content(runs)
    where = [r.out_dir.resolve() for r in runs]
    notes += [f"{runs[i].out_dir} is given more than once: its rows are compared with themselves (every difference "
              "is 0)" for i in range(len(runs)) if where.index(where[i]) == i and where.count(where[i]) > 1]
    return runs, notes


def compare_runs(runs_given: Sequence[RunSpec | str | Path], baseline: str | None = None,
                 primary: Sequence[Endpoint] | None = None) -> Comparison:
    """Paired rows for the models of one or several run folders, in the order given."""
    specs = [s if isinstance(s, RunSpec) else RunSpec(Path(s)) for s in runs_given]
    runs, notes = load_runs(specs)
    per_run = display_labels(specs, runs)
    labels = [lab for run in per_run for _, lab in run]
    if len(labels) < 2:
        raise GauntletError(f"need at least two models to compare, found {', '.join(labels) or 'none'} in "
                            f"{', '.join(str(s.path) for s in specs)}")
    pairs, more = _pairs(per_run, baseline)
    outcomes = {lab: outcomes_of(run.rows, m) for run, models in zip(runs, per_run, strict=True) for m, lab in models}
    rows = paired_rows(outcomes, pairs, any(_has_clean(r.rows) for r in runs), primary)
    other = sample_difference(runs) if len(labels) > 2 and len(runs) > 1 else None
    more += [f"no leaderboard: the runs cover different samples: {other}"] if other else []
    return Comparison(rows, notes + more, outcomes, norms_of([r.rows for r in runs]), other)


def norms_of(tables: Sequence[pa.Table]) -> dict[str, str | None]:
    """Perturbation → its threat-model norm (null for clean and corruptions), from the rows."""
    out: dict[str, str | None] = {}
    for t in tables:
        pairs = t.select(["perturbation", "norm"]).group_by(["perturbation", "norm"]).aggregate([]).to_pylist()
        out.update({r["perturbation"]: r["norm"] for r in pairs})
    return out


def main(argv: Sequence[str]) -> int:
    """``gauntlet compare [LABEL=]OUT_A [[LABEL=]OUT_B …] [--label L …] [--baseline M] [--primary E] [--json F]``."""
    parser = argparse.ArgumentParser(prog="gauntlet compare", description=(
        "Compare checkpoints on the same samples (matched by dataset and sample_id): A − B per (perturbation, "
        "level), A the first run or model given, with McNemar p-values and the score intervals that invert them. "
        "Primary rows (all, or --primary) share a Bonferroni correction of both; the others are unadjusted."))
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]OUT_DIR", help="run folders, A first")
    parser.add_argument("--label", action="append", help="a label per run, in order (instead of LABEL=OUT_DIR)")
    parser.add_argument("--baseline", help="compare every other model (A) against this one (B)")
    parser.add_argument("--primary", help="primary endpoints for the correction, e.g. pgd_linf@0.1,fgsm_linf,clean "
                                          "(default: every row)")
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON to this file")
    parser.add_argument("--sort", help="with more than two models, the leaderboard column that ranks them: clean, "
                                       "linf@0.1, auc:linf, corruption, mce (default: a robust-accuracy column)")
    args = parser.parse_args(list(argv))
    try:
        primary = parse_endpoints(args.primary) if args.primary is not None else None
        result = compare_runs(parse_run_args(args.runs, args.label), args.baseline, primary)
        board = result.board(args.sort)
        headline = result.headline(board)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"warning: {note}", file=sys.stderr)
    print("\n".join(headline) + "\n")
    if board is not None:
        print(leaderboard.render_text(board).split("\n", 2)[2] + "\n")  # its first line is the headline's
    print(render_paired(result.rows, result.notes))
    if args.json_path:
        try:
            Path(args.json_path).write_text(json.dumps(json_safe([r.as_dict() for r in result.rows]), indent=2)
                                            + "\n")
        except OSError as exc:
            print(f"error: --json {args.json_path}: {exc.strerror or exc}; the table above is complete",
                  file=sys.stderr)
            return 2
    return 0
