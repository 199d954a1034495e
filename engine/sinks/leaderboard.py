"""Several run folders as one labelled run for ``gauntlet report A B C``, and the page's headline and leaderboard.

``gather`` loads the runs in the order given (``compare.load_runs``: different datasets, dataset
contents or sample sets are refused by name), renames each model to the label it is shown under (``LABEL=OUT_DIR``,
``--label``, or its name when unambiguous) and joins their rows, tasks, flags and claims into one
``RunFolder``, so every table and figure of the report covers all of them. ``headline_html`` and
``board_html`` render the ``headline`` and ``leaderboard`` entries of ``summary.json``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import GauntletError
from engine.stats.compare import RunSpec, display_labels, load_runs, sample_difference
from engine.store.rundir import RunFolder

LEVEL_KEYS = ("eps", "severities", "levels")  # a perturbation's level list: may differ between runs


@dataclass(frozen=True)
class Source:
    """One run given on the command line: its label (or None), folder, run and model → shown name."""

    label: str | None
    run: RunFolder
    names: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "out_dir": str(self.run.out_dir), "run_id": self.run.run_id,
                "command": self.run.command, "unfinished": self.run.status(), "models": self.names}


@dataclass(frozen=True)
class Gathered:
    run: RunFolder  # the runs as one, models renamed to their shown names
    sources: list[Source]
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        """The unfinished runs' lines (N of M tasks, how to resume), or None when all finished."""
        lines = [s for src in self.sources if (s := src.run.status()) is not None]
        return "; ".join(lines) or None


def _relabel(table: pa.Table, names: Mapping[str, str]) -> pa.Table:
    if not names or all(k == v for k, v in names.items()):
        return table
    idx = pc.index_in(table["model"], value_set=pa.array(list(names), pa.string()))
    shown = pc.take(pa.array(list(names.values()), pa.string()), idx)
    at = table.schema.get_field_index("model")
    return table.set_column(at, table.schema.field(at), shown)  # the same field: the tables still concatenate


def _perturbation_notes(sources: Sequence[Source]) -> list[str]:
    """Same-named perturbations configured differently (other than their levels) in two runs."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    notes = []
    for src in sources:
        who = src.label or str(src.run.out_dir)
        for name, cfg in (src.run.config.get("perturbation") or {}).items():
            body = {k: v for k, v in (cfg or {}).items() if k not in LEVEL_KEYS}
            if name not in seen:
                seen[name] = (who, body)
                continue
            first, ref = seen[name]
            keys = sorted(k for k in set(ref) | set(body) if ref.get(k) != body.get(k))
            if keys:
                notes.append(f"{name} is configured differently in {first} and {who} ({', '.join(keys)}): its rows "
                             "stand side by side under one name, but they are not the same attack")
    return notes


def _config(sources: Sequence[Source]) -> dict[str, Any]:
    """The first run's config with every run's models (under their shown names) and perturbations."""
    config = dict(sources[0].run.config)
    config["model"] = {shown: (src.run.config.get("model") or {}).get(m) for src in sources
                       for m, shown in src.names.items()}
    perts: dict[str, Any] = {}
    for src in sources:
        for name, cfg in (src.run.config.get("perturbation") or {}).items():
            perts.setdefault(name, cfg)
    config["perturbation"] = perts
    config["corruption_baseline"] = None if len(sources) > 1 else config.get("corruption_baseline")
    return config


def _claims(sources: Sequence[Source]) -> dict[str, Any] | None:
    if len(sources) == 1:
        return sources[0].run.verdicts
    claims = [{**c, "run": src.label or str(src.run.out_dir)} for src in sources
              for c in ((src.run.verdicts or {}).get("claims") or []) if isinstance(c, dict)]
    return {"claims": claims} if claims else None


def gather(specs: Sequence[RunSpec], out_dir: Path) -> Gathered:
    """The runs of ``specs`` as one ``RunFolder`` whose ``out_dir`` is where the report goes."""
    runs, notes = load_runs(specs)
    other = sample_difference(runs)
    if other is not None:
        raise GauntletError(f"cannot rank runs over different samples: {other}")
    per_run = display_labels(specs, runs)
    sources = [Source(s.label, r, dict(names)) for s, r, names in zip(specs, runs, per_run, strict=True)]
    if len(sources) == 1 and all(k == v for k, v in sources[0].names.items()):
        return Gathered(runs[0], sources, notes)
    rows = pa.concat_tables([_relabel(s.run.rows, s.names) for s in sources])
    tasks = [{**t, "model": s.names.get(t["model"], t["model"])} for s in sources for t in s.run.tasks]
    flags = [{**f, "model": s.names.get(str(f.get("model")), f.get("model"))} for s in sources for f in s.run.flags]
    command = "\n".join(f"{s.label or s.run.out_dir}: {s.run.command or '(not recorded)'}" for s in sources)
    merged = RunFolder(out_dir, "+".join(s.run.run_id for s in sources), _config(sources), tasks, rows, flags,
                       _claims(sources), command, sum(s.run.done for s in sources),
                       all(s.run.summarised for s in sources), None)
    return Gathered(merged, sources, notes + _perturbation_notes(sources))


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def headline_html(sentences: Sequence[str]) -> str:
    """The decision first: one or two sentences in a box at the top of the page."""
    if not sentences:
        return ""
    return "<section id='headline' class='headline'>" + "".join(f"<p>{_e(s)}</p>" for s in sentences) + "</section>"


def _cell(c: Mapping[str, Any] | None, uniform: bool) -> str:
    if not c or c.get("value") is None:
        return "—"
    n = "" if uniform else f" <span class='muted'>n={c['n']}</span>"
    return f"<b>{_pct(c['value'])}</b>{n}<br><span class='ci'>[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]</span>"


def _board_table(board: Mapping[str, Any]) -> str:
    cols = board["columns"]
    rows = board["rows"]
    head = "".join(f"<th title='{_e(c['description'])}' class='{'sorted' if c['key'] == board['sort'] else ''}'>"
                   f"{_e(c['short'])}{' ▼' if c['key'] == board['sort'] else ''}<br><code>{_e(c['key'])}</code>"
                   "</th>" for c in cols)
    ns = {c["key"]: {r["cells"].get(c["key"], {}).get("n") for r in rows if r["cells"].get(c["key"])} for c in cols}
    n_row = "".join(f"<td class='num muted'>{'n=' + str(next(iter(ns[c['key']]))) if len(ns[c['key']]) == 1 else ''}"
                    "</td>" for c in cols)
    body = "".join(
        f"<tr><td class='num'>{r['rank'] or '–'}</td><td><b>{_e(r['model'])}</b></td>"
        + "".join(f"<td class='num{' sorted' if c['key'] == board['sort'] else ''}'>"
                  f"{_cell(r['cells'].get(c['key']), len(ns[c['key']]) <= 1)}</td>" for c in cols) + "</tr>"
        for r in rows)
    return (f"<div class='wide'><table id='leaderboard'><thead><tr><th>#</th><th>model</th>{head}</tr>"
            f"<tr><td></td><td class='muted'>samples</td>{n_row}</tr></thead><tbody>{body}</tbody></table></div>")


def board_html(board: Mapping[str, Any] | None) -> str:
    """The leaderboard: value % [95 % CI] per model and column, ranked by one; the neighbour tests in words."""
    if not board:
        return ""
    sort = next(c for c in board["columns"] if c["key"] == board["sort"])
    tests = "".join(f"<li class='{_e(t['decision'])}'>{_e(t['sentence'])}</li>" for t in board["tests"])
    method = sorted({t["method"] for t in board["tests"]})
    family = max((t["m"] for t in board["tests"]), default=1)
    correction = (f"Bonferroni over the {family} neighbour pairs shown: each interval has level "
                  f"{100 - 5 / family:.4g} % and p adj. = min(1, {family}·p), so an interval excludes 0 exactly "
                  "when p adj. < 0.05"
                  if family > 1 else "one pair: 95 % interval and p, no adjustment")
    cols = "".join(f"<li><code>{_e(c['key'])}</code>: {_e(c['description'])}</li>" for c in board["columns"])
    notes = "".join(f"<li>{_e(n)}</li>" for n in board["notes"])
    return (f"<h2>Leaderboard</h2><p>Ranked by <b>{_e(sort['description'])}</b> "
            f"({'higher' if sort['higher_is_better'] else 'lower'} is better; <code>gauntlet report … --sort "
            f"COLUMN</code> ranks by another column). Every value is a percentage with its 95 % interval.</p>"
            f"{_board_table(board)}<h3>Neighbours in the ranking</h3><ul id='neighbour-tests'>{tests}</ul>"
            f"<p class='muted'>{_e(', '.join(method))}; {_e(correction)} (docs/results.md, \"Leaderboard\").</p>"
            f"<details><summary>columns</summary><ul>{cols}</ul></details>"
            + (f"<h3>Notes</h3><ul class='notes'>{notes}</ul>" if notes else ""))


def runs_html(sources: Sequence[Mapping[str, Any]]) -> str:
    """Which run folder each label stands for (a page over several runs)."""
    if len(sources) < 2:
        return ""
    body = "".join(f"<tr><td>{_e(s['label'] or '—')}</td><td><code>{_e(s['out_dir'])}</code></td>"
                   f"<td><code>{_e(s['run_id'])}</code></td>"
                   f"<td>{_e(', '.join(f'{k} → {v}' for k, v in s['models'].items()))}"
                   f"</td><td>{_e(s['unfinished'] or 'finished')}</td></tr>" for s in sources)
    return ("<h2>Runs</h2><table><thead><tr><th>label</th><th>folder</th><th>run id</th><th>models (→ shown as)</th>"
            f"<th>state</th></tr></thead><tbody>{body}</tbody></table>")


def configs_html(sources: Sequence[Source]) -> str:
    """Each run's resolved config, folded."""
    return "".join(f"<details><summary>{_e(s.label or s.run.out_dir)}: sweep.json config</summary><pre>"
                   f"{_e(json.dumps(s.run.config, indent=2, sort_keys=True, default=str))}</pre></details>"
                   for s in sources)
