"""``gauntlet transfer``: run the transfer sweep through the ordinary driver, then write and print its matrix.

The sweep goes through ``engine.sweep.run_sweep`` like any other (plan, checkpoints, resume, out_dir checks and
lock, ``runner=ray``, Parquet rows, sanity flags); this module only composes it and reads its rows back.
``transfer.parquet`` (one row per cell) and ``transfer.txt`` go next to ``results/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from engine.errors import GauntletError
from engine.store.parquet import ResultStore
from engine.sweep import SweepOutcome, run_sweep
from engine.transfer.build import TransferSpec, compose_transfer, parse_models
from engine.transfer.matrix import Cell, render_matrix, to_table, transfer_matrix

log = logging.getLogger("gauntlet")
MATRIX_FILE = "transfer.parquet"




def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gauntlet transfer", description=(
        "Craft adversarial examples on each model with one white-box attack and score them on every model: one "
        "sweep of models × (clean, the attack, a transfer from each model), then the transfer matrix (success "
        "rate per source, target and ε with 95 % intervals) printed, in OUT/transfer.parquet and in "
        "`gauntlet report OUT`. Re-running the same command resumes."))
    p.add_argument("--models", nargs="+", required=True, metavar="[LABEL=]MODEL",
                   help="model configs (configs/model or --config-dir), each once; LABEL names it in the matrix")
    p.add_argument("--label", action="append", help="a label per model, in order (instead of LABEL=MODEL)")
    p.add_argument("--attack", default="apgd_ce_linf", help="the white-box attack or suite config crafting the "
                                                            "examples (default: apgd_ce_linf)")
    p.add_argument("--eps", nargs="+", metavar="E", help="the attack's ε list (default: its config's), e.g. 0.1 8/255")
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder (out_dir)")
    p.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                   help="a folder of your own configs (model/<name>.yaml, …), searched before the built-in ones")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="Hydra overrides of the sweep: dataset=…, n_examples=…, seed=…, runner=ray, …")
    return p


def spec_of(argv: Sequence[str]) -> TransferSpec:
    args = parser().parse_args(list(argv))
    return TransferSpec(parse_models(args.models, args.label), args.attack, args.out, tuple(args.overrides),
                        tuple(args.config_dir), tuple(args.eps or ()))


def run_transfer(spec: TransferSpec) -> tuple[SweepOutcome, list[Cell], str]:
    """Run (or resume) the transfer sweep, write ``transfer.parquet`` and ``transfer.txt``; the cells and the text."""
    cfg = compose_transfer(spec)
    outcome = run_sweep(cfg)
    table = ResultStore(Path(cfg["out_dir"]).expanduser()).read(t.task_id for t in outcome.plan.tasks)
    transfer_of = {label: spec.perturbation_of(label) for label in spec.labels}
    cells = transfer_matrix(table, spec.labels, spec.attack, transfer_of)
    text = render_matrix(cells, spec.labels, spec.attack)
    out_dir = outcome.results_dir.parent
    meta = {"run_id": outcome.plan.run_id, "attack": spec.attack, "models": ",".join(spec.labels),
            "configs": ",".join(f"{label}={name}" for label, name in spec.models),
            "definition": "success = fooled / n; n = samples the target classifies correctly clean; fooled = those "
                          "the source's example at ε makes it misclassify; Wilson 95 % intervals"}
    _atomic_write(out_dir / MATRIX_FILE, lambda tmp: pq.write_table(to_table(cells, meta), tmp))
    _atomic_write(out_dir / "transfer.txt", lambda tmp: tmp.write_text(text + "\n"))
    return outcome, cells, text


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def main(argv: Sequence[str]) -> int:
    """``gauntlet transfer --models A B [C …] --out DIR [--attack NAME] [--eps E …] [key=value …]``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        spec = spec_of(argv)
        outcome, _, text = run_transfer(spec)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    print(f"\nGauntlet transfer run {outcome.plan.run_id}: {len(outcome.plan.tasks)} task(s), {outcome.evaluated} "
          f"evaluated, {len(outcome.plan.tasks) - outcome.evaluated} reused\n")
    print(outcome.summary)
    print(f"\n{text}")
    print(f"\nMatrix: {outcome.results_dir.parent / MATRIX_FILE}  (report: gauntlet report {spec.out_dir})")
    return 0
