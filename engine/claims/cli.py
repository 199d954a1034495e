"""``gauntlet verify CLAIM.yaml [key=value …]``: argument handling, printing and exit codes for a claim check."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Sequence

from engine.errors import GauntletError, error_exit, subcommand_start

USAGE = """usage: gauntlet verify CLAIM.yaml [key=value …]

Check a vendor's robustness claims (docs/claims.md): AutoAttack standard per norm, the corruption suites,
indicators of attack failure, an escalation ladder (EOT, BPDA, transfer, plus, Square; stronger rungs while
they still break samples, skipped where no verdict can change) and a verdict per claim naming the rule that
decided it, printed and written to OUT_DIR/verdict.json.

Overrides after the file: n_examples=N (a subset's n too), resolution=0.1, tolerance=0.02,
ladder_budget=E (model evaluations per sample for the whole ladder; default 50000), budget=F (a fraction of
every attack's iterations and queries for a quick look: such a run can refute a claim, never confirm it), where the
data and weights live (dataset.root=…, dataset.path=…, model.checkpoint=…), and sweep keys such as out_dir=…,
device=…, batch_size=…, seed=…, progress=false (default out_dir: runs/verify/<claim file name>).

Exit codes: 0 every claim CONSISTENT, 1 some claim REFUTED, 3 none refuted but some INCONCLUSIVE,
2 an error (bad claim file or override, unknown model, ε in the wrong units, …) before or during the run."""


def main(argv: Sequence[str]) -> int:
    """Run ``verify`` on ``argv`` (the arguments after ``verify``); return the exit code."""
    started = subcommand_start(argv, USAGE)
    if started is not None:
        return started
    try:
        from engine.claims.build import split_overrides
        from engine.claims.schema import load_claim_file

        load_claim_file(argv[0])  # a bad file fails here, before torch is even imported
        split_overrides(argv[1:])
        from engine.claims.run import verify
        from engine.claims.verdict import exit_code, render, write_verdicts
        from engine.runners.signals import interruptible

        with interruptible():  # between sweeps too (indicators, escalation choice): one line, 130/143
            report = verify(argv[0], argv[1:], command=" ".join(["gauntlet", "verify", *map(shlex.quote, argv)]))
    except GauntletError as exc:
        return error_exit(exc)  # 2; 128 + the signal when interrupted
    except Exception:  # a crash must never read as a verdict (exit 1 means REFUTED)
        logging.getLogger("gauntlet.verify").exception("verify failed")
        print("error: verify failed unexpectedly (traceback above); no verdict was written", file=sys.stderr)
        return 2
    path = write_verdicts(report)
    print(render(report))
    try:
        from engine.sinks.wandb_sink import log_verify

        log_verify(report.out_dir)  # the base sweep, its verdicts and headline as one W&B run (no-op if disabled)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = report.out_dir
    print(f"\nVerdict: {path} and verdict.txt  (results: {out_dir / 'results'}, escalations: "
          f"{out_dir / 'escalations'})")
    return exit_code(report.verdicts)
