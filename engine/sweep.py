"""Drive one sweep: plan, run the missing tasks, persist each result, aggregate the whole sweep."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from engine.aggregate import AccuracyRow, accuracy_table
from engine.errors import ConfigError
from engine.perturbations.base import Perturbation
from engine.perturbations.suite import AttackSuite
from engine.plan import Plan, make_plan
from engine.resources import Resources, resolve_device
from engine.runners.base import RunContext, Runner
from engine.sanity import Flag, probe_model, result_flags
from engine.sinks.attack_summary import render_attack_summary
from engine.sinks.corruption_summary import render_corruption_summary
from engine.sinks.parquet import ResultStore
from engine.sinks.summary import render_flags, render_table
from engine.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOutcome:
    plan: Plan
    results_dir: Path
    accuracy: list[AccuracyRow]
    summary: str
    evaluated: int
    flags: list[Flag] = field(default_factory=list)


def _build_runner(cfg: Mapping[str, Any]) -> Runner:
    try:
        runner = instantiate(dict(cfg))
    except Exception as exc:
        raise ConfigError(f"runner cannot be built: {exc}") from None
    if not hasattr(runner, "run"):
        raise ConfigError(f"runner._target_ must build a runner, got {type(runner).__name__}")
    return runner


def run_sweep(cfg: Mapping[str, Any]) -> SweepOutcome:
    """Run every task of ``cfg`` that has no result file yet, then summarise all of the sweep's rows."""
    progress = bool(cfg.get("progress", True))
    device = resolve_device(str(cfg["device"]))
    store = ResultStore(str(cfg["out_dir"]))
    resources = Resources(device)
    runner = _build_runner(cfg["runner"])
    plan = make_plan(cfg, store.has, check_model=resources.model, progress=progress)
    if plan.done:
        log.info("%d of %d task(s) already have results in %s; skipping them",
                 len(plan.done), len(plan.tasks), store.dir)
    evaluated = _execute(plan.todo, runner, device, resources, store, progress)
    table = store.read(t.task_id for t in plan.tasks)
    rows = accuracy_table(table)
    models = list(dict.fromkeys(t.model_name for t in plan.tasks))
    perts = list(dict.fromkeys(t.perturbation_name for t in plan.tasks))
    built = {name: resources.perturbation(name, pcfg) for name, pcfg in cfg["perturbation"].items()}
    flags = sanity_flags(cfg, models, table, resources, built)
    suites = [n for n, p in built.items() if isinstance(p, AttackSuite) and len(p.attacks) > 1]
    blocks = [render_corruption_summary(rows, models, cfg.get("corruption_baseline")),
              render_attack_summary(table, suites)]
    summary = render_table(rows, models, perts) + "".join(f"\n\n{b}" for b in blocks if b) + render_flags(flags)
    out_dir = Path(str(cfg["out_dir"])).expanduser()
    _write_sidecars(out_dir, cfg, plan, summary, {n: p.threat_model.as_dict() for n, p in built.items()})
    _write_flags(out_dir, plan, flags)
    return SweepOutcome(plan, store.dir, rows, summary, evaluated, flags)


PROBE_SAMPLES = 64  # clean samples each model's gradient / output / randomness probe looks at


def sanity_flags(cfg: Mapping[str, Any], models: list[str], table: Any, resources: Resources,
                 perts: Mapping[str, Perturbation]) -> list[Flag]:
    """Result checks over the sweep's rows plus, when it has attacks, a probe of each model (docs/sanity.md)."""
    flags = result_flags(table, perts)
    attacks_eot = {name: p.eot_iter for name, p in perts.items() if p.family == "attack"}
    if attacks_eot:
        data = resources.dataset(dict(cfg["dataset"]))
        probe = data.slice(0, min(len(data), int(cfg["n_examples"]), PROBE_SAMPLES))
        x, y = probe.images.to(resources.device), probe.labels.to(resources.device)
        for name in models:
            flags += probe_model(resources.model(name, cfg["model"][name]), x, y, name, attacks_eot)
    for f in flags:
        log.warning("sanity flag %s on %s%s: %s", f.check, f.model,
                    f" / {f.perturbation}" if f.perturbation else "", f.message)
    return sorted(flags, key=lambda f: (f.model, f.check, f.perturbation or ""))


def _write_flags(out_dir: Path, plan: Plan, flags: list[Flag]) -> None:
    """``flags.json`` next to ``results/`` (never inside it): the sanity flags of the whole sweep."""
    doc = {"run_id": plan.run_id, "flags": [f.as_dict() for f in flags]}
    tmp = out_dir / ".flags.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(out_dir / "flags.json")


def _execute(todo: tuple[Task, ...], runner: Runner, device: torch.device, resources: Resources,
             store: ResultStore, progress: bool) -> int:
    """Run ``todo`` on ``runner``, writing each result as it arrives; return how many were evaluated."""
    if not todo:
        return 0
    total = sum(t.n_samples for t in todo)
    with tqdm(total=len(todo), desc="tasks", unit="task", disable=not progress) as bar, \
            tqdm(total=total, desc="samples", unit="sample", leave=False, disable=not progress) as inner:
        ctx = RunContext(device, lambda t, n: inner.update(n), resources)
        done = 0
        for result in runner.run(todo, ctx):
            path = store.write(result)
            done += 1
            bar.set_postfix_str(result.task.describe())
            bar.update(1)
            log.debug("wrote %s (%.1f s)", path, result.seconds)
    return done


def _write_sidecars(out_dir: Path, cfg: Mapping[str, Any], plan: Plan, summary: str,
                    threat_models: Mapping[str, Any] | None = None) -> None:
    """``sweep.json`` (config, task ids, each perturbation's threat model) and ``summary.txt`` next to
    ``results/``, never inside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "run_id": plan.run_id,
        "config": cfg,
        "tasks": [
            {"task_id": t.task_id, "model": t.model_name, "perturbation": t.perturbation_name,
             "rows": [t.start, t.stop], "checkpoint_sha256": t.checkpoint_sha256}
            for t in plan.tasks
        ],
        "threat_models": dict(threat_models or {}),  # engine/threat_model.py, docs/threat-model.md
    }
    (out_dir / "sweep.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (out_dir / "summary.txt").write_text(summary + "\n")
