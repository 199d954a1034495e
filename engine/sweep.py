"""Drive one sweep: plan, run the missing tasks, persist each result, aggregate the whole sweep."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from engine.compose.levels import Labels
from engine.data.fingerprint import describe_change
from engine.errors import ConfigError, GauntletError
from engine.evaluation.examples import DEFAULT_CAP
from engine.evaluation.resources import Resources, _unwrap, resolve_device
from engine.evaluation.tasks import Task, TaskResult
from engine.perturbations.base import Perturbation
from engine.perturbations.suite import AttackSuite
from engine.planning.plan import Plan, make_plan, prepare
from engine.remote.ledger import install_run_limiters, record_task
from engine.remote.model import is_remote
from engine.runners.base import RunContext, Runner
from engine.runners.progress import SweepProgress, work_per_sample
from engine.runners.signals import Interrupted, interruptible
from engine.sanity.confirm import SweepConfirmer
from engine.sanity.flags import SETUP, Flag, clean_accuracy_flags, probe_model, result_flags
from engine.sinks.attack_summary import render_attack_summary
from engine.sinks.budget_summary import render_budget_summary
from engine.sinks.corruption_summary import render_corruption_summary
from engine.sinks.remote_summary import render_remote_summary
from engine.sinks.summary import render_flags, render_table
from engine.sinks.wandb_sink import log_sweep, settings_of
from engine.stats.aggregate import AccuracyRow, accuracy_table
from engine.store import examples
from engine.store.outdir import OutDirLock, check_out_dir
from engine.store.parquet import ResultStore
from engine.store.rundir import launch_command, record_plan, recorded_identities

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
        err = _unwrap(exc)
        if isinstance(err, GauntletError):
            raise err from None
        raise ConfigError(f"runner cannot be built: {exc}") from None
    if not hasattr(runner, "run"):
        raise ConfigError(f"runner._target_ must build a runner, got {type(runner).__name__}")
    return runner


def run_sweep(cfg: Mapping[str, Any]) -> SweepOutcome:
    """Run every task of ``cfg`` that has no verified result yet, then summarise all of the sweep's rows.

    Everything that can fail on bad input fails before any result is written; the
    output folder is held (``.gauntlet.lock``) so two runs never compute the same tasks.
    """
    progress = bool(cfg.get("progress", True))
    cfg, labels = prepare(cfg)
    settings_of(cfg)  # a bad wandb.* value fails before any compute
    out_dir = check_out_dir(cfg["out_dir"])
    device = resolve_device(str(cfg["device"]))
    runner = _build_runner(cfg["runner"])
    with OutDirLock(out_dir):
        store = ResultStore(out_dir)
        store.clean_temporaries()
        store.report_foreign()
        resources = Resources(device)
        ledger = install_run_limiters(cfg["model"], out_dir)  # remote targets: one budget/rate limiter each
        pending = examples.Pending()  # tasks whose rows exist but whose examples do not (save_examples)
        is_done = examples.done_fn(store, str(cfg.get("save_examples", "none")),
                                   int(cfg.get("save_examples_cap", DEFAULT_CAP)), pending)
        plan = make_plan(cfg, is_done, check_model=resources.model, progress=progress)
        for line in pending.lines():
            log.warning("%s", line)
        record_plan(out_dir, plan.run_id, cfg, _task_records(plan))  # a killed run can later say "N of M"
        if plan.done:
            log.info("%d of %d task(s) already have verified results in %s; reusing them",
                     len(plan.done), len(plan.tasks), store.dir)
        for line in recomputed_because_data_changed(plan, store):
            log.warning("%s", line)
        evaluated = _execute_keeping_finished(plan, runner, device, resources, store, progress,
                                              _remote_recorder(cfg, out_dir))
        _check_data_unchanged(plan, cfg, store, evaluated)
        table = store.read(t.task_id for t in plan.tasks)
        rows, summary, flags = _summarise(cfg, plan, table, resources, labels)
        remote_block = render_remote_summary(ledger)
        summary += f"\n\n{remote_block}" if remote_block else ""
        threat_models = {n: resources.perturbation(n, p).threat_model.as_dict()
                         for n, p in cfg["perturbation"].items()}
        _write_sidecars(out_dir, cfg, plan, summary, labels, threat_models)
        _write_flags(out_dir, plan, flags)
        log_sweep(cfg, out_dir, plan.run_id)  # W&B after aggregation (no-op for wandb=disabled)
    return SweepOutcome(plan, store.dir, rows, summary, evaluated, flags)


def _summarise(cfg: Mapping[str, Any], plan: Plan, table: Any, resources: Resources,
               labels: Labels) -> tuple[list[AccuracyRow], str, list[Flag]]:
    """Accuracy rows, the terminal summary (table, corruption and suite blocks, flags) and the flags."""
    rows = accuracy_table(table)
    models = list(dict.fromkeys(t.model_name for t in plan.tasks))
    perts = list(dict.fromkeys(t.perturbation_name for t in plan.tasks))
    built = {name: resources.perturbation(name, pcfg) for name, pcfg in cfg["perturbation"].items()}
    flags = sanity_flags(cfg, models, table, resources, built)
    suites = [n for n, p in built.items() if isinstance(p, AttackSuite) and len(p.attacks) > 1]
    blocks = [render_corruption_summary(rows, models, cfg.get("corruption_baseline")),
              render_attack_summary(table, suites), render_budget_summary(table, black_box_only(built))]
    summary = (render_table(rows, models, perts, labels) + "".join(f"\n\n{b}" for b in blocks if b)
               + render_flags(flags))
    return rows, summary, flags


def black_box_only(built: Mapping[str, Perturbation]) -> list[str]:
    """Perturbations whose every attack is black-box: their accuracies are upper bounds (said in the summary)."""
    return [n for n, p in built.items()
            if p.family == "attack" and "black-box" in p.threat_model.knowledge and "white-box" not in
            p.threat_model.knowledge]


def recomputed_because_data_changed(plan: Plan, store: ResultStore) -> list[str]:
    """One line per earlier dataset identity whose rows ``store`` holds for tasks this plan must compute:
    the same tasks, read from other data (or written before task ids named the data), so not reused."""
    if not plan.todo or not plan.keys:
        return []
    mine = {t.task_id for t in plan.tasks}
    others = [e.path for tid, e in store.index.items() if tid not in mine and not e.compacted]
    name, lines = plan.identity.get("name", ""), []
    for old in [*recorded_identities(store.out_dir, others), {"digest": None}]:
        if old["digest"] == plan.identity.get("digest"):
            continue
        n = sum(plan.task_id_for(t.task_id, old["digest"]) in store.index for t in plan.todo)
        if not n:
            continue
        if old["digest"] is None:
            lines.append(f"{n} task(s) recomputed: the rows in {store.out_dir} were written by a Gauntlet whose task "
                         f"ids did not name the dataset's content, so they cannot be shown to come from dataset "
                         f"{name!r} as it is now (they stay in results/)")
        else:
            lines.append(f"dataset {name!r} changed since the rows in {store.out_dir} were written "
                         f"({describe_change(old, plan.identity)}): {n} task(s) recomputed (the old rows stay in "
                         "results/, under the old data's task ids)")
    return lines


def _check_data_unchanged(plan: Plan, cfg: Mapping[str, Any], store: ResultStore, evaluated: int) -> None:
    """The files the tasks read must still be those planned: a change during the run would file rows of new
    data under the old data's task ids, so those rows are set aside and the run fails."""
    if not evaluated or plan.source is None:
        return
    after = plan.source.identity(cfg.get("cache_dir"))
    if after["digest"] == plan.identity["digest"]:
        return
    why = describe_change(plan.identity, after)
    moved = store.set_aside((t.task_id for t in plan.todo), f"dataset {after['name']!r} changed during the run ({why})")
    raise ConfigError(
        f"dataset {after['name']!r} changed while this sweep ran ({why}); the {moved} task file(s) computed in this "
        f"run were moved to {store.quarantine_dir}, since their rows may mix the old and the new data. Leave the "
        "data alone while a sweep reads it and re-run the same command: it computes the tasks on the data as it "
        "is then."
    )


def _remote_recorder(cfg: Mapping[str, Any], out_dir: Path) -> Callable[[TaskResult], None]:
    """Adds each finished task's remote spend to the run folder's ledger (nothing for local models)."""
    return lambda result: record_task(out_dir, cfg["model"], result.task.model_name, result.remote)


def _execute_keeping_finished(plan: Plan, runner: Runner, device: torch.device, resources: Resources,
                              store: ResultStore, progress: bool,
                              on_result: Callable[[TaskResult], None] | None = None) -> int:
    """``_execute``, and on an error or a signal say how many tasks finished: their rows stay, a re-run resumes."""
    with interruptible():
        try:
            return _execute(plan.todo, runner, device, resources, store, progress, on_result)
        except GauntletError as exc:
            kept = sum(store.verify(t.task_id) for t in plan.todo) + len(plan.done)
            saved = f"{kept} of {len(plan.tasks)} task(s) of this sweep have verified results in {store.dir} (kept)"
            command = launch_command()  # the exact command, when started by `gauntlet`
            if isinstance(exc, Interrupted):  # the last line: what is saved, how to resume
                how = f"resume with: {command}" if command else "re-run the same command to resume"
                raise Interrupted(exc.signum, f"{exc}: {saved}; {how}") from None
            again = f"re-running it ({command})" if command else "re-running the same command"
            raise type(exc)(f"{exc}\n{saved}; {again} resumes from them and recomputes only the rest.") from None


PROBE_SAMPLES = 64  # clean samples each model's gradient / output / randomness probe looks at


def sanity_flags(cfg: Mapping[str, Any], models: list[str], table: Any, resources: Resources,
                 perts: Mapping[str, Perturbation]) -> list[Flag]:
    """Result checks over the sweep's rows (confirmed by a strong white-box attack on the flagged samples
    before accusing a model), clean accuracy against chance and, when it has attacks, a probe of each model
    (docs/sanity.md)."""
    attacks_eot = {name: p.eot_iter for name, p in perts.items() if p.family == "attack"}
    data = resources.dataset(dict(cfg["dataset"]))
    n = min(len(data), int(cfg["n_examples"]))
    confirmer = SweepConfirmer(lambda name: resources.model(name, cfg["model"][name]), data,
                               data.labels[:n], data.sample_ids[:n], resources.device, seed=int(cfg["seed"]),
                               eot=max(attacks_eot.values(), default=1), batch_size=int(cfg["batch_size"]))
    flags = result_flags(table, perts, confirmer) + clean_accuracy_flags(table, data.num_classes)
    if attacks_eot:
        probe = data.slice(0, min(n, PROBE_SAMPLES))
        x, y = probe.images.to(resources.device), probe.labels.to(resources.device)
        for name in models:
            if is_remote(cfg["model"][name]):  # a black box by contract: no gradient to probe, queries cost money
                continue
            flags += probe_model(resources.model(name, cfg["model"][name]), x, y, name, attacks_eot)
    _log_flags(flags)
    # a broken set-up first: it makes every other number (and flag) of that model meaningless
    return sorted(flags, key=lambda f: (f.verdict != SETUP, f.model, f.check, f.perturbation or ""))


def _log_flags(flags: list[Flag]) -> None:
    """One log line for all the flags (an error when a set-up is broken): the summary lists them, one line per
    finding, and flags.json holds them in full; repeating each paragraph on stderr buried the numbers."""
    if flags:
        setup = sum(f.verdict == SETUP for f in flags)
        log.log(logging.ERROR if setup else logging.WARNING,
                "%d sanity flag(s)%s: %s; listed under the summary, in full in flags.json", len(flags),
                f", {setup} of them a BROKEN SET-UP" if setup else "", ", ".join(dict.fromkeys(f.check for f in flags)))


def _write_flags(out_dir: Path, plan: Plan, flags: list[Flag]) -> None:
    """``flags.json`` next to ``results/`` (never inside it): the sanity flags of the whole sweep."""
    doc = {"run_id": plan.run_id, "flags": [f.as_dict() for f in flags]}
    _write_both(out_dir, plan.run_id, "flags.json", json.dumps(doc, indent=2, default=str) + "\n")


def _execute(todo: tuple[Task, ...], runner: Runner, device: torch.device, resources: Resources,
             store: ResultStore, progress: bool, on_result: Callable[[TaskResult], None] | None = None) -> int:
    """Run ``todo`` on ``runner``, writing each result as it arrives; return how many were evaluated.

    Progress (engine/runners/progress.py): a live bar when ``progress`` and stderr is a terminal, else one log
    line per finished task; at the end one line per worker.
    """
    if not todo:
        return 0
    work = {t.task_id: work_per_sample(resources.perturbation(t.perturbation_name, t.perturbation)) for t in todo}
    tracker = SweepProgress(todo, work, live=progress and sys.stderr.isatty())
    ctx = RunContext(device, tracker.work, resources, events=tracker)
    done = 0
    results = runner.run(todo, ctx)
    try:
        for result in results:
            path = store.write(result)
            examples.write(store.out_dir, result, store.index[result.task.task_id].digest)  # after its rows
            if on_result is not None:
                on_result(result)
            done += 1
            tracker.finished(result)
            log.debug("wrote %s (%.1f s)", path, result.seconds)
    finally:
        getattr(results, "close", lambda: None)()  # on an error or a signal: the runner stops its workers now
        tracker.close()
    return done


def _task_records(plan: Plan) -> list[dict[str, Any]]:
    return [{"task_id": t.task_id, "model": t.model_name, "perturbation": t.perturbation_name,
             "rows": [t.start, t.stop], "checkpoint_sha256": t.checkpoint_sha256} for t in plan.tasks]


def _write_sidecars(out_dir: Path, cfg: Mapping[str, Any], plan: Plan, summary: str, labels: Labels,
                    threat_models: Mapping[str, Any] | None = None) -> None:
    """``sweep.json`` (config, task ids, each perturbation's threat model) and ``summary.txt`` next to
    ``results/``, never inside it.

    The top-level files describe the latest invocation; ``sweeps/<run_id>/`` keeps each
    sweep's own copy (Hydra multirun jobs and earlier invocations on one ``out_dir``).
    """
    meta = {
        "run_id": plan.run_id,
        "config": cfg,
        "level_labels": {p: {f"{k:g}": v for k, v in d.items()} for p, d in labels.items()},
        "tasks": _task_records(plan),
        "threat_models": dict(threat_models or {}),  # engine/compose/threat_model.py, docs/threat-model.md
        "dataset_identity": dict(plan.identity),  # engine/data/fingerprint.py; its digest is in every task id
    }
    _write_both(out_dir, plan.run_id, "sweep.json", json.dumps(meta, indent=2, default=str) + "\n")
    _write_both(out_dir, plan.run_id, "summary.txt", summary + "\n")


def _write_both(out_dir: Path, run_id: str, name: str, text: str) -> None:
    """Write ``out_dir/name`` (latest) and ``out_dir/sweeps/<run_id>/name``, each atomically."""
    for folder in (out_dir, out_dir / "sweeps" / run_id):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)
