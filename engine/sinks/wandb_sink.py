"""Weights & Biases sink: log a finished sweep from the driver. The only module that imports ``wandb``.

``wandb.mode``: ``offline`` (default; every W&B file — run, cache, data, config dirs —
inside ``<out_dir>/wandb``; nothing is sent, ``wandb sync`` uploads later), ``online``
or ``disabled`` (``wandb`` is never imported; ``WANDB_MODE=disabled`` in the
environment has the same effect). Logged after aggregation: the resolved config, per
perturbation accuracy vs level (history and one line chart, a series per model), the
summary and paired comparisons as tables, the report's figures, and the Parquet folder
as an artifact. The W&B run id derives from the sweep's run id, so re-running a
finished sweep does not log a second run unless ``wandb.new_run=true``.
"""

from __future__ import annotations

import json
import logging
import os
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


def log_sweep(cfg: Mapping[str, Any], out_dir: str | Path, run_id: str) -> str | None:
    """Log the finished sweep in ``out_dir``; returns the W&B run id, or None when disabled or already logged."""
    s = settings_of(cfg)
    if s["mode"] == "disabled":
        return None
    out = Path(out_dir).expanduser().resolve()
    root = Path(s["dir"]).expanduser().resolve() if s.get("dir") else out / "wandb"
    done = _marker(root)
    if run_id in done and not s.get("new_run"):
        log.info("W&B: sweep %s was already logged as run %s (%s); wandb.new_run=true logs it again",
                 run_id, done[run_id]["ids"][-1], done[run_id]["mode"])
        return None
    from engine.sinks.report import write_report

    files = write_report(out)
    summary = json.loads(files.summary.read_text())
    ids = list(done.get(run_id, {}).get("ids", []))
    wid = f"gauntlet-{run_id}" + (f"-{len(ids) + 1}" if ids else "")
    with _environment(root, s["mode"]):
        try:
            _log(s, cfg, root, wid, summary, files.figures, out / "results")
        except Exception as exc:  # W&B's own errors (login, network, quota) are many and unrelated to ours
            raise GauntletError(
                f"W&B logging ({s['mode']}) failed: {type(exc).__name__}: {exc}. The results and report are saved "
                f"in {out}; fix W&B (wandb login, WANDB_API_KEY, network) and re-run the same command (finished "
                "tasks are reused), or pass wandb=offline / wandb=disabled") from exc
    done[run_id] = {"ids": [*ids, wid], "mode": s["mode"], "dir": str(root)}
    (root / MARKER).write_text(json.dumps(done, indent=2) + "\n")
    return wid


def _init(wandb: Any, s: Mapping[str, Any], cfg: Mapping[str, Any], root: Path, wid: str) -> Any:
    project = s.get("project") or os.environ.get("WANDB_PROJECT") or "gauntlet"
    settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True)
    return wandb.init(project=project, entity=s.get("entity") or None, group=s.get("group") or None,
                      tags=list(s.get("tags") or []) or None, id=wid, name=wid, resume="allow",
                      job_type="sweep", mode=s["mode"], dir=str(root), config=dict(cfg), settings=settings)


def _curves(wandb: Any, run: Any, summary: Mapping[str, Any]) -> None:
    """Per perturbation: history ``acc/<p>/<model>`` against ``level/<p>``, and one line chart."""
    by: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for a in summary["accuracy"]:
        by.setdefault(a["perturbation"], {}).setdefault(a["model"], []).append((a["level"], a["accuracy"]))
    for pert, models in by.items():
        if len({lv for pts in models.values() for lv, _ in pts}) < 2:
            continue  # a single level (clean) is a number, in the summary and the table, not a curve
        run.define_metric(f"level/{pert}")
        run.define_metric(f"acc/{pert}/*", step_metric=f"level/{pert}")
        levels = sorted({lv for pts in models.values() for lv, _ in pts})
        for lv in levels:
            row = {f"acc/{pert}/{m}": acc for m, pts in models.items() for x, acc in pts if x == lv}
            run.log({f"level/{pert}": lv, **row})
        names = sorted(models)
        pts = [sorted(models[m]) for m in names]
        chart = wandb.plot.line_series(xs=[[x for x, _ in p] for p in pts], ys=[[y for _, y in p] for p in pts],
                                       keys=names, title=f"{pert}: accuracy vs level", xname="level")
        run.log({f"charts/{pert}": chart})


def _tables(wandb: Any, run: Any, summary: Mapping[str, Any]) -> None:
    acc_cols = ["model", "perturbation", "family", "norm", "level", "n", "n_correct", "accuracy", "ci_low",
                "ci_high"]
    acc = [[a["model"], a["perturbation"], a["family"], a["norm"], a["level"], a["n"], a["n_correct"],
            a["accuracy"], a["wilson"][0], a["wilson"][1]] for a in summary["accuracy"]]
    cmp_cols = ["model_a", "model_b", "perturbation", "level", "n", "accuracy_a", "accuracy_b", "difference",
                "ci_low", "ci_high", "ci_level", "only_a", "only_b", "p_value", "p_adjusted", "sentence"]
    cmp = [[c["model_a"], c["model_b"], c["perturbation"], c["level"], c["n"], c["accuracy_a"], c["accuracy_b"],
            c["difference"], c["ci_low"], c["ci_high"], c["ci_level"], c["counts"]["only_a"], c["counts"]["only_b"],
            c["p_value"], c["p_adjusted"], c["sentence"]] for c in summary["comparisons"]]
    run.log({"tables/accuracy": wandb.Table(columns=acc_cols, data=acc),
             "tables/comparisons": wandb.Table(columns=cmp_cols, data=cmp)})


def _log(s: Mapping[str, Any], cfg: Mapping[str, Any], root: Path, wid: str, summary: Mapping[str, Any],
         figures: Mapping[str, Path], results: Path) -> None:
    import wandb

    run = _init(wandb, s, cfg, root, wid)
    try:
        _curves(wandb, run, summary)
        _tables(wandb, run, summary)
        if figures:
            run.log({f"figures/{slug}": wandb.Image(str(path)) for slug, path in figures.items()})
        run.summary.update({"run_id": summary["run_id"], "n_rows": summary["n_rows"],
                            "n_flags": len(summary["flags"]),
                            **{f"clean/{m['name']}": m["clean"]["accuracy"] for m in summary["models"] if m["clean"]},
                            **{f"auc/{a['perturbation']}/{a['model']}": a["normalised"]
                               for a in summary["area_under_curve"]}})
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
        wandb.teardown()
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
