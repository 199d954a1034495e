"""Module boundaries from DESIGN.md: evaluation code never loads Ray or wandb; imports follow the stage floors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_evaluation_code_imports_neither_ray_nor_wandb() -> None:
    code = (
        "import sys, engine.evaluation.evaluate, engine.planning.plan, engine.stats.aggregate, "
        "engine.evaluation.checks, engine.runners.local; "
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


# The floors of the house (docs/architecture.md, "Stages"): a module may import its own room and
# rooms on lower floors, never a room on its own floor or above. Lazy imports inside functions
# count too. A new room must be placed here before its first module lands.
FLOORS: dict[str, int] = {
    "errors": 0, "seeding": 0, "__init__": 0,  # the ground floor: plain helpers anyone may use
    "compose": 1,  # config schemas, the _target_ policy, levels, threat models
    "data": 2, "remote": 2,  # remote: the oracle takes an nn.Module or an endpoint; models/perturbations use it
    "models": 3, "perturbations": 3,  # the components a sweep is made of
    "evaluation": 4,  # tasks, resources, the one evaluation loop and its checks
    "planning": 5, "runners": 5, "store": 5,
    "stats": 6, "sanity": 6,
    "sinks": 7,
    "sweep": 8,  # the driver
    "claims": 9,  # gauntlet verify drives sweeps
    "extraction": 9, "probe": 9,  # gauntlet extract / gauntlet probe drive the oracle, training and sinks
    "transfer": 9,  # gauntlet transfer drives one sweep and writes its matrix
    "cli": 10,  # the entry point wires everything
}
TOP_LEVEL_MODULES = {"__init__", "cli", "sweep", "errors", "seeding"}


def _engine_modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "engine").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every engine module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("engine."):
                found.add(name)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_points_down_the_stage_floors() -> None:
    modules = _engine_modules()
    rooms = {_room(m) for m in modules}
    assert rooms <= set(FLOORS), f"rooms without a floor (place them in FLOORS): {sorted(rooms - set(FLOORS))}"
    upward = []
    for module, path in modules.items():
        for target in _imports(path, set(modules)):
            src, dst = _room(module), _room(target)
            if src != dst and FLOORS[dst] >= FLOORS[src]:
                upward.append(f"{module} (floor {FLOORS[src]}) imports {target} (floor {FLOORS[dst]})")
    assert not upward, "\n".join(upward)
    top = {p.stem for p in (REPO / "engine").glob("*.py")}
    assert top == TOP_LEVEL_MODULES, f"engine/ top level holds {sorted(top)}; new modules go in a room"


def test_no_import_cycle_between_modules() -> None:
    modules = _engine_modules()
    graph = {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert len(state) > 60  # the walk covered the package


def test_the_floor_checker_sees_an_upward_arrow(tmp_path: Path) -> None:
    """The checker itself can fail: a lazy import of the driver from evaluation code is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from engine.sweep import run_sweep\n    return run_sweep\n")
    modules = set(_engine_modules())
    assert _imports(bad, modules) == {"engine.sweep"}
    assert FLOORS[_room("engine.sweep")] > FLOORS[_room("engine.evaluation.evaluate")]
