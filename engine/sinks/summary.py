"""The terminal summary: accuracy per perturbation × level (rows) and model (columns), with 95 % CIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.sanity.flags import Flag
from engine.stats.aggregate import AccuracyRow


def _level(row: AccuracyRow, labels: Mapping[str, Mapping[float, str]] | None = None) -> str:
    if row.family == "clean":
        return "-"
    if row.family == "corruption":
        return f"s{int(row.level)}"
    text = (labels or {}).get(row.perturbation, {}).get(row.level)
    return f"ε={text}" if text else f"ε={row.level:g}"


def _cell(row: AccuracyRow | None) -> str:
    if row is None:
        return "—"
    return f"{100 * row.accuracy:5.1f} [{100 * row.ci_low:4.1f}, {100 * row.ci_high:5.1f}]"


def render_table(rows: Sequence[AccuracyRow], models: Sequence[str], perturbations: Sequence[str] = (),
                 labels: Mapping[str, Mapping[float, str]] | None = None) -> str:
    """A fixed-width table: one line per (perturbation, level), one column per model.

    Perturbations appear in the order given (the sweep's), then any others alphabetically.
    """
    rank = {p: i for i, p in enumerate(perturbations)}
    rows = sorted(rows, key=lambda r: (rank.get(r.perturbation, len(rank)), r.perturbation, r.level))
    index: dict[tuple[str, float], dict[str, AccuracyRow]] = {}
    names: dict[tuple[str, float], str] = {}
    for r in rows:
        key = (r.perturbation, r.level)
        index.setdefault(key, {})[r.model] = r
        names[key] = _level(r, labels)
    head = ["perturbation", "level", *(f"{m} acc % [95% CI]" for m in models)]
    body = [[p, names[(p, lv)], *(_cell(index[(p, lv)].get(m)) for m in models)] for p, lv in index]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: Sequence[str]) -> str:
        cells = zip(line, widths, strict=True)
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(cells))

    sep = "  ".join("-" * w for w in widths)
    out, prev = [fmt(head), sep], None
    for line in body:
        if prev is not None and line[0] != prev:
            out.append("")
        out.append(fmt(line))
        prev = line[0]
    return "\n".join(out)


FLAG_WIDTH = 120  # characters of one flag's line in the summary; the whole finding is in flags.json
VERDICT_WORDS = {"weak_evaluation": "weak evaluation", "model_defeats_evaluation": "model defeats the evaluation",
                 "broken_setup": "BROKEN SET-UP", "unconfirmed": "unconfirmed"}


def flag_headline(message: str) -> str:
    """A flag message's first clause, up to its first "; " or ". ": what was found, without the why and the
    advice that follow."""
    cuts = [at for at in (message.find("; "), message.find(". ")) if at >= 0]
    return message[:min(cuts)] if cuts else message


def render_flags(flags: Sequence[Flag], width: int = FLAG_WIDTH) -> str:
    """The sanity flags under the table: one line per finding (flags that say the same of several models or
    perturbations share it), cut to ``width``; what was found in full, sample ids and advice are in
    ``flags.json`` (docs/sanity.md). ``sanity flags: none`` when there are none."""
    if not flags:
        return "\n\nsanity flags: none"
    found: dict[tuple[str, str, str], list[str]] = {}
    for f in flags:
        where = f.model + (f" / {f.perturbation}" if f.perturbation else "")
        found.setdefault((f.check, f.verdict, flag_headline(f.message)), []).append(where)
    lines = ["", "", f"sanity flags ({len(flags)}): the numbers above may be optimistic; one line per finding, "
                     "the details in flags.json in the run folder (docs/sanity.md)"]
    for (check, verdict, headline), wheres in found.items():
        head = f"  ! {check} [{', '.join(wheres)}] {VERDICT_WORDS.get(verdict, verdict)}: "
        text = head + headline
        lines.append(text if len(text) <= width else text[:width - 1] + "…")
    return "\n".join(lines)
