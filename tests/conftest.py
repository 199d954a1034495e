"""Shared fixtures: composed configs, the embedded checkpoints, a tiny untrained model on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("GAUNTLET_CACHE_DIR", str(Path.home() / ".cache" / "gauntlet"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(os.environ["GAUNTLET_CACHE_DIR"]) / "numba"))
# Sweeps in tests skip W&B (the sink never imports wandb then); tests/test_wandb_sink.py turns it on
# in its own subprocesses with a private HOME.
os.environ["WANDB_MODE"] = "disabled"
# numba's OpenMP pool shares the OpenMP runtime with torch and, when it starts (the first corruption kernel),
# sets it to NUMBA_NUM_THREADS threads: without this, `make test`'s one thread per process (OMP_NUM_THREADS=1)
# became two after the first corruption test, on two pytest workers sharing two cores.
if os.environ.get("OMP_NUM_THREADS"):
    os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

from engine.compose.config import compose_sweep, register_schemas
from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN

REPO = Path(__file__).resolve().parent.parent
register_schemas()

ComposeFn = Callable[..., dict[str, Any]]


def compose_dict(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``sweep.yaml`` with overrides and return it resolved as a plain dict."""
    return compose_sweep(tuple(overrides))


@pytest.fixture(scope="session")
def embedded_checkpoints() -> dict[str, str]:
    """Train (first time only, ~2-4 min) or verify both embedded checkpoints; return their sha256."""
    from engine.models.loader import ensure_checkpoint

    cfg = compose_dict()
    return {name: ensure_checkpoint(name, mcfg, progress=False) for name, mcfg in cfg["model"].items()}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained SmallCNN saved as safetensors with a manifest: fast stand-in for unit tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(SmallCNN().state_dict(), path, {"model": "tiny"})
    return path


@pytest.fixture(scope="session")
def user_package_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own model package (tests/scenario_fixtures.py) in a folder on sys.path and PYTHONPATH.

    Session-scoped and set up before the Ray instance below, so that Ray's workers import it too: they
    take the driver's sys.path and environment as they were at ``ray.init``, as a user's would.
    """
    from tests.scenario_fixtures import write_user_package

    root = write_user_package(tmp_path_factory.mktemp("user_pkg"))
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    return root


@pytest.fixture(scope="session")
def ray_instance(user_package_root: Path) -> Iterator[Any]:
    """The one in-process Ray instance of a pytest worker: explicit, small, loopback only, never a stray cluster."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: stay on 127.0.0.1
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_overrides(ckpt: Path, out_dir: Path, *extra: str) -> list[str]:
    """Overrides for a fast sweep on the untrained model (no training, few samples)."""
    return [
        "model=[digits_cnn]",
        f"model.digits_cnn.checkpoint={ckpt}",
        "model.digits_cnn.train=null",
        f"out_dir={out_dir}",
        "n_examples=20",
        "batch_size=8",
        "progress=false",
        *extra,
    ]


def load_script(name: str) -> Any:
    """``scripts/<name>.py`` imported as a module (scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``gauntlet`` as a user would; returns the finished process (never raises on exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


# `make test` runs two pytest-xdist workers with --dist loadgroup. Each file is one group, so its
# module- and session-scoped fixtures (a simulated Ray cluster, a Ray instance, a 200-sample sweep)
# are built once. The files that JIT-compile the numba corruption kernels share one group: one
# worker compiles each kernel signature once into NUMBA_CACHE_DIR, instead of both at once on a
# fresh machine.
NUMBA_FILES = {"test_kernels_corruptions.py", "test_corruptions_engine.py", "test_corruptions_fidelity.py",
               "test_corruption_summary.py"}


# Files of long, independent tests (no module-scoped fixture): each test is its own group, so the two workers share
# them instead of one worker running the whole file (13 minutes of `gauntlet verify` runs) while the other idles.
SPLIT_FILES = {"test_claims_acceptance.py"}
# The Ray Serve test server starts a Ray instance of its own, which rewrites /tmp/ray's "current cluster" record that
# `runner.address=auto` reads: never beside the cluster tests (same group: one worker, one after the other).
SAME_GROUP = {"test_remote_serve.py": "test_ray_cluster.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        group = "numba-kernels" if name in NUMBA_FILES else item.nodeid if name in SPLIT_FILES else \
            SAME_GROUP.get(name, name)
        item.add_marker(pytest.mark.xdist_group(group))
