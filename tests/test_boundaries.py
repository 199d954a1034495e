"""Module boundaries from DESIGN.md: evaluation code never loads Ray or wandb."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_evaluation_code_imports_neither_ray_nor_wandb() -> None:
    code = (
        "import sys, engine.evaluate, engine.plan, engine.aggregate, engine.verify, engine.runners.local; "
        "bad = [m for m in ('ray', 'wandb') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


RAY_MODULES = {"engine.runners.ray", "engine.cli"}  # the runner and its CLI wiring may load Ray


def test_no_engine_module_outside_the_ray_runner_imports_ray() -> None:
    """Import every module of the package (but the Ray runner and the CLI) in one fresh process.

    Imports only add modules, so if all of them together leave ``ray`` out of ``sys.modules``, each
    one alone does too. The Ray runner itself imports Ray lazily, inside ``RayRunner.run``.
    """
    code = (
        "import importlib, pkgutil, sys, engine\n"
        f"skip = {sorted(RAY_MODULES)!r}\n"
        "names = sorted(m.name for m in pkgutil.walk_packages(engine.__path__, 'engine.') if m.name not in skip)\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "    if 'ray' in sys.modules:\n"
        "        print('imports ray:', name); sys.exit(1)\n"
        "importlib.import_module('engine.runners.ray')\n"
        "print(len(names), 'ray' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count, lazy = proc.stdout.split()
    assert int(count) > 20  # the walk really covered the package
    assert lazy == "False"  # even the runner module loads Ray only when a sweep runs on it
