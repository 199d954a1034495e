"""The ``gauntlet`` command: compose the Hydra config, run the sweep, print the summary. Wiring only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from engine.config import CONFIG_DIR, register_schemas, unknown_choices
from engine.errors import GauntletError

log = logging.getLogger("gauntlet")

register_schemas()


def main() -> None:
    """Console entry point: check group choices (listing valid ones), then hand over to Hydra."""
    if sys.argv[1:2] == ["verify"]:  # a subcommand with its own arguments, before Hydra sees argv
        from engine.claims.cli import main as verify_main

        sys.exit(verify_main(sys.argv[2:]))
    problems = unknown_choices(sys.argv[1:], [Path(CONFIG_DIR)])
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from engine.sweep import run_sweep  # heavy imports after Hydra has parsed the command line

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        outcome = run_sweep({str(k): v for k, v in container.items()})
    except GauntletError as exc:
        log.error("%s", exc)
        sys.exit(2)
    n_rows = sum(r.n for r in outcome.accuracy)
    print(f"\nGauntlet run {outcome.plan.run_id}: {len(outcome.plan.tasks)} task(s), "
          f"{outcome.evaluated} evaluated, {len(outcome.plan.tasks) - outcome.evaluated} reused, {n_rows} rows\n")
    print(outcome.summary)
    print(f"\nResults: {outcome.results_dir}  (read with pyarrow.dataset.dataset(path))")


if __name__ == "__main__":
    main()
