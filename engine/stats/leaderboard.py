"""The leaderboard over many models: per-model columns with 95 % intervals, a ranking, tests between neighbours.

Pure: each model's per-sample outcomes in (``{(perturbation, family, level): {(dataset, sample_id):
correct}}``, as ``compare.outcomes_of`` gives them), a ``Leaderboard`` out, and its text. Columns: clean
accuracy; robust accuracy per threat model (norm, ε), the per-sample worst case over the attacks every
model faced there; the normalised area under that worst-case curve per norm (from ε = 0, the clean
accuracy); the mean corruption accuracy; mCE against the first model. One column ranks (``--sort``);
each pair of neighbours in the ranking gets a paired test whose interval is its inversion, with a
Bonferroni correction over the pairs shown (docs/results.md, "Leaderboard").
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import GauntletError
from engine.stats.intervals import Z95, format_p, trapezoid_area, wilson_interval
from engine.stats.paired import ALPHA, Sample, bonferroni_z, paired_counts, score_test

Key = tuple[str, str, float]  # (perturbation, family, level)
Outcomes = Mapping[Key, Mapping[Sample, bool]]
Scores = dict[Sample, float]
NORM_ORDER = {"linf": 0, "l2": 1, "l1": 2}
NORM_NAME = {"linf": "L∞", "l2": "L2", "l1": "L1"}
BOOTSTRAP = 2000  # resamples for mCE's interval and test (seeded: the same numbers on every call)


@dataclass(frozen=True)
class Column:
    """One leaderboard column; ``key`` is what ``--sort`` takes."""

    key: str  # clean | linf@0.1 | auc:linf | corruption | mce
    kind: str  # clean | robust | auc | corruption | mce
    title: str
    members: tuple[str, ...] = ()  # the attacks of a worst case, the ε of an area, the corruptions
    norm: str | None = None
    level: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "mce"

    @property
    def binary(self) -> bool:
        """Per sample right or wrong (clean, robust): McNemar; else a per-sample score or a ratio."""
        return self.kind in ("clean", "robust")


@dataclass(frozen=True)
class Cell:
    """One model's value in one column: a fraction with its 95 % interval over ``n`` samples."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    k: int | None = None  # samples right, for the binary columns
    excluded: int = 0  # samples evaluated by only some of the column's perturbations


EMPTY = Cell(None, None, None, 0)


@dataclass(frozen=True)
class NeighbourTest:
    """``upper`` (ranked higher) against ``lower`` (next) in one column, on the samples both have."""

    column: str
    upper: str
    lower: str
    n: int
    difference: float  # upper − lower, a fraction
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    p_adjusted: float
    m: int
    method: str
    higher_is_better: bool = True

    @property
    def decision(self) -> str:
        """``upper`` or ``lower`` (significantly better in this column), ``none``, or ``empty``."""
        if self.n == 0:
            return "empty"
        if self.p_adjusted >= ALPHA:
            return "none"
        return "upper" if (self.difference > 0) == self.higher_is_better else "lower"

    def as_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "decision": self.decision}


@dataclass
class _Data:
    """Per column, per model: the per-sample scores a cell and a test are computed from."""

    scores: dict[str, dict[str, Scores]] = field(default_factory=dict)
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, np.ndarray] = field(default_factory=dict)  # mce: model → samples × corruptions errors
    error_samples: dict[str, list[Sample]] = field(default_factory=dict)


@dataclass(frozen=True)
class Leaderboard:
    models: list[str]  # in the order given
    columns: list[Column]
    cells: dict[tuple[str, str], Cell]  # (model, column key)
    sort: Column
    ranking: list[str]
    tests: list[NeighbourTest]
    notes: list[str]
    mce_baseline: str | None = None

    def cell(self, model: str, key: str) -> Cell:
        return self.cells.get((model, key), EMPTY)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def level_text(x: float) -> str:
    return f"{x:g}"


def _worst(o: Outcomes, keys: Sequence[Key]) -> tuple[Scores, int]:
    """Per sample, right under every key (evaluated by all of them), and how many only some evaluated."""
    cells = [o[k] for k in keys if k in o]
    if len(cells) < len(keys):
        return {}, 0
    every = set.intersection(*(set(c) for c in cells))
    some = set.union(*(set(c) for c in cells))
    return {s: float(all(c[s] for c in cells)) for s in every}, len(some - every)


def _clean_column(outcomes: Mapping[str, Outcomes], data: _Data) -> Column | None:
    """The ``clean`` perturbation, else (per model) an attack at ε = 0."""
    col = Column("clean", "clean", "clean accuracy")
    data.scores[col.key], data.excluded[col.key] = {}, {}
    for model, o in outcomes.items():
        keys = sorted(k for k in o if k[1] == "clean") or sorted(k for k in o if k[1] == "attack" and k[2] == 0)
        if keys:
            data.scores[col.key][model] = {s: float(ok) for s, ok in o[keys[0]].items()}
    return col if data.scores[col.key] else None


def _robust_columns(outcomes: Mapping[str, Outcomes], norms: Mapping[str, str | None], data: _Data,
                    notes: list[str]) -> list[Column]:
    """One column per (norm, ε > 0): per sample, robust to every attack all models that have one there faced."""
    by: dict[tuple[str, float], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for model, o in outcomes.items():
        for p, fam, lv in o:
            if fam == "attack" and lv > 0:
                by[(norms.get(p) or "?", lv)][model].add(p)
    cols = []
    for (norm, lv), per in sorted(by.items(), key=lambda kv: (NORM_ORDER.get(kv[0][0], 9), kv[0][0], kv[0][1])):
        where = f"{NORM_NAME.get(norm, norm)} ε = {level_text(lv)}"
        common = set.intersection(*per.values())
        left = sorted(set.union(*per.values()) - common)
        if not common:
            notes.append(f"{where}: no attack was run for every model that has one there; no column")
            continue
        if left:
            notes.append(f"{where}: {', '.join(left)} not run for every model, left out of the worst case so "
                         "that every model faces the same attacks")
        missing = [m for m in outcomes if m not in per]
        if missing:
            notes.append(f"{where}: not evaluated for {', '.join(missing)}")
        members = tuple(sorted(common))
        col = Column(f"{norm}@{level_text(lv)}", "robust", f"{where} robust accuracy", members, norm, lv)
        data.scores[col.key], data.excluded[col.key] = {}, {}
        for model in per:
            data.scores[col.key][model], data.excluded[col.key][model] = _worst(
                outcomes[model], [(p, "attack", lv) for p in members])
        cols.append(col)
    return cols


def _auc_column(norm: str, robust: Sequence[Column], clean: Column | None, data: _Data) -> Column | None:
    """Normalised area under the worst-case curve of ``norm`` at the ε every model with that norm has."""
    have = [m for c in robust for m in data.scores[c.key]]
    models = list(dict.fromkeys(have))
    levels = [c for c in robust if all(m in data.scores[c.key] for m in models)]
    with_clean = clean is not None and all(m in data.scores[clean.key] for m in models)
    points = ([clean] if with_clean and clean is not None else []) + levels
    if len(points) < 2:
        return None
    xs = [0.0 if c.kind == "clean" else float(c.level or 0.0) for c in points]
    col = Column(f"auc:{norm}", "auc", f"{NORM_NAME.get(norm, norm)} area under accuracy vs ε (normalised)",
                 tuple(level_text(x) for x in xs), norm)
    data.scores[col.key] = {}
    for m in models:
        per = [data.scores[c.key][m] for c in points]
        common = set.intersection(*(set(p) for p in per))
        data.scores[col.key][m] = {s: trapezoid_area(xs, [p[s] for p in per]) / (xs[-1] - xs[0]) for s in common}
    return col


def _corruption_keys(outcomes: Mapping[str, Outcomes], notes: list[str]) -> list[Key]:
    per = {m: {k for k in o if k[1] == "corruption"} for m, o in outcomes.items()}
    per = {m: ks for m, ks in per.items() if ks}
    if not per:
        return []
    common = set.intersection(*per.values())
    left = sorted(set.union(*per.values()) - common)
    if left:
        notes.append("corruptions: " + ", ".join(f"{p} s{int(lv)}" for p, _, lv in left) + " not run for every "
                     "model with corruptions, left out of the corruption columns")
    return sorted(common)


def _corruption_columns(outcomes: Mapping[str, Outcomes], data: _Data, notes: list[str]) -> list[Column]:
    """Mean corruption accuracy (per sample: mean over corruptions of the mean over severities) and mCE."""
    keys = _corruption_keys(outcomes, notes)
    if not keys:
        return []
    names = sorted({k[0] for k in keys})
    acc = Column("corruption", "corruption", "mean corruption accuracy", tuple(names))
    data.scores[acc.key] = {}
    for model, o in outcomes.items():
        if not all(k in o for k in keys):
            continue
        samples = sorted(set.intersection(*(set(o[k]) for k in keys)))
        errs = np.zeros((len(samples), len(names)))  # per sample and corruption: errors summed over severities
        for k in keys:
            errs[:, names.index(k[0])] += 1.0 - np.fromiter((o[k][s] for s in samples), dtype=np.float64,
                                                            count=len(samples))
        counts = np.array([sum(1 for k in keys if k[0] == c) for c in names], dtype=np.float64)
        data.scores[acc.key][model] = dict(zip(samples, (1 - errs / counts).mean(axis=1).tolist(), strict=True))
        data.errors[model], data.error_samples[model] = errs, samples
    base = next(iter(data.errors))
    mce = Column("mce", "mce", f"mCE (vs {base}; lower is better)", tuple(names))
    return [acc, mce]


def wilson_mean(mean: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's interval at a mean of ``n`` per-sample scores in [0, 1]: such scores vary at most as much as
    right/wrong outcomes with the same mean (variance ≤ μ(1 − μ)), so this is the binomial interval's width
    or wider, and it stays inside [0, 1] and sensible at 0 and 1, where a normal interval collapses."""
    denom = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, mean * (1 - mean)) / n + z * z / (4 * n * n)) / denom
    return (0.0 if mean <= 0 else max(0.0, centre - half), 1.0 if mean >= 1 else min(1.0, centre + half))


def _mean_cell(scores: Scores) -> Cell:
    """Mean of per-sample scores in [0, 1] with ``wilson_mean``'s 95 % interval."""
    n = len(scores)
    if n == 0:
        return EMPTY
    mean = float(np.fromiter(scores.values(), dtype=np.float64).mean())
    return Cell(mean, *wilson_mean(mean, n), n)


def _binary_cell(scores: Scores, excluded: int) -> Cell:
    n, k = len(scores), int(sum(scores.values()))
    if n == 0:
        return EMPTY
    lo, hi = wilson_interval(k, n)
    return Cell(k / n, lo, hi, n, k, excluded)


def _mce(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """mCE from summed errors (last axis: corruptions): mean of num/den; NaN where a baseline sum is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.asarray(ratio.mean(axis=-1))


def _aligned(data: _Data, models: Sequence[str]) -> list[np.ndarray]:
    """Each model's per-sample corruption errors on the samples all of ``models`` have, in one order."""
    order = sorted(set.intersection(*(set(data.error_samples[m]) for m in models)))
    out = []
    for m in models:
        index = {s: i for i, s in enumerate(data.error_samples[m])}
        out.append(data.errors[m][[index[s] for s in order]].reshape(len(order), -1))
    return out


def _bootstrap(errs: Sequence[np.ndarray], stat: Any) -> np.ndarray:
    """``stat`` of the summed errors in each of ``BOOTSTRAP`` resamples of the samples (one draw for all models,
    so the comparison stays paired); seeded, so a page shows the same numbers on every build. Resamples where
    the statistic is undefined (a baseline without errors) are dropped."""
    n = errs[0].shape[0]
    rng = np.random.default_rng(0)
    chunks = []
    chunk = max(1, min(250, 4_000_000 // max(n, 1)))  # resample weights held at once: ≤ 32 MB
    for start in range(0, BOOTSTRAP, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, BOOTSTRAP - start)).astype(np.float64)
        chunks.append(stat(*(w @ e for e in errs)))
    vals = np.concatenate(chunks)
    return vals[np.isfinite(vals)]


def _percentile(vals: np.ndarray, m: int) -> tuple[float, float]:
    """The (1 − 0.05/m) percentile interval as order statistics: it excludes 0 exactly when the bootstrap p of
    ``_boot_test`` times m is below 0.05 (j = ⌈B·q⌉ − 1 with q = 0.05/2m)."""
    s = np.sort(vals)
    j = max(0, math.ceil(len(s) * ALPHA / (2 * m)) - 1)
    return float(s[j]), float(s[len(s) - 1 - j])


def _mce_cells(data: _Data, base: str, names: Sequence[str], notes: list[str]) -> dict[str, Cell]:
    cells, undefined = {}, []
    for m in data.errors:
        e_m, e_b = _aligned(data, [m, base])
        if m == base and e_b.sum(axis=0).all():
            cells[m] = Cell(1.0, 1.0, 1.0, e_b.shape[0])  # 100 % by definition
            continue
        value = float(_mce(e_m.sum(axis=0), e_b.sum(axis=0)))
        if not math.isfinite(value):
            undefined.append(m)
            cells[m] = Cell(None, None, None, e_m.shape[0])
            continue
        lo, hi = _percentile(_bootstrap([e_m, e_b], _mce), 1)
        cells[m] = Cell(value, lo, hi, e_m.shape[0])
    if undefined:
        clean = [c for i, c in enumerate(names) if data.errors[base][:, i].sum() == 0]
        notes.append(f"mCE undefined for {', '.join(undefined)}: the baseline {base} makes no error under "
                     f"{', '.join(clean)} (on the samples compared), and CE divides by its errors")
    return cells


Pair = tuple[str, str]


def _boot_test(data: _Data, base: str, pair: Pair, m: int) -> NeighbourTest:
    """mCE(upper) − mCE(lower), both against ``base``, on the samples all three have: paired bootstrap."""
    e_u, e_l, e_b = _aligned(data, [pair[0], pair[1], base])
    diff = float(_mce(e_u.sum(axis=0), e_b.sum(axis=0)) - _mce(e_l.sum(axis=0), e_b.sum(axis=0)))
    d = _bootstrap([e_u, e_l, e_b], lambda u, lo, b: _mce(u, b) - _mce(lo, b))
    if not math.isfinite(diff) or len(d) == 0:
        return NeighbourTest("mce", *pair, 0, math.nan, math.nan, math.nan, 1 - ALPHA / m, 1.0, 1.0, m,
                             "paired bootstrap", False)
    p = min(1.0, 2 * min(int((d <= 0).sum()), int((d >= 0).sum())) / len(d))
    lo, hi = _percentile(d, m)
    return NeighbourTest("mce", *pair, e_u.shape[0], diff, lo, hi, 1 - ALPHA / m, p, min(1.0, m * p), m,
                         f"paired bootstrap ({len(d)} resamples)", False)


def _z_test(col: Column, a: Scores, b: Scores, pair: Pair, m: int) -> NeighbourTest:
    """Mean of per-sample differences upper − lower, normal test and the interval that inverts it."""
    common = sorted(a.keys() & b.keys())
    n = len(common)
    d = np.array([a[s] - b[s] for s in common], dtype=np.float64)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    p = math.erfc(abs(mean) / se / math.sqrt(2.0)) if se > 0 else (1.0 if n == 0 or mean == 0 else 0.0)
    half = bonferroni_z(m) * se
    return NeighbourTest(col.key, *pair, n, mean, mean - half, mean + half, 1 - ALPHA / m, p, min(1.0, m * p), m,
                         "paired z-test on per-sample differences", col.higher_is_better)


def _binary_test(col: Column, a: Scores, b: Scores, pair: Pair, m: int) -> NeighbourTest:
    table, _, _ = paired_counts({s: bool(v) for s, v in a.items()}, {s: bool(v) for s, v in b.items()})
    t = score_test(table, m)
    return NeighbourTest(col.key, *pair, table.n, table.difference, t.ci_low, t.ci_high, t.ci_level, t.p_value,
                         t.p_adjusted, m, "McNemar score test, Tango's interval")


def neighbour_tests(col: Column, ranking: Sequence[str], data: _Data, base: str | None) -> list[NeighbourTest]:
    """Each ranked model against the next one down: Bonferroni over the pairs with a shared sample."""
    have = [r for r in ranking if r in (data.errors if col.kind == "mce" else data.scores[col.key])]
    pairs = list(itertools.pairwise(have))

    def shared(p: Pair) -> bool:
        if col.kind == "mce":
            return base is not None and bool(set(data.error_samples[p[0]]) & set(data.error_samples[p[1]])
                                             & set(data.error_samples[base]))
        return bool(data.scores[col.key][p[0]].keys() & data.scores[col.key][p[1]].keys())

    m = max(1, sum(1 for p in pairs if shared(p)))
    out = []
    for p in pairs:
        if col.kind == "mce":
            assert base is not None
            out.append(_boot_test(data, base, p, m))
            continue
        a, b = data.scores[col.key][p[0]], data.scores[col.key][p[1]]
        out.append((_binary_test if col.binary else _z_test)(col, a, b, p, m))
    return out


def short_title(col: Column) -> str:
    """The column's header: ``clean``, ``L∞ ε=0.1``, ``L∞ AUC``, ``corruption``, ``mCE``."""
    norm = NORM_NAME.get(col.norm or "", col.norm or "")
    return {"clean": "clean", "robust": f"{norm} ε={level_text(col.level or 0.0)}", "auc": f"{norm} AUC",
            "corruption": "corruption", "mce": "mCE"}[col.kind]


def describe(col: Column) -> str:
    """The column in words, with what it is made of."""
    if col.kind == "robust":
        how = f"worst case of {', '.join(col.members)}" if len(col.members) > 1 else col.members[0]
        return f"{col.title} ({how})"
    if col.kind == "auc":
        return f"{col.title}, ε = {', '.join(col.members)}"
    if col.kind in ("corruption", "mce"):
        return f"{col.title} over {len(col.members)} corruption(s)"
    return col.title


def _parse_level(text: str) -> float | None:
    num, _, den = text.partition("/")
    try:
        value = float(num) / (float(den) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def resolve_sort(columns: Sequence[Column], spec: str | None) -> Column:
    """The column named by ``--sort`` (``linf@8/255`` matches ``linf@0.0313725``); by default the robust column
    with the most attacks (the lower median ε among ties), else corruption accuracy, else clean accuracy."""
    if spec is None:
        robust = [c for c in columns if c.kind == "robust"]
        if robust:
            top = max(len(c.members) for c in robust)
            tied = [c for c in robust if len(c.members) == top and c.norm == next(
                r.norm for r in robust if len(r.members) == top)]
            return tied[(len(tied) - 1) // 2]
        return next((c for c in columns if c.kind == "corruption"), columns[0])
    hit = next((c for c in columns if c.key == spec.strip()), None)
    norm, at, level = spec.strip().partition("@")
    value = _parse_level(level) if at else None
    if hit is None and value is not None:
        hit = next((c for c in columns if c.kind == "robust" and c.norm == norm and c.level is not None
                    and math.isclose(c.level, value, rel_tol=1e-9, abs_tol=1e-12)), None)
    if hit is None:
        raise GauntletError(f"--sort {spec!r} is not a leaderboard column; columns: "
                            + ", ".join(c.key for c in columns))
    return hit


def rank(col: Column, models: Sequence[str], cells: Mapping[tuple[str, str], Cell]) -> list[str]:
    """Models with a value in ``col``, best first; equal values keep the order given."""
    valued = [m for m in models if cells.get((m, col.key), EMPTY).value is not None]
    sign = -1.0 if col.higher_is_better else 1.0
    return sorted(valued, key=lambda m: sign * float(cells[(m, col.key)].value or 0.0))


def build(outcomes: Mapping[str, Outcomes], norms: Mapping[str, str | None], sort: str | None = None) -> Leaderboard:
    """The leaderboard of the models of ``outcomes`` (in its order); ``norms``: perturbation → threat-model norm."""
    models, data, notes = list(outcomes), _Data(), list[str]()
    clean = _clean_column(outcomes, data)
    robust = _robust_columns(outcomes, norms, data, notes)
    columns = [clean] if clean is not None else []
    for norm in dict.fromkeys(c.norm for c in robust):
        mine = [c for c in robust if c.norm == norm]
        auc = _auc_column(str(norm), mine, clean, data)
        columns += [*mine, *([auc] if auc is not None else [])]
    columns += _corruption_columns(outcomes, data, notes)
    if not columns:
        raise GauntletError("no clean, attack or corruption rows to put on a leaderboard")
    cells: dict[tuple[str, str], Cell] = {}
    for col in columns:
        for m, s in data.scores.get(col.key, {}).items():
            cells[(m, col.key)] = _binary_cell(s, data.excluded[col.key].get(m, 0)) if col.binary else _mean_cell(s)
    base = next(iter(data.errors), None)
    if base is not None:
        mce = next(c for c in columns if c.kind == "mce")
        cells.update({(m, "mce"): c for m, c in _mce_cells(data, base, mce.members, notes).items()})
    col = resolve_sort(columns, sort)
    ranking = rank(col, models, cells)
    unranked = [m for m in models if m not in ranking]
    if unranked:
        notes.append(f"not ranked (no {short_title(col)} value): {', '.join(unranked)}")
    return Leaderboard(models, columns, cells, col, ranking, neighbour_tests(col, ranking, data, base), notes, base)


def cell_text(c: Cell) -> str:
    return "—" if c.value is None else f"{_pct(c.value)} [{_pct(c.ci_low)}, {_pct(c.ci_high)}]"


def test_sentence(t: NeighbourTest, col: Column) -> str:
    """One neighbour test in words, with the sign upper − lower, its interval and the p of the same level."""
    u, lo = t.upper, t.lower
    if t.decision == "empty":
        return f"{u} vs {lo} on {short_title(col)}: no sample evaluated for both"
    diff = (f"{u} − {lo} = {100 * t.difference:+.1f} pp [{100 * t.ci_low:.1f}, {100 * t.ci_high:.1f}] "
            f"({100 * t.ci_level:.4g} % CI, n = {t.n})")
    test = format_p(t.p_adjusted) + (f" (Bonferroni over {t.m} neighbour pairs)" if t.m > 1 else "")
    what = short_title(col)
    if t.decision == "upper":
        return f"{u} is ahead of {lo} on {what}: {diff}, {test}"
    if t.decision == "lower":
        return (f"{lo} is significantly better than {u} on {what} on the samples both have, although it ranks "
                f"lower on all of its own: {diff}, {test}")
    return f"no significant difference between {u} and {lo} on {what}: {diff}, {test}"


def ranking_sentence(board: Leaderboard) -> str:
    """The ranking in one sentence: ``a 85.9 % > b 62.5 % ≈ c 60.1 %``, > a significant neighbour test."""
    col = board.sort
    if len(board.ranking) < 2:
        if not board.ranking:
            return f"No model has a {short_title(col)} value."
        m = board.ranking[0]
        parts = [f"{short_title(c)} {cell_text(board.cell(m, c.key))} %" for c in board.columns
                 if board.cell(m, c.key).value is not None][:4]
        return f"{m}: " + ", ".join(parts) + " (95 % CI)."
    chain = f"{board.ranking[0]} {_pct(board.cell(board.ranking[0], col.key).value)} %"
    for t in board.tests:
        sign = {"upper": ">", "lower": "<"}.get(t.decision, "≈")
        chain += f" {sign} {t.lower} {_pct(board.cell(t.lower, col.key).value)} %"
    family = max((t.m for t in board.tests), default=1)
    how = "paired tests between neighbours" + (f", Bonferroni over {family} pairs" if family > 1 else "")
    order = "" if col.higher_is_better else ", lower is better"
    return (f"Ranked by {describe(col)}{order}: {chain} (\">\": significantly ahead of the next; \"≈\": no "
            f"significant difference; {how}).")


def render_text(board: Leaderboard) -> str:
    """The leaderboard for the terminal: the ranking sentence, a table (value [95 % CI], %) of the summary
    columns (clean, the ranking column, areas, corruption; every column is on the report's page), tests, notes."""
    shown = [c for c in board.columns if c.kind != "robust" or c is board.sort]
    head = ["#", "model", *(f"{short_title(c)}{' *' if c is board.sort else ''}" for c in shown)]
    order = board.ranking + [m for m in board.models if m not in board.ranking]
    body = [[str(i + 1) if m in board.ranking else "-", m, *(cell_text(board.cell(m, c.key)) for c in shown)]
            for i, m in enumerate(order)]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
             for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cols = [f"  {c.key}: {describe(c)}" for c in shown]
    hidden = [c.key for c in board.columns if c not in shown]
    more = [f"  (not shown here, on the page of gauntlet report: {', '.join(hidden)})"] if hidden else []
    return "\n".join([ranking_sentence(board), "", "leaderboard (% [95 % CI]; * = the ranking column, --sort "
                      "COLUMN to change)", *lines, "columns:", *cols, *more, "",
                      *(test_sentence(t, board.sort) for t in board.tests), *(f"note: {n}" for n in board.notes)])


def as_dict(board: Leaderboard) -> dict[str, Any]:
    """The leaderboard for ``summary.json`` (fractions; schema in docs/results.md)."""
    rank_of = {m: i + 1 for i, m in enumerate(board.ranking)}
    order = board.ranking + [m for m in board.models if m not in board.ranking]
    return {
        "sort": board.sort.key,
        "mce_baseline": board.mce_baseline,
        "columns": [{"key": c.key, "kind": c.kind, "title": c.title, "short": short_title(c),
                     "description": describe(c), "members": list(c.members), "norm": c.norm, "level": c.level,
                     "higher_is_better": c.higher_is_better} for c in board.columns],
        "rows": [{"model": m, "rank": rank_of.get(m), "cells": {
            c.key: {"value": x.value, "ci_low": x.ci_low, "ci_high": x.ci_high, "n": x.n, "k": x.k,
                    "excluded": x.excluded} for c in board.columns if (x := board.cell(m, c.key)).n}}
                 for m in order],
        "tests": [{**t.as_dict(), "sentence": test_sentence(t, board.sort)} for t in board.tests],
        "ranking_sentence": ranking_sentence(board),
        "notes": list(board.notes),
    }
