"""Weights & Biases sink: log a finished sweep from the driver. The only module that imports ``wandb``.

``wandb.mode``: ``offline`` (default; every W&B file — run, cache, data, config dirs —
inside ``<out_dir>/wandb``; nothing is sent, ``wandb sync`` uploads later), ``online``
or ``disabled`` (``wandb`` is never imported; ``WANDB_MODE=disabled`` in the
environment has the same effect).

One W&B run per (sweep, model), so that runs of different checkpoints overlay: the keys
never name the model (``acc/<perturbation>`` against ``level/<perturbation>``, with
``.../ci_low`` and ``.../ci_high`` beside), the model, checkpoint sha256, dataset and
sample count are in ``run.config``, and the run's name reads
``<model> · <dataset> · <n> samples · <run id>``. Each run also gets the sweep's headline
(summary, run notes and a table), per perturbation the worst case over its levels and the
area under the curve (not just the last level's value), its leaderboard cells, the
accuracy table with 95 % intervals (what an interval-band custom chart plots), the paired
comparisons, the report's figures, the verdicts of ``gauntlet verify``, and the results
folder as an artifact. Key list: docs/results.md ("Weights & Biases"). W&B run ids derive
from the sweep's run id, so re-running a finished sweep logs nothing new unless
``wandb.new_run=true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, GauntletError

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
ARTIFACT_MODES = ("reference", "upload", "none")
MARKER = "gauntlet-logged.json"


def settings_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's ``wandb`` block with defaults; a clear error for a bad value (called before any compute)."""
    w = dict(cfg.get("wandb") or {"mode": "offline"})
    mode = str(w.get("mode", "offline"))
    if os.environ.get("WANDB_MODE") == "disabled":
        mode = "disabled"
    if mode not in MODES:
        raise ConfigError(f"wandb.mode={mode!r} is not one of {', '.join(MODES)}; e.g. wandb=disabled")
    artifact = str(w.get("artifact", "reference"))
    if artifact not in ARTIFACT_MODES:
        raise ConfigError(f"wandb.artifact={artifact!r} is not one of {', '.join(ARTIFACT_MODES)}")
    return {**w, "mode": mode, "artifact": artifact}


@contextmanager
def _environment(root: Path, mode: str) -> Iterator[None]:
    """Point W&B's dir, cache, data and config dirs into ``root`` (online keeps a user's own config dir)."""
    want = {"WANDB_DIR": root, "WANDB_CACHE_DIR": root / "cache", "WANDB_DATA_DIR": root / "data",
            "WANDB_CONFIG_DIR": root / "config", "WANDB_ARTIFACT_DIR": root / "artifacts"}
    if mode == "online" and os.environ.get("WANDB_CONFIG_DIR"):
        want.pop("WANDB_CONFIG_DIR")
    saved = {k: os.environ.get(k) for k in want}
    for k, v in want.items():
        v.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _marker(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / MARKER).read_text()))
    except (OSError, ValueError):
        return {}


def _slug(name: str, limit: int = 32) -> str:
    """``name`` as W&B run ids allow it; a short hash is added wherever characters were replaced or cut."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:limit]
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def _verdict_digest(out: Path) -> str:
    """8 hex digits of ``verdict.json``'s claims: a different verdict on the same sweep is a different W&B run."""
    try:
        claims = json.loads((out / "verdict.json").read_text()).get("claims")
    except (OSError, ValueError, AttributeError) as exc:
        raise GauntletError(f"W&B: no readable verdict.json in {out} to log ({exc})") from None
    return hashlib.sha256(json.dumps(claims, sort_keys=True, default=str).encode()).hexdigest()[:8]


def log_sweep(cfg: Mapping[str, Any], out_dir: str | Path, run_id: str, job: str = "sweep") -> list[str]:
    """Log the finished sweep in ``out_dir``, one W&B run per model; returns their W&B run ids ([] when
    disabled, already logged, or ``wandb.deferred``: ``gauntlet verify`` logs once its verdicts exist)."""
    s = settings_of(cfg)
    if s["mode"] == "disabled":
        return []
    if s.get("deferred") and job == "sweep":
        log.info("W&B: not logged now (wandb.deferred): gauntlet verify logs the sweep once its verdicts exist")
        return []
    out = Path(out_dir).expanduser().resolve()
    root = Path(s["dir"]).expanduser().resolve() if s.get("dir") else out / "wandb"
    key = run_id if job == "sweep" else f"{run_id}-v{_verdict_digest(out)}"
    done = _marker(root)
    if key in done and not s.get("new_run"):
        log.info("W&B: %s %s was already logged (%s: %s); wandb.new_run=true logs it again", job, key,
                 done[key]["mode"], ", ".join(done[key]["ids"][-8:]))
        return []
    from engine.sinks.report import write_report

    files = write_report(out)
    summary = json.loads(files.summary.read_text())
    logs = int(done.get(key, {}).get("logs", len(done.get(key, {}).get("ids", []))))  # older markers: ids only
    ids = [f"gauntlet-{key}-{_slug(m['name'])}" + (f"-{logs + 1}" if logs else "") for m in summary["models"]]
    with _environment(root, s["mode"]):
        try:
            _log_models(s, cfg, root, ids, job, summary, files.figures, out / "results")
        except Exception as exc:  # W&B's own errors (login, network, quota) are many and unrelated to ours
            raise GauntletError(
                f"W&B logging ({s['mode']}) failed: {type(exc).__name__}: {exc}. The results and report are saved "
                f"in {out}; fix W&B (wandb login, WANDB_API_KEY, network) and re-run the same command (finished "
                "tasks are reused), or pass wandb=offline / wandb=disabled") from exc
    done[key] = {"ids": [*done.get(key, {}).get("ids", []), *ids], "logs": logs + 1, "mode": s["mode"],
                 "dir": str(root)}
    (root / MARKER).write_text(json.dumps(done, indent=2) + "\n")
    return ids


def log_verify(out_dir: str | Path) -> list[str]:
    """Log a ``gauntlet verify`` run (its base sweep with the verdicts) once ``verdict.json`` is written."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return []
    from engine.store.rundir import load_run

    run = load_run(out_dir)
    cfg = dict(run.config)
    cfg["wandb"] = {k: v for k, v in dict(cfg.get("wandb") or {"mode": "offline"}).items() if k != "deferred"}
    return log_sweep(cfg, out_dir, run.run_id, job="verify")


def _dataset(summary: Mapping[str, Any]) -> str:
    return "+".join(summary["datasets"]) or "no rows"


def _n_samples(summary: Mapping[str, Any], model: str) -> int:
    return max((int(a["n"]) for a in summary["accuracy"] if a["model"] == model), default=0)


def run_name(summary: Mapping[str, Any], model: str, job: str = "sweep") -> str:
    """What the W&B UI shows: ``digits_cnn_at · digits · 200 samples · 3f2a9c`` (the sweep's run id, cut)."""
    return " · ".join([model, _dataset(summary), f"{_n_samples(summary, model)} samples", summary["run_id"][:6],
                       *(["verify"] if job == "verify" else [])])


def run_config(cfg: Mapping[str, Any], summary: Mapping[str, Any], model: str) -> dict[str, Any]:
    """``run.config``: the model, its checkpoint, the data and sample count on top (what runs are filtered and
    grouped by), the sweep's resolved config (less the other models) under ``sweep``."""
    entry = next(m for m in summary["models"] if m["name"] == model)
    return {"model": model, "checkpoint": entry["checkpoint"], "checkpoint_sha256": entry["checkpoint_sha256"],
            "dataset": _dataset(summary), "n_samples": _n_samples(summary, model),
            "sweep_run_id": summary["run_id"], "sweep_models": [m["name"] for m in summary["models"]],
            "perturbations": [p["name"] for p in summary["perturbations"]],
            "model_config": (cfg.get("model") or {}).get(model),
            "sweep": {k: v for k, v in cfg.items() if k != "model"}}


def _mine(summary: Mapping[str, Any], model: str) -> dict[str, list[dict[str, Any]]]:
    """The model's accuracy entries per perturbation, level ascending."""
    by: dict[str, list[dict[str, Any]]] = {}
    for a in summary["accuracy"]:
        if a["model"] == model:
            by.setdefault(a["perturbation"], []).append(a)
    return {p: sorted(v, key=lambda a: a["level"]) for p, v in by.items()}


def _point(prefix: str, a: Mapping[str, Any]) -> dict[str, float]:
    return {prefix: a["accuracy"], f"{prefix}/ci_low": a["wilson"][0], f"{prefix}/ci_high": a["wilson"][1]}


def curve_rows(summary: Mapping[str, Any], model: str) -> dict[str, list[dict[str, float]]]:
    """Per perturbation with ≥ 2 levels, the history rows: ``level/<p>`` (ε, or severity), ``acc/<p>`` and its
    95 % Wilson interval ``acc/<p>/ci_low``, ``acc/<p>/ci_high`` — the same keys for every model."""
    return {p: [{f"level/{p}": a["level"], **_point(f"acc/{p}", a)} for a in entries]
            for p, entries in _mine(summary, model).items() if len(entries) >= 2}


def _worst(p: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest accuracy over the levels (an attack's ε = 0 is its clean accuracy, left out) and where."""
    attacked = [a for a in entries if not (a["family"] == "attack" and a["level"] == 0)] or entries
    w = min(attacked, key=lambda a: (a["accuracy"], a["level"]))
    return {**_point(f"worst/{p}", w), f"worst/{p}/level": w["level"], f"worst/{p}/n": w["n"]}


def summary_values(summary: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The run summary: per perturbation its worst case and area under the curve (a single level: its value),
    the clean accuracy, the leaderboard cells and rank, corruption means, the headline."""
    out: dict[str, Any] = {"run_id": summary["run_id"], "n_rows": summary["n_rows"],
                           "n_flags": len(summary["flags"]), "headline": " ".join(summary["headline"])}
    for p, entries in _mine(summary, model).items():
        out.update(_point(f"acc/{p}", entries[0]) if len(entries) == 1 else _worst(p, entries))
    clean = next((m["clean"] for m in summary["models"] if m["name"] == model), None)
    if clean:
        out.update(_point("clean/acc", clean))
    out.update({f"auc/{a['perturbation']}": a["normalised"] for a in summary["area_under_curve"]
                if a["model"] == model and a["normalised"] is not None})
    board = summary.get("leaderboard") or {}
    for row in (r for r in board.get("rows", []) if r["model"] == model):
        out["board/rank"] = row["rank"]
        for col, cell in row["cells"].items():
            if cell["value"] is not None:
                out.update({f"board/{col}": cell["value"], f"board/{col}/ci_low": cell["ci_low"],
                            f"board/{col}/ci_high": cell["ci_high"]})
    for c in (c for c in summary.get("corruption") or [] if c["model"] == model):
        out.update({f"corruption/{k}": c[k] for k in ("mean_corruption_accuracy", "mce", "relative_mce")
                    if c[k] is not None})
    out.update(verdict_values(summary, model))
    return out


VERDICT_COLUMNS = ["claim", "verdict", "measured", "ci_low", "ci_high", "n", "claimed", "difference_pp", "rule",
                   "reason", "statement"]


def _verdicts_of(summary: Mapping[str, Any], model: str) -> list[dict[str, Any]]:
    doc = summary.get("verdicts") or {}
    owner = (doc.get("model") or {}).get("name")
    return list(doc.get("claims") or []) if owner in (None, model) else []


def verdict_values(summary: Mapping[str, Any], model: str) -> dict[str, Any]:
    """``verdict`` (the worst over the claims: REFUTED, else INCONCLUSIVE, else CONSISTENT) and per claim
    ``verdict/<i>`` with its measured accuracy; empty without ``gauntlet verify``."""
    claims = _verdicts_of(summary, model)
    if not claims:
        return {}
    order = ("REFUTED", "INCONCLUSIVE", "CONSISTENT")
    worst = min((c["verdict"] for c in claims), key=lambda v: order.index(v) if v in order else len(order))
    out: dict[str, Any] = {"verdict": worst, "verdict/text": " ".join(verdict_sentences(summary, model))}
    for i, c in enumerate(claims, 1):
        out.update({f"verdict/{i}": c["verdict"], f"verdict/{i}/claim": c.get("claim", ""),
                    f"verdict/{i}/measured": c["measured_accuracy"], f"verdict/{i}/claimed": c["claimed_accuracy"]})
    return out


def verdict_sentences(summary: Mapping[str, Any], model: str) -> list[str]:
    """Per claim: ``REFUTED: L∞ ε=0.3 claimed 90.0 %, measured 0.0 % [0.0, 32.4] (n=8), rule interval_below_claim``."""
    return [f"{c['verdict']}: {c.get('claim') or 'claim'} claimed {100 * c['claimed_accuracy']:.1f} %, measured "
            f"{100 * c['measured_accuracy']:.1f} % [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}] (n={c['n']})"
            + (f", rule {c['rule']}" if c.get("rule") else "") for c in _verdicts_of(summary, model)]


def verdict_rows(summary: Mapping[str, Any], model: str) -> list[list[Any]]:
    return [[c.get("claim", ""), c["verdict"], c["measured_accuracy"], c["ci_low"], c["ci_high"], c["n"],
             c["claimed_accuracy"], c.get("difference_pp"), c.get("rule", ""), c.get("reason", ""),
             c.get("statement", "")] for c in _verdicts_of(summary, model)]


def _init(wandb: Any, s: Mapping[str, Any], root: Path, wid: str, name: str, config: Mapping[str, Any],
          job: str = "sweep", notes: str | None = None) -> Any:
    project = s.get("project") or os.environ.get("WANDB_PROJECT") or "gauntlet"
    settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True)
    tags = [*map(str, s.get("tags") or []), *(["verify"] if job == "verify" else [])]
    return wandb.init(project=project, entity=s.get("entity") or None, group=s.get("group") or None,
                      tags=tags or None, id=wid, name=name, notes=notes, resume="allow", job_type=job,
                      mode=s["mode"], dir=str(root), config=dict(config), settings=settings)


def _curves(wandb: Any, run: Any, summary: Mapping[str, Any], model: str) -> None:
    """Per perturbation: the history against its own x axis (``level/<p>``), and an in-run chart of the curve
    with its band edges. Summaries of these keys are off: ``summary_values`` says the worst case instead."""
    for p, rows in curve_rows(summary, model).items():
        run.define_metric(f"level/{p}", summary="none")
        run.define_metric(f"acc/{p}", step_metric=f"level/{p}", summary="none")
        run.define_metric(f"acc/{p}/*", step_metric=f"level/{p}", summary="none")
        for row in rows:
            run.log(row)
        xs = [r[f"level/{p}"] for r in rows]
        ys = [[r[f"acc/{p}{k}"] for r in rows] for k in ("", "/ci_low", "/ci_high")]
        run.log({f"charts/{p}": wandb.plot.line_series(
            xs=[xs] * 3, ys=ys, keys=["accuracy", "95% CI low", "95% CI high"], title=f"{p}: {model}",
            xname="level")})


def _tables(wandb: Any, run: Any, summary: Mapping[str, Any], model: str) -> None:
    acc_cols = ["model", "perturbation", "family", "norm", "level", "n", "n_correct", "accuracy", "ci_low",
                "ci_high"]
    acc = [[a["model"], a["perturbation"], a["family"], a["norm"], a["level"], a["n"], a["n_correct"],
            a["accuracy"], a["wilson"][0], a["wilson"][1]] for a in summary["accuracy"] if a["model"] == model]
    cmp_cols = ["model_a", "model_b", "perturbation", "level", "n", "accuracy_a", "accuracy_b", "difference",
                "ci_low", "ci_high", "ci_level", "only_a", "only_b", "p_value", "p_adjusted", "sentence"]
    cmp = [[c["model_a"], c["model_b"], c["perturbation"], c["level"], c["n"], c["accuracy_a"], c["accuracy_b"],
            c["difference"], c["ci_low"], c["ci_high"], c["ci_level"], c["counts"]["only_a"], c["counts"]["only_b"],
            c["p_value"], c["p_adjusted"], c["sentence"]] for c in summary["comparisons"]]
    board = summary.get("leaderboard") or {}
    lb = [[r["model"], r["rank"], col, cell["value"], cell["ci_low"], cell["ci_high"], cell["n"]]
          for r in board.get("rows", []) for col, cell in r["cells"].items()]
    tables = {"tables/accuracy": wandb.Table(columns=acc_cols, data=acc),
              "tables/comparisons": wandb.Table(columns=cmp_cols, data=cmp),
              "tables/leaderboard": wandb.Table(columns=["model", "rank", "column", "value", "ci_low", "ci_high",
                                                         "n"], data=lb),
              "tables/headline": wandb.Table(columns=["sentence"], data=[[h] for h in summary["headline"]])}
    if verdicts := verdict_rows(summary, model):
        tables["tables/verdicts"] = wandb.Table(columns=VERDICT_COLUMNS, data=verdicts)
    run.log(tables)


def _log_models(s: Mapping[str, Any], cfg: Mapping[str, Any], root: Path, ids: list[str], job: str,
                summary: Mapping[str, Any], figures: Mapping[str, Path], results: Path) -> None:
    """Every model's run, then W&B's service process ended (also after an error: no process is left behind)."""
    try:
        for model, wid in zip(summary["models"], ids, strict=True):
            _log(s, cfg, root, wid, job, model["name"], summary, figures, results)
    finally:
        import wandb

        wandb.teardown()


def _log(s: Mapping[str, Any], cfg: Mapping[str, Any], root: Path, wid: str, job: str, model: str,
         summary: Mapping[str, Any], figures: Mapping[str, Path], results: Path) -> None:
    """One model's W&B run: curves, tables, figures, summary, the results artifact."""
    import wandb

    run = _init(wandb, s, root, wid, run_name(summary, model, job), run_config(cfg, summary, model), job,
                notes=" ".join([*verdict_sentences(summary, model), *summary["headline"]]) or None)
    try:
        _curves(wandb, run, summary, model)
        _tables(wandb, run, summary, model)
        if figures:
            run.log({f"figures/{slug}": wandb.Image(str(path)) for slug, path in figures.items()})
        run.summary.update(summary_values(summary, model))
        if s["artifact"] != "none":
            art = wandb.Artifact(f"results-{summary['run_id']}", type="gauntlet-results",
                                 metadata={"run_id": summary["run_id"], "rows": summary["n_rows"]})
            if s["artifact"] == "upload":
                art.add_dir(str(results))
            else:
                art.add_reference(results.resolve().as_uri())
            run.log_artifact(art)
    finally:
        run.finish()
    log.info("W&B: logged run %s (%s) under %s", wid, s["mode"], root)


def read_records(path: str | Path) -> Iterator[Any]:
    """The records of an offline ``run-<id>.wandb`` file (LevelDB-log framing, wandb_internal_pb2.Record).

    W&B 0.31 ships no reader; this one is for tests and for inspecting an offline run.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    block, pos, buf = 32768, 7, b""  # 7-byte file header: ':W&B', 0xBEE1, version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            rec.ParseFromString(buf)
            yield rec
            buf = b""
