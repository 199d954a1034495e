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
