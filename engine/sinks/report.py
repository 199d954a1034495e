"""``gauntlet report OUT_DIR``: one self-contained HTML page (images inlined as base64) plus summary.json.

The page opens from a file with no network: an unfinished run's banner and the verdicts
of checked claims first (when ``verdict.json`` exists), then the run's command and config, the models, the
summary tables with intervals and n, the figures, the paired comparisons, the
sanity flags and each perturbation's threat-model tags.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import GauntletError
from engine.sinks import plots
from engine.sinks.summary_doc import build_summary, ordered_models, ordered_perturbations
from engine.stats.aggregate import AccuracyRow, accuracy_table
from engine.stats.compare import ci_percent, explain, json_safe
from engine.store.rundir import RunFolder, load_run

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
.unfinished{background:#f8d7da;padding:.6em;border:1px solid #c66}"""


@dataclass(frozen=True)
class Figure:
    title: str
    slug: str
    png: bytes


def make_figures(run: RunFolder, rows: Sequence[AccuracyRow], eps: float | None, severity: int) -> list[Figure]:
    """Every figure of the report, in page order."""
    models, perts = ordered_models(run), ordered_perturbations(run)
    figs = []
    for p in perts:
        fam = next((r.family for r in rows if r.perturbation == p), None)
        if fam == "attack" and len({r.level for r in rows if r.perturbation == p}) > 1:
            figs.append(Figure(f"{p}: accuracy vs ε", f"eps_{p}", plots.accuracy_vs_eps(rows, p, models)))
    grid = plots.corruption_grid(rows, models)
    if grid is not None:
        figs.append(Figure("corruptions: accuracy vs severity", "corruptions", grid))
    cells, cols = {}, []
    for p in perts:
        fam = next((r.family for r in rows if r.perturbation == p), None)
        want = {"clean": None, "attack": eps, "corruption": float(severity)}.get(fam or "")
        hits = [r for r in rows if r.perturbation == p and (fam == "clean" or r.level == want)]
        if hits:
            cols.append(p)
            cells.update({(r.model, p): r for r in hits})
    if cols:
        at_eps = "" if eps is None else f"ε = {eps:g} (attacks without it left out), "
        title = f"accuracy % at {at_eps}severity {severity}"
        figs.append(Figure(title, "heatmap", plots.heatmap(cells, models, cols, title)))
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


def _verdicts(doc: dict[str, Any] | None) -> str:
    """The checked claims of ``verdict.json`` (schema of ``gauntlet verify``), tolerant of missing keys."""
    if not doc:
        return ""
    claims = doc.get("claims") if isinstance(doc, dict) else None
    if not isinstance(claims, list) or not claims:
        return "<h2>Claim verdicts</h2><p>verdict.json lists no claims.</p>"
    body, classes = [], []
    for c in claims:
        c = c if isinstance(c, dict) else {"statement": c}
        verdict = str(c.get("verdict", "?")).upper()
        lo, hi = c.get("ci_low"), c.get("ci_high")
        measured = _pct(c.get("measured_accuracy")) + (f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None
                                                       and hi is not None else "")
        body.append([verdict, c.get("statement", ""), render_tags(c.get("threat_model")),
                     _pct(c.get("claimed_accuracy")), measured, c.get("n", ""),
                     render_tags(c.get("indicators")), render_tags(c.get("escalations"))])
        classes.append(verdict)
    head = ["verdict", "claim", "threat model", "claimed %", "measured % [95% CI]", "n", "indicators",
            "escalations"]
    return "<h2>Claim verdicts</h2>" + _table(head, body, num_from=99, row_class=classes)


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
    note = ("<p class='muted'>Same samples for both models (matched by dataset and sample_id); A − B = accuracy "
            f"of A minus accuracy of B, A the model listed first in the run. {_e(explain(family))}</p>")
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


def render_html(summary: dict[str, Any], figures: Sequence[Figure], run: RunFolder) -> str:
    """The page; every image is a data: URI, nothing is fetched."""
    imgs = "".join(f"<figure><img alt='{_e(f.title)}' id='fig-{_e(f.slug)}' src='data:image/png;base64,"
                   f"{base64.b64encode(f.png).decode()}'><figcaption>{_e(f.title)}</figcaption></figure>"
                   for f in figures)
    config = json.dumps(run.config, indent=2, sort_keys=True, default=str)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Gauntlet report {_e(run.run_id)}"
            f"</title><style>{CSS}</style></head><body><h1>Gauntlet report</h1>"
            f"<p>run <code>{_e(run.run_id)}</code> · {_e(', '.join(summary['datasets']))} · {summary['n_rows']} rows"
            f" · <code>{_e(run.out_dir)}</code></p>{_unfinished(summary)}{_verdicts(run.verdicts)}"
            f"<h2>Command</h2><pre>{_e(run.command or '(not recorded: no hydra/*/.hydra/overrides.yaml)')}</pre>"
            f"{_models(summary)}{_accuracy(summary)}{_extras(summary)}<h2>Figures</h2>{imgs}"
            f"{_comparisons(summary)}{_flags(run.flags)}{_tags(summary, run)}"
            f"<h2>Resolved config</h2><details><summary>sweep.json config</summary><pre>{_e(config)}</pre>"
            "</details></body></html>")


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    summary: Path
    figures: dict[str, Path]
    unfinished: str | None = None  # the run's status line when it did not finish


def write_report(out_dir: str | Path, eps: float | None = None, severity: int = 3) -> ReportFiles:
    """Write ``report/index.html``, ``report/summary.json`` and the figures as PNG files next to them."""
    run = load_run(out_dir)
    if run.rows.num_rows == 0:
        raise GauntletError(f"{run.out_dir} has no result rows yet; " + (run.status() or "run the sweep first"))
    summary = build_summary(run, eps, severity)
    rows = accuracy_table(run.rows)
    figures = make_figures(run, rows, summary["heatmap_level"]["eps"], severity)
    folder = run.out_dir / "report"
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    paths = {}
    for f in figures:
        paths[f.slug] = folder / "figures" / f"{f.slug}.png"
        paths[f.slug].write_bytes(f.png)
    summary["figures"] = {f.slug: f"figures/{f.slug}.png" for f in figures}
    _atomic(folder / "summary.json", json.dumps(json_safe(summary), indent=2, default=str, allow_nan=False) + "\n")
    _atomic(folder / "index.html", render_html(summary, figures, run))
    return ReportFiles(folder / "index.html", folder / "summary.json", paths, run.status())


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: Sequence[str]) -> int:
    """``gauntlet report OUT_DIR [--eps E] [--severity S]``; prints the page's path."""
    parser = argparse.ArgumentParser(prog="gauntlet report", description=(
        "Write OUT_DIR/report/index.html (self-contained) and OUT_DIR/report/summary.json from a run (an "
        "unfinished run is reported as such: N of M tasks, and the command that resumes it)."))
    parser.add_argument("out_dir")
    parser.add_argument("--eps", type=float, help="ε of the heat map (default: the ε most attacks share)")
    parser.add_argument("--severity", type=int, default=3, choices=range(1, 6), help="severity of the heat map")
    args = parser.parse_args(list(argv))
    try:
        files = write_report(args.out_dir, args.eps, args.severity)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if files.unfinished:
        print(f"warning: {files.unfinished}", file=sys.stderr)
    print(f"Report: {files.html.resolve()}")
    print(f"Summary (JSON): {files.summary.resolve()}")
    return 0
