"""``gauntlet report RUN [RUN …]``: one self-contained HTML page (images inlined as base64) plus summary.json.

The page opens from a file with no network. Top first: the headline (the decision in one or two
sentences), an unfinished run's banner, each checked claim's verdict as a short block of sentences
(when ``verdict.json`` exists), the leaderboard with the tests between neighbours; then the runs and
commands, the models, the summary tables with intervals and n, the figures, the paired comparisons,
the sanity flags, each perturbation's threat-model tags and the configs. Several runs are gathered
under their labels first (``sinks/leaderboard.py``); different datasets are refused.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import GauntletError
from engine.remote.ledger import LEDGER, RunLedger
from engine.sinks import plots
from engine.sinks.budget_summary import black_box_names, budget_html, dense_curves
from engine.sinks.gallery import gallery_html
from engine.sinks.leaderboard import Gathered, board_html, configs_html, gather, headline_html, runs_html
from engine.sinks.remote_summary import render_remote_summary
from engine.sinks.summary_doc import ALL_PAIRS_UP_TO, build_summary, ordered_models, ordered_perturbations
from engine.stats.aggregate import AccuracyRow, accuracy_table
from engine.stats.compare import RunSpec, ci_percent, explain, json_safe, parse_run_args
from engine.store.rundir import RunFolder

log = logging.getLogger(__name__)

FLAG_MEANING = {
    "gradients": "input gradients are zero or NaN: gradient attacks cannot work, robustness is overestimated",
    "probability_output": "the model outputs probabilities, not logits: losses saturate and attacks weaken",
    "randomised_without_eot": "the model is random but an attack averages no gradients (no EOT)",
    "non_monotonic": "accuracy rises with ε although a larger ball contains the smaller one: the attack fails",
    "unbounded_eps_above_chance": "at L∞ ε ≥ 0.5 any image can be made grey, yet accuracy stays above chance",
    "black_box_beats_white_box": "a gradient-free attack broke samples every white-box attack missed: masking",
}
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}
.REFUTED{background:#f8d7da}.CONSISTENT{background:#d4edda}.INCONCLUSIVE{background:#fff3cd}
.flag{background:#fff3cd}.muted{color:#777}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.unfinished{background:#f8d7da;padding:.6em;border:1px solid #c66}
.headline{background:#eef4fb;border-left:5px solid #2b6cb0;padding:.5em 1em;font-size:16px;margin:1em 0}
.headline p{margin:.35em 0}.wide{overflow-x:auto}.ci{color:#666;font-size:12px}th.sorted,td.sorted{background:#eef4fb}
th code{font-size:11px;color:#555;font-weight:normal}#leaderboard td,#leaderboard th{white-space:nowrap}
li.upper,li.lower{font-weight:600}
.claim{border:1px solid #ccc;border-left-width:6px;padding:.3em 1em;margin:.6em 0}.claim p{margin:.3em 0}
.claim.REFUTED{border-left-color:#c0392b}.claim.CONSISTENT{border-left-color:#2e8b57}
.claim.INCONCLUSIVE{border-left-color:#d4a017}"""


@dataclass(frozen=True)
class Figure:
    title: str
    slug: str
    png: bytes


def claim_marks(verdicts: dict[str, Any] | None) -> list[plots.ClaimMark]:
    """The checked claims with a norm, ε and claimed accuracy (``verdict.json``), to mark on their curves."""
    marks = []
    for c in (verdicts or {}).get("claims") or []:
        tm = (c.get("threat_model") or {}) if isinstance(c, dict) else {}
        eps, claimed = tm.get("eps") if isinstance(tm, dict) else None, c.get("claimed_accuracy")
        if isinstance(eps, int | float) and isinstance(claimed, int | float) and isinstance(tm.get("norm"), str):
            name = str(c.get("claim") or c.get("statement") or "claim")
            marks.append(plots.ClaimMark(name + (f" ({c['run']})" if c.get("run") else ""), tm["norm"],
                                         float(eps), float(claimed)))
    return marks


def _heatmap(rows: Sequence[AccuracyRow], models: Sequence[str], perts: Sequence[str], eps: float | None,
             severity: int | None, marks: Sequence[plots.ClaimMark]) -> Figure | None:
    """Models × perturbations at one ε (the claim's, when one was checked) and, with corruptions, one severity."""
    cells, cols = {}, []
    for p in perts:
        fam = next((r.family for r in rows if r.perturbation == p), None)
        want = {"clean": None, "attack": eps, "corruption": severity}.get(fam or "")
        hits = [r for r in rows if r.perturbation == p and (fam == "clean" or r.level == want)]
        if hits:
            cols.append(p)
            cells.update({(r.model, p): r for r in hits})
    if not cols:
        return None
    where = []
    if eps is not None and any(r.family == "attack" for r in cells.values()):
        claim = " (the checked claim's)" if any(abs(m.eps - eps) < 1e-9 for m in marks) else ""
        where.append(f"ε = {eps:g}{claim}, attacks without it left out")
    if any(r.family == "corruption" for r in cells.values()):
        where.append(f"severity {severity}")
    title = "accuracy %" + (f" at {'; '.join(where)}" if where else "")
    return Figure(title, "heatmap", plots.heatmap(cells, models, cols, title))


def make_figures(run: RunFolder, rows: Sequence[AccuracyRow], eps: float | None,
                 severity: int | None) -> list[Figure]:
    """Every figure of the report, in page order."""
    models, perts = ordered_models(run), ordered_perturbations(run)
    marks = claim_marks(run.verdicts)
    figs = []
    for p in perts:
        fam = next((r.family for r in rows if r.perturbation == p), None)
        if fam == "attack" and len({r.level for r in rows if r.perturbation == p}) > 1:
            figs.append(Figure(f"{p}: accuracy vs ε", f"eps_{p}", plots.accuracy_vs_eps(rows, p, models, marks)))
    grid = plots.corruption_grid(rows, models)
    if grid is not None:
        figs.append(Figure("corruptions: accuracy vs severity (dashed: clean accuracy)", "corruptions", grid))
    heat = _heatmap(rows, models, perts, eps, severity, marks)
    figs += [heat] if heat is not None else []
    budget_png = plots.budget_curves_plot(dense_curves(run.rows))
    if budget_png is not None:
        figs.append(Figure("query budget curves: success % vs queries per sample", "budget_curves", budget_png))
    for p in perts:
        members = (run.config.get("perturbation", {}).get(p) or {}).get("attacks")
        if isinstance(members, list) and len(members) > 1:
            png = plots.broken_by_bars(run.rows, p, models)
            if png is not None:
                figs.append(Figure(f"{p}: who broke the samples", f"broken_by_{p}", png))
    return figs


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _table(head: Sequence[str], body: Sequence[Sequence[object]], num_from: int = 1,
           row_class: Sequence[str] | None = None) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = []
    for i, line in enumerate(body):
        tds = "".join(f'<td class="num">{_e(c)}</td>' if j >= num_from else f"<td>{_e(c)}</td>"
                      for j, c in enumerate(line))
        cls = f' class="{_e(row_class[i])}"' if row_class else ""
        trs.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>"


def render_tags(tags: Any) -> str:
    """Tags as given by the config: a list, a mapping (possibly nested) or a scalar."""
    if tags is None or tags == [] or tags == {}:
        return "—"
    if isinstance(tags, dict):
        return "; ".join(f"{k}: {render_tags(v)}" for k, v in tags.items())
    if isinstance(tags, list | tuple):
        return ", ".join(render_tags(t) for t in tags)
    return str(tags)


def _level(family: str, level: float) -> str:
    return "-" if family == "clean" else (f"s{int(level)}" if family == "corruption" else f"ε={level:g}")


def _indicator_sentence(indicators: Any) -> str:
    """The indicators of a failing evaluation in one sentence: which fired, and whether each was cleared."""
    items = indicators if isinstance(indicators, list) else []
    fired = [i for i in items if not isinstance(i, dict) or i.get("fired")]
    if not items:
        return ""
    if not fired:
        return f"Indicators of a failing evaluation: none of the {len(items)} checked fired."
    parts = []
    for i in fired:
        if not isinstance(i, dict):
            parts.append(str(i))
            continue
        cleared = i.get("cleared")
        by = ", ".join(map(str, i.get("cleared_by") or []))
        parts.append(f"{i.get('check', '?')} ({'cleared' + (f' by {by}' if by else '') if cleared else 'NOT cleared'})")
    return f"Indicators of a failing evaluation that fired: {'; '.join(parts)}."


def _decide_sentence(c: dict[str, Any], verdict: str) -> str:
    """What would decide the claim (inconclusive) or change the verdict (decided)."""
    if verdict == "INCONCLUSIVE":
        if c.get("samples_needed"):
            return (f"What would decide it: about {c['samples_needed']} samples (this run has {c.get('n', '?')}), "
                    "if the measured accuracy held; or clearing any indicator left open.")
        return ("What would decide it: clearing the indicators left open (a stronger or adaptive attack), or more "
                "samples.")
    if verdict == "REFUTED":
        return "Decided: a stronger attack can only lower the measured accuracy further."
    if verdict == "CONSISTENT":
        return ("Decided at this n for the attacks run; a stronger attack could still lower it: consistent is not a "
                "proof of robustness.")
    return ""


def _claim_block(c: dict[str, Any]) -> str:
    """One claim as a short block of sentences: claim, measured, why, what would decide it; the fields folded."""
    verdict = str(c.get("verdict", "?")).upper()
    name = c.get("claim") or c.get("statement") or "claim"
    run = f" (run {c['run']})" if c.get("run") else ""
    lo, hi = c.get("ci_low"), c.get("ci_high")
    ci = f" [{_pct(lo)}, {_pct(hi)}] (95 % CI)" if lo is not None and hi is not None else ""
    measured = f"Measured: {_pct(c.get('measured_accuracy'))} %{ci}" + (f" on n = {c['n']}" if c.get("n") else "")
    if c.get("strongest_attack"):
        broke = ", ".join(f"{k} {v}" for k, v in (c.get("broken_by") or {}).items())
        measured += f"; strongest attack {c['strongest_attack']}" + (f" (broken by: {broke})" if broke else "")
    clean = c.get("clean") if isinstance(c.get("clean"), dict) else None
    if clean:
        measured += (f"; clean accuracy {_pct(clean.get('measured_accuracy'))} % against a claimed "
                     f"{_pct(clean.get('claimed_accuracy'))} % ({clean.get('verdict', '?')})")
    sentences = [
        f"<b>{_e(verdict)}</b>: {_e(name)}{_e(run)}, claimed {_e(_pct(c.get('claimed_accuracy')))} % accuracy"
        + (f"; {_e(c['statement'])}" if c.get("statement") and c.get("statement") != name else "") + ".",
        _e(measured) + ".",
        f"Why: {_e(c['reason'])}." if c.get("reason") else "",
        _e(_decide_sentence(c, verdict)),
        _e(_indicator_sentence(c.get("indicators"))),
    ]
    fields = "".join(f"<tr><td>{_e(k)}</td><td>{_e(render_tags(v))}</td></tr>" for k, v in c.items())
    return (f"<div class='claim {_e(verdict)}'>" + "".join(f"<p>{x}</p>" for x in sentences if x)
            + f"<details><summary>every field of the verdict</summary><table>{fields}</table></details></div>")


def _verdicts(doc: dict[str, Any] | None) -> str:
    """The checked claims of ``verdict.json`` (schema of ``gauntlet verify``), tolerant of missing keys."""
    if not doc:
        return ""
    claims = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(claims, list) or not claims:
        return "<h2>Claim verdicts</h2><p>verdict.json lists no claims.</p>"
    blocks = "".join(_claim_block(c if isinstance(c, dict) else {"statement": c}) for c in claims)
    return f"<h2>Claim verdicts</h2>{blocks}"


def _models(summary: dict[str, Any]) -> str:
    body = []
    for m in summary["models"]:
        c = m.get("clean")
        clean = "n/a" if not c else f"{_pct(c['accuracy'])} [{_pct(c['wilson'][0])}, {_pct(c['wilson'][1])}]"
        body.append([m["name"], m.get("checkpoint") or "", m.get("checkpoint_sha256") or "", clean,
                     c["n"] if c else ""])
    return "<h2>Models</h2>" + _table(["model", "checkpoint", "sha256", "clean acc % [95% CI]", "n"], body, 3)


def _accuracy(summary: dict[str, Any]) -> str:
    """One line per (perturbation, level), per model: accuracy % [Wilson], k/n, and Clopper–Pearson."""
    models = [m["name"] for m in summary["models"]]
    index: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    fam: dict[str, str] = {}
    for a in summary["accuracy"]:
        index.setdefault((a["perturbation"], a["level"]), {})[a["model"]] = a
        fam[a["perturbation"]] = a["family"]
    order = {p["name"]: i for i, p in enumerate(summary["perturbations"])}
    body = []
    for (p, lv), cells in sorted(index.items(), key=lambda kv: (order.get(kv[0][0], 1e9), kv[0][0], kv[0][1])):
        line: list[object] = [p, _level(fam[p], lv)]
        for m in models:
            a = cells.get(m)
            line.append("—" if a is None else
                        f"{_pct(a['accuracy'])} [{_pct(a['wilson'][0])}, {_pct(a['wilson'][1])}]  "
                        f"{a['n_correct']}/{a['n']}  CP [{_pct(a['clopper_pearson'][0])}, "
                        f"{_pct(a['clopper_pearson'][1])}]")
        body.append(line)
    head = ["perturbation", "level", *(f"{m}: acc % [Wilson 95%]  k/n  Clopper–Pearson" for m in models)]
    return "<h2>Accuracy</h2>" + _table(head, body, 2)


def _extras(summary: dict[str, Any]) -> str:
    out = []
    if summary["worst_case"]:
        body = [[w["model"], w["norm"], f"ε={w['level']:g}", ", ".join(w["perturbations"]),
                 f"{_pct(w['accuracy'])} [{_pct(w['wilson'][0])}, {_pct(w['wilson'][1])}]",
                 f"{w['n_robust']}/{w['n']}", w["excluded"]] for w in summary["worst_case"]]
        out.append("<h3>Worst case over attacks (a sample counts only if every attack listed left it correct)</h3>"
                   + _table(["model", "norm", "level", "attacks", "acc % [95% CI]", "k/n", "excluded"], body, 4))
    if summary["area_under_curve"]:
        body = [[a["model"], a["perturbation"], f"{a['levels'][0]:g}–{a['levels'][-1]:g}", f"{a['area']:.4f}",
                 f"{_pct(a['normalised'])}", a["n_min"]] for a in summary["area_under_curve"]]
        out.append("<h3>Area under accuracy vs ε (trapezoids; normalised = area / ε range)</h3>"
                   + _table(["model", "attack", "ε range", "area", "normalised %", "n (min)"], body, 2))
    if summary["corruption"]:
        body = [[c["model"], c["baseline"], _pct(c["mean_corruption_accuracy"]), _pct(c["mce"]),
                 _pct(c["relative_mce"])] for c in summary["corruption"]]
        out.append("<h3>Corruption metrics (n/a = undefined, e.g. the baseline makes no error)</h3>"
                   + _table(["model", "CE baseline", "mean corruption acc %", "mCE %", "relative mCE %"], body, 2))
    return "".join(out)


def _comparisons(summary: dict[str, Any]) -> str:
    rows = summary["comparisons"]
    if not rows:
        return "<h2>Paired comparisons</h2><p>One model only: nothing to compare.</p>"
    body = [[r["model_a"], r["model_b"], r["perturbation"], _level(r["family"], r["level"]), r["n"],
             _pct(r["accuracy_a"]), _pct(r["accuracy_b"]),
             f"{100 * r['difference']:+.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]",
             ci_percent(r["ci_level"]), r["counts"]["only_a"], r["counts"]["only_b"], f"{r['p_value']:.3g}",
             "-" if r["p_adjusted"] is None else f"{r['p_adjusted']:.3g}",
             f"{r['only_in_a']}+{r['only_in_b']}"] for r in rows]
    head = ["A", "B", "perturbation", "level", "n", "acc A %", "acc B %", "A − B pp [CI]", "CI %", "A only",
            "B only", "p McNemar", "p adj.", "excluded"]
    family = max((r["n_primary"] for r in rows), default=0)
    which = ("each model against the next in the leaderboard's ranking (A = the higher ranked)"
             if len(summary["models"]) > ALL_PAIRS_UP_TO else "every pair of models, A the one listed first")
    note = ("<p class='muted'>Same samples for both models (matched by dataset and sample_id); A − B = accuracy "
            f"of A minus accuracy of B; {which}. {_e(explain(family))}</p>")
    sentences = "".join(f"<li>{_e(r['sentence'])}</li>" for r in rows)
    return f"<h2>Paired comparisons</h2>{note}{_table(head, body, 4)}<ul>{sentences}</ul>"


def _flags(flags: Sequence[dict[str, Any]]) -> str:
    if not flags:
        return "<h2>Sanity flags</h2><p>None: every check of docs/sanity.md passed.</p>"
    body = [[f.get("check"), f.get("model"), f.get("perturbation") or "", FLAG_MEANING.get(str(f.get("check")),
                                                                                          "see docs/sanity.md"),
             f.get("message")] for f in flags]
    return (f"<h2>Sanity flags ({len(flags)})</h2><p>The numbers above may be optimistic where a flag fires "
            "(docs/sanity.md).</p>" + _table(["check", "model", "perturbation", "what it means", "finding"], body,
                                             99, ["flag"] * len(body)))


def _tags(summary: dict[str, Any], run: RunFolder) -> str:
    body = []
    for p in summary["perturbations"]:
        cfg = (run.config.get("perturbation", {}) or {}).get(p["name"]) or {}
        attacks = cfg.get("attacks")
        members = attacks if isinstance(attacks, list) else []
        sub = "; ".join(f"{m.get('name', '?')}: {render_tags(m.get('tags'))}" for m in members if isinstance(m, dict))
        body.append([p["name"], p["family"] or "", p["norm"] or "", render_tags(p["tags"]), sub])
    return "<h2>Threat models (perturbation tags)</h2>" + _table(
        ["perturbation", "family", "norm", "tags", "members' tags"], body, 99)


def _unfinished(summary: dict[str, Any]) -> str:
    """The banner of a run that did not finish: N of M tasks, and the command that resumes it."""
    if not summary.get("unfinished"):
        return ""
    t = summary["tasks"]
    return (f"<p class='unfinished'><b>Unfinished run: {t['finished']} of {t['planned']} task(s) have results.</b> "
            f"Every number below covers only those tasks. {_e(summary['unfinished'])}</p>")


TRANSFER_MATRIX = "transfer.parquet"  # written by `gauntlet transfer` next to results/ (engine/transfer/cli.py)


def transfer_figures(gathered: Gathered) -> list[Figure]:
    """The heat map of each gathered run's transfer matrix (``gauntlet transfer``), when it has one."""
    import pyarrow.parquet as pq

    figs = []
    for src in gathered.sources:
        path = Path(src.run.out_dir) / TRANSFER_MATRIX
        if not path.is_file():
            continue
        try:
            matrix = pq.read_table(path)
        except (OSError, ValueError) as exc:
            log.warning("transfer matrix %s is unreadable (%s); left out of the report", path, exc)
            continue
        attack = (matrix.schema.metadata or {}).get(b"attack", b"?").decode()
        who = f"{src.label}: " if src.label and len(gathered.sources) > 1 else ""
        title = (f"{who}transfer: success rate % [95 % CI] of {attack} examples crafted on the source (rows),\n"
                 "scored on the target (columns); dashed: the white-box diagonal")
        png = plots.transfer_heatmaps(matrix, title)
        if png is not None:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in src.label or "")
            slug = f"transfer_{safe}" if who else "transfer"
            figs.append(Figure(title, slug, png))
    return figs


def _remote(gathered: Gathered) -> str:
    """Each run's remote-targets block (queries sent, cached, throttled, excluded; the upper-bound caveat)."""
    blocks = [render_remote_summary(RunLedger(src.run.out_dir)) for src in gathered.sources
              if (Path(src.run.out_dir) / LEDGER).exists()]
    blocks = [b for b in blocks if b]
    return f"<h2>Remote targets</h2>{''.join(f'<pre>{_e(b)}</pre>' for b in blocks)}" if blocks else ""


def _notes(notes: Sequence[str]) -> str:
    return "".join(f"<p class='flag'>note: {_e(n)}</p>" for n in notes)


def _budget(summary: dict[str, Any]) -> str:
    """The budget curves, or, for black-box attacks without them (Square inside a suite), the upper-bound note."""
    return budget_html(summary.get("budget_curves") or [], black_box_names(summary.get("perturbations") or []))


def _gallery(gathered: Gathered) -> str:
    """The saved examples of each run (engine/sinks/gallery.py); '' when none saved any."""
    return gallery_html([(s.label, s.run.out_dir, [t["task_id"] for t in s.run.tasks] or None)
                         for s in gathered.sources])


def render_html(summary: dict[str, Any], figures: Sequence[Figure], gathered: Gathered) -> str:
    """The page; every image is a data: URI, nothing is fetched. The headline comes first."""
    run = gathered.run
    imgs = "".join(f"<figure><img alt='{_e(f.title)}' id='fig-{_e(f.slug)}' src='data:image/png;base64,"
                   f"{base64.b64encode(f.png).decode()}'><figcaption>{_e(f.title)}</figcaption></figure>"
                   for f in figures)
    several = len(gathered.sources) > 1
    what = f"{len(gathered.sources)} runs" if several else f"run <code>{_e(run.run_id)}</code>"
    command = run.command or "(not recorded: no hydra/*/.hydra/overrides.yaml)"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Gauntlet report {_e(run.run_id)}"
            f"</title><style>{CSS}</style></head><body><h1>Gauntlet report</h1>{headline_html(summary['headline'])}"
            f"<p>{what} · {_e(', '.join(summary['datasets']))} · {summary['n_rows']} rows"
            f" · <code>{_e(run.out_dir)}</code></p>{_unfinished(summary)}{_notes(summary['notes'])}"
            f"{_verdicts(run.verdicts)}{board_html(summary['leaderboard'] if len(summary['models']) > 1 else None)}"
            f"{runs_html(summary['runs'])}<h2>Command{'s' if several else ''}</h2><pre>{_e(command)}</pre>"
            f"{_models(summary)}{_accuracy(summary)}{_extras(summary)}{_budget(summary)}<h2>Figures</h2>{imgs}"
            f"{_gallery(gathered)}"
            f"{_comparisons(summary)}{_flags(run.flags)}{_remote(gathered)}{_tags(summary, run)}"
            f"<h2>Resolved config</h2>{configs_html(gathered.sources)}</body></html>")


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    summary: Path
    figures: dict[str, Path]
    unfinished: str | None = None  # the runs' status lines when one did not finish
    notes: tuple[str, ...] = ()  # what the reader should know about the runs put side by side


def default_out(specs: Sequence[RunSpec]) -> Path:
    """One run: ``OUT_DIR/report``. Several: ``leaderboard/`` in the folder that holds them all."""
    if len(specs) == 1:
        return specs[0].path.expanduser() / "report"
    parents = [str(s.path.expanduser().resolve().parent) for s in specs]
    return Path(os.path.commonpath(parents)) / "leaderboard"


def write_report(runs: str | Path | Sequence[str | Path | RunSpec], eps: float | None = None,
                 severity: int | None = None,
                 out: str | Path | None = None, sort: str | None = None) -> ReportFiles:
    """Write ``index.html``, ``summary.json`` and the figures as PNG files into ``out`` (``default_out``)."""
    given = [runs] if isinstance(runs, str | Path) else list(runs)
    specs = [s if isinstance(s, RunSpec) else RunSpec(Path(s)) for s in given]
    folder = Path(out).expanduser() if out is not None else default_out(specs)
    gathered = gather(specs, folder.parent if out is None and len(specs) == 1 else folder)
    run = gathered.run
    summary = build_summary(run, eps, severity, sort, [s.as_dict() for s in gathered.sources], gathered.status)
    summary["notes"] = gathered.notes
    level = summary["heatmap_level"]
    figures = make_figures(run, accuracy_table(run.rows), level["eps"], level["severity"])
    figures += transfer_figures(gathered)
    try:
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        paths = {}
        for f in figures:
            paths[f.slug] = folder / "figures" / f"{f.slug}.png"
            paths[f.slug].write_bytes(f.png)
        summary["figures"] = {f.slug: f"figures/{f.slug}.png" for f in figures}
        _atomic(folder / "summary.json", json.dumps(json_safe(summary), indent=2, default=str, allow_nan=False)
                + "\n")
        _atomic(folder / "index.html", render_html(summary, figures, gathered))
    except OSError as exc:
        raise GauntletError(f"cannot write the report into {folder}: {exc.strerror or exc}; choose another folder "
                            "with --out DIR") from None
    return ReportFiles(folder / "index.html", folder / "summary.json", paths, gathered.status,
                       tuple(gathered.notes))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: Sequence[str]) -> int:
    """``gauntlet report [LABEL=]OUT_DIR [[LABEL=]OUT_DIR …] [--label L …] [--sort COL] [--out DIR] [--eps E]
    [--severity S]``; prints the page's path."""
    parser = argparse.ArgumentParser(prog="gauntlet report", description=(
        "Write one self-contained HTML page (index.html) and summary.json: for one run into OUT_DIR/report, for "
        "several (a leaderboard of their models, same dataset and samples) into leaderboard/ next to them. "
        "An unfinished run is reported as such: N of M tasks, and the command that resumes it."))
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]OUT_DIR", help="run folders, in the order to show them")
    parser.add_argument("--label", action="append", help="a label per run, in order (instead of LABEL=OUT_DIR)")
    parser.add_argument("--sort", help="the leaderboard column that ranks the models: clean, linf@0.1 (robust "
                                       "accuracy), auc:linf, corruption, mce (default: a robust-accuracy column)")
    parser.add_argument("--out", help="folder for index.html, summary.json and figures/")
    parser.add_argument("--eps", type=float, help="ε of the heat map (default: a checked claim's, else the ε most "
                                                  "attacks share)")
    parser.add_argument("--severity", type=int, choices=range(1, 6), help="severity of the heat map (default: 3, "
                                                                           "else a severity that was run)")
    args = parser.parse_args(list(argv))
    try:
        specs = parse_run_args(args.runs, args.label)
        files = write_report(specs, args.eps, args.severity, args.out, args.sort)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in ([files.unfinished] if files.unfinished else []) + list(files.notes):
        print(f"warning: {line}", file=sys.stderr)
    print(f"Report: {files.html.resolve()}")
    print(f"Summary (JSON): {files.summary.resolve()}")
    return 0
