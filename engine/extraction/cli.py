"""``gauntlet extract key=value …``: argument handling, the run, the printed table and the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from engine.errors import ConfigError, GauntletError, error_exit, subcommand_start
from engine.extraction.settings import Contract
from engine.remote.api import Oracle

USAGE = """usage: gauntlet extract target=MODEL budgets=[B1,B2,…] out_dir=DIR [key=value …]

Steal a copy of TARGET through its oracle (every query counted there) and measure it per budget: fidelity
(agreement with the target on the test split; those queries are counted apart), the copy's accuracy, and the
success of PGD L∞ examples crafted on the copy and sent once to the target, beside the same transfer from an
independently trained model of the same architecture (docs/extraction.md).

keys:
  target=MODEL        model config answering the queries (configs/model/)
  budgets=[…]         query budgets; budget B trains a copy on the first B queries of one seeded sequence
  out_dir=DIR         run folder; a re-run reuses finished budgets and refuses a changed set-up
  output=label        what the target answers: label | probs | probs:N (rounded to N decimals) | logits,
                      or a list: output=[label,probs:2,probs] (one curve each, same queries and seeds)
  copy=MODEL          model config whose architecture the copy uses (default: the target's)
                      (required when the target is a remote model config: configs/model/remote_digits_cnn.yaml)
  dataset=digits      dataset config; its test split measures fidelity, accuracy and transfer
  queries=train       train (the victim's train split) | synthetic (uniform noise) | a dataset config name
  eps=0.1             L∞ radius of the transfer attack (8/255 accepted); attack_steps=20
  n_test=0            test samples used (0: the whole split); seed=0; device=cpu
  train_steps=600 batch_size=64 lr=0.001   the copy's training (Adam, the same for every budget)
  locations: dataset.root=… dataset.path=… queries.root=… queries.path=… model.<name>.checkpoint=…
             model.<name>.remote.url=… (where a remote target's endpoint is)

Writes DIR/extraction.parquet, DIR/report/index.html, and per contract DIR/<contract>/ (copies as safetensors
with model configs: gauntlet --config-dir DIR/<contract>/configs model=<name> …). Exit 2 on a bad argument."""


def target_oracle(model: torch.nn.Module, contract: Contract, num_classes: int) -> Oracle:
    """The target's oracle: a remote model's own (its endpoint's contract), else the model answered in-process
    under ``contract`` (PNG on the 8-bit grid, as an endpoint would receive it).

    A remote endpoint's answers cannot be changed from here: ``output=label`` uses only its labels; any other
    contract must be the one the endpoint declares (output and rounding).
    """
    from engine.remote.api import oracle_of
    from engine.remote.local import LocalOracle

    found = oracle_of(model)
    if found is None:
        return LocalOracle(model, output=contract.output, num_classes=num_classes,  # type: ignore[arg-type]
                           round_digits=contract.decimals)
    declared = Contract(found.output, getattr(found, "round_digits", None))
    if contract.output != "label" and contract != declared:
        raise ConfigError(f"output={contract.label}: the remote target answers {declared.label} (its config's "
                          f"remote.output / round_digits); ask for output={declared.label}, or output=label to use "
                          "its labels only")
    return found


local_oracle = target_oracle  # the in-process case, by the name the tests use


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'contract':<10} {'role':<9} {'budget':>7} {'fidelity':>9} {'accuracy':>9} {'transfer':>9}"]
    for r in rows:
        lines.append(f"{r['contract']:<10} {r['role']:<9} {r['budget']:>7} {r['fidelity']:>9.3f} "
                     f"{r['accuracy']:>9.3f} {r['transfer_success']:>9.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Run ``extract`` on ``argv`` (the arguments after ``extract``); return the exit code."""
    started = subcommand_start(argv, USAGE)
    if started is not None:
        return started
    try:
        from engine.extraction.run import extract
        from engine.extraction.settings import parse_args
        from engine.runners.signals import interruptible
        from engine.sinks.extraction_report import write_report

        settings = parse_args(argv)
        with interruptible():
            rows, spent, out_dir = extract(settings, target_oracle)
        page = write_report(out_dir, rows)
    except GauntletError as exc:
        return error_exit(exc)
    print(_table(rows))
    print(f"\nqueries sent now: {spent.total} (stealing {spent.steal}, fidelity {spent.fidelity}, "
          f"transfer {spent.transfer}); results: {out_dir / 'extraction.parquet'}; report: {page}")
    return 0
