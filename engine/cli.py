"""The ``gauntlet`` command: compose the Hydra config, run the sweep, print the summary. Wiring only."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.compose.config import (
    CONFIG_DIR,
    config_dirs_from_argv,
    package_problems,
    register_schemas,
    shadowed_configs,
    unknown_choices,
    yaml_problems,
)
from engine.compose.targets import config_dir_problems, opt_ins_from_files, opted_in_on_command_line
from engine.errors import ConfigError, GauntletError
from engine.store.outdir import check_out_dir

log = logging.getLogger("gauntlet")

register_schemas()
# configs/sweep.yaml: each multirun job's Hydra folder as an absolute path inside its own out_dir
OmegaConf.register_new_resolver("gauntlet_abspath", lambda p: os.path.abspath(os.path.expanduser(str(p))),
                                replace=True)


SUBCOMMANDS = {  # gauntlet <subcommand> …: each module owns its logic and returns the exit code
    "compact": "engine.store.compact:main",
    "report": "engine.sinks.report:main",
    "compare": "engine.stats.compare:main",
    "convert-checkpoint": "engine.models.convert:main",
    "verify": "engine.claims.cli:main",
    "transfer": "engine.transfer.cli:main",
    "extract": "engine.extraction.cli:main",
    "probe": "engine.probe.cli:main",
}


def _fail(problems: list[str]) -> None:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    sys.exit(2)


def _precheck(argv: list[str]) -> tuple[list[str], list[str]]:
    """What can be checked before Hydra (duplicate keys, group choices, ``# @package`` headers, out_dir), and
    the overrides that keep Hydra's own files inside ``out_dir``."""
    dirs = [Path(CONFIG_DIR), *config_dirs_from_argv(argv)]
    problems = yaml_problems(dirs)
    if problems:
        return problems, []  # a file that does not parse as written: the other checks would read it wrongly
    problems = (unknown_choices(argv, [Path(CONFIG_DIR)]) + package_problems(dirs)
                + shadowed_configs(config_dirs_from_argv(argv)))
    if not opted_in_on_command_line(argv):  # the user's folders may not grant themselves the opt-ins
        problems += config_dir_problems(config_dirs_from_argv(argv))
    if problems:
        return problems, []
    return _out_dir_check(argv)


def main() -> None:
    """Console entry point: a subcommand (``gauntlet verify|report|compare|compact|…``) or a sweep."""
    from engine.store.rundir import set_launch_command

    argv = sys.argv[1:]
    set_launch_command(argv, os.getcwd())  # recorded in plan.json: the command that resumes a killed run
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, _, func = SUBCOMMANDS[argv[0]].partition(":")
        sys.exit(getattr(importlib.import_module(module), func)(argv[1:]))
    argv = [_quote_tilde(a) for a in argv]
    problems, extra = _precheck(argv)
    if problems:
        _fail(problems)
    sys.argv[1:] = argv + extra
    hydra_main()


def _quote_tilde(arg: str) -> str:
    """``out_dir=~/x`` (the shell left ``~`` alone) → ``out_dir="~/x"``: Hydra's grammar refuses a bare ``~``."""
    key, eq, value = arg.partition("=")
    if eq and not arg.startswith("-") and (value == "~" or value.startswith("~/")) and '"' not in value:
        return f'{key}="{value}"'
    return arg


def _hydra_args(argv: list[str]) -> argparse.Namespace | None:
    """Hydra's own reading of the command line (None where it would not parse: Hydra says why)."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return get_args_parser().parse_known_args(argv)[0]
    except SystemExit:
        return None


def _compose(args: argparse.Namespace, overrides: list[str]) -> DictConfig:
    """The config Hydra will compose for one job's ``overrides`` (same search path, ``--config-dir`` first)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    search_path = create_config_search_path(f"file://{CONFIG_DIR}")
    if args.config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(args.config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    try:
        composer = Hydra.create_main_hydra2(task_name="gauntlet", config_search_path=search_path)
        return composer.compose_config(args.config_name or "sweep", overrides, run_mode=RunMode.RUN,
                                       with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()


MAX_JOBS_CHECKED = 64  # a larger multirun has its later jobs' out_dir checked by each job before compute


def _jobs(overrides: list[str]) -> list[list[str]]:
    """The job override lists of a ``-m`` sweep, as Hydra's basic sweeper will launch them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch][:MAX_JOBS_CHECKED]


def _resolved_out_dir(cfg: DictConfig, given: str) -> str:
    try:
        value = OmegaConf.select(cfg, "out_dir", throw_on_resolution_failure=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"out_dir={given} cannot be resolved: {str(exc).splitlines()[0]}") from None
    return "" if value is None else str(value)


def _out_dir_check(argv: list[str]) -> tuple[list[str], list[str]]:
    """``out_dir`` as Hydra will resolve it, interpolations included, checked without creating anything.

    For ``-m``, every job's (up to ``MAX_JOBS_CHECKED``), and an override that puts the sweep's
    ``multirun.yaml`` in the first job's ``out_dir``: Hydra would resolve it with the config's
    default values of swept keys, i.e. possibly a folder no job writes to.
    """
    args = _hydra_args(argv)
    if args is None or args.help or args.hydra_help or args.cfg or args.info or args.shell_completion \
            or args.config_path is not None:
        return [], []  # nothing runs (help, --cfg), or a layout this check does not mirror
    given = next((a.partition("=")[2] for a in args.overrides if a.startswith("out_dir=")), "<config's out_dir>")
    try:
        jobs = _jobs(args.overrides) if args.multirun else [args.overrides]
        configs = [_compose(args, job) for job in jobs]
    except (HydraException, OmegaConfBaseException) as exc:  # a value of the wrong type, an unknown key
        return [_composition_message(exc)], []
    except Exception:  # what does not compose here for other reasons (a plugin's syntax), Hydra reports next
        return [], []
    try:
        out_dirs = [_resolved_out_dir(cfg, given) for cfg in configs]
        for out_dir in dict.fromkeys(out_dirs):
            check_out_dir(out_dir, create=False, given=given)
    except GauntletError as exc:
        return [str(exc)], []
    first = os.path.abspath(os.path.expanduser(out_dirs[0])) if out_dirs else ""
    if not args.multirun or any(o.startswith("hydra.sweep.dir=") for o in args.overrides) or \
            any(c in first for c in "'\\$"):
        return [], []
    return [], [f"hydra.sweep.dir='{first}/hydra/multirun/${{now:%Y-%m-%d_%H-%M-%S}}'"]


def _composition_message(exc: BaseException) -> str:
    """Hydra's composition error in one line (exit 2 like every bad input), its cause's first lines joined."""
    parts = [str(exc).strip()]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip() not in parts[0]:
        parts.append(str(cause).strip())
    lines = [ln.strip() for part in parts for ln in part.splitlines() if ln.strip()]
    return "; ".join(dict.fromkeys(lines))


@hydra.main(config_path=CONFIG_DIR, config_name="sweep", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from engine.sweep import run_sweep  # heavy imports after Hydra has parsed the command line

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        composed = {str(k): v for k, v in container.items()}
        problems = opt_ins_from_files(composed, sys.argv[1:])
        if problems:
            raise ConfigError("; ".join(problems))
        outcome = run_sweep(composed)
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
