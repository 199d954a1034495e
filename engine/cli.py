"""The ``gauntlet`` command: compose the Hydra config, run the sweep, print the summary. Wiring only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from engine.compose.config import CONFIG_DIR, config_dirs_from_argv, package_problems, register_schemas, unknown_choices
from engine.errors import GauntletError

log = logging.getLogger("gauntlet")

register_schemas()


SUBCOMMANDS = {  # gauntlet <subcommand> …: each module owns its logic and returns the exit code
    "compact": "engine.store.compact:main",
    "report": "engine.sinks.report:main",
    "compare": "engine.stats.compare:main",
    "convert-checkpoint": "engine.models.convert:main",
    "verify": "engine.claims.cli:main",
}


def _fail(problems: list[str]) -> None:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    sys.exit(2)


def _precheck(argv: list[str]) -> list[str]:
    """What can be checked before Hydra: group choices, ``# @package`` headers, the output folder."""
    dirs = [Path(CONFIG_DIR), *config_dirs_from_argv(argv)]
    problems = unknown_choices(argv, [Path(CONFIG_DIR)]) + package_problems(dirs)
    if "-m" in argv or "--multirun" in argv:
        return problems
    for arg in argv:
        if arg.startswith("out_dir=") and "," not in arg and "$" not in arg:
            from engine.store.outdir import check_out_dir

            try:
                check_out_dir(arg.partition("=")[2].strip("'\""))
            except GauntletError as exc:
                problems.append(str(exc))
    return problems


def main() -> None:
    """Console entry point: a subcommand (``gauntlet verify|report|compare|compact|…``) or a sweep."""
    argv = sys.argv[1:]
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, _, func = SUBCOMMANDS[argv[0]].partition(":")
        sys.exit(getattr(importlib.import_module(module), func)(argv[1:]))
    argv = [_quote_tilde(a) for a in argv]
    problems = _precheck(argv)
    if problems:
        _fail(problems)
    sys.argv[1:] = argv
    hydra_main()


def _quote_tilde(arg: str) -> str:
    """``out_dir=~/x`` (the shell left ``~`` alone) → ``out_dir="~/x"``: Hydra's grammar refuses a bare ``~``."""
    key, eq, value = arg.partition("=")
    if eq and not arg.startswith("-") and (value == "~" or value.startswith("~/")) and '"' not in value:
        return f'{key}="{value}"'
    return arg


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from engine.sweep import run_sweep  # heavy imports after Hydra has parsed the command line

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        outcome = run_sweep({str(k): v for k, v in container.items()})
    except GauntletError as exc:
        log.error("%s", exc)
        sys.exit(getattr(exc, "exit_code", 2))  # 2; 130/143 for SIGINT/SIGTERM (engine.runners.signals)
    n_rows = sum(r.n for r in outcome.accuracy)
    print(f"\nGauntlet run {outcome.plan.run_id}: {len(outcome.plan.tasks)} task(s), "
          f"{outcome.evaluated} evaluated, {len(outcome.plan.tasks) - outcome.evaluated} reused, {n_rows} rows\n")
    print(outcome.summary)
    print(f"\nResults: {outcome.results_dir}  "
          f"(read with engine.store.results.read({str(cfg.out_dir)!r}); docs/results.md)")


if __name__ == "__main__":
    main()
