"""What runs inside one Ray actor: a ``Resources`` on one device, shipped inputs, batched progress reports.

Imports no Ray: the actor class is wrapped with ``ray.remote`` by ``engine.runners.ray`` and is
handed the few Ray calls it needs (fetching a shipped object, sending a progress report), so this
module stays testable in-process and obeys the package boundary.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.data import Dataset, SampleSet
from engine.errors import CheckpointError, GauntletError
from engine.evaluation.evaluate import evaluate
from engine.evaluation.resources import Resources
from engine.evaluation.tasks import Task, TaskResult
from engine.models.loader import build_model
from engine.runners.base import WorkBatcher, oom_message
from engine.seeding import stable_hash

log = logging.getLogger(__name__)

Fetch = Callable[[Any], Any]  # ray.get for one shipped object
# (task_id, attempt, evals spent, evals found unnecessary, samples finished, seconds) → fire-and-forget
Report = Callable[[str, int, int, int, int, float], None]


@dataclasses.dataclass(frozen=True)
class Shipped:
    """Object-store references sent with each task (nested, so Ray does not fetch them per call)."""

    checkpoint: Any = None  # bytes of the model's checkpoint file, or None: read it from its path
    dataset: Any = None  # the SampleSet prefix the tasks need, or None: build it from its config
    dataset_key: str = ""


def pick_device(gpu_ids: list[Any]) -> tuple[torch.device, str]:
    """The device for Ray's GPU assignment, and its real name (a fake GPU without CUDA means CPU)."""
    if gpu_ids and torch.cuda.is_available():
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned ids, so the process sees them as cuda:0..
        return torch.device("cuda", 0), f"cuda:{gpu_ids[0]}@{socket.gethostname()}"
    return torch.device("cpu"), "cpu"


class WorkerResources(Resources):
    """``Resources`` that keep only the last ``keep_models`` models, count loads, and use shipped data."""

    def __init__(self, device: torch.device, keep_models: int = 2) -> None:
        super().__init__(device)
        self.keep_models = max(1, keep_models)
        self._lru: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self.loads: dict[str, int] = {}
        self.shipped_data: dict[str, SampleSet] = {}

    def model(self, name: str, cfg: Mapping[str, Any]) -> torch.nn.Module:
        key = stable_hash([name, cfg])
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        while len(self._lru) >= self.keep_models:
            self._lru.popitem(last=False)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        model = build_model(name, cfg, self.device)
        self.loads[name] = self.loads.get(name, 0) + 1
        self._lru[key] = model
        return model

    def dataset(self, cfg: Mapping[str, Any]) -> Dataset:
        key = stable_hash(cfg)
        if key in self.shipped_data:
            return self.shipped_data[key]
        return super().dataset(cfg)


def materialise_checkpoint(data: bytes, task: Task, folder: Path) -> Path:
    """Write shipped checkpoint bytes to a local file after checking their sha256 against the task's."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != task.checkpoint_sha256:
        raise CheckpointError(
            f"model {task.model_name!r}: the checkpoint bytes that reached this worker have sha256 "
            f"{digest[:12]}…, expected {task.checkpoint_sha256[:12]}… (corrupted in transit or replaced)"
        )
    suffix = Path(str(task.model["checkpoint"])).suffix
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


class Worker:
    """One actor: evaluates tasks in submission order on the device Ray gave it."""

    def __init__(self, name: str, threads: int, gpu_ids: list[Any], report: Report, fetch: Fetch,
                 report_interval_s: float = 0.5, keep_models: int = 2,
                 perturbations: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> None:
        torch.set_num_threads(max(1, threads))
        self.name = name
        self.threads = threads
        self.device, self.device_name = pick_device(gpu_ids)
        self.res = WorkerResources(self.device, keep_models)
        self.report = report
        self.fetch = fetch
        self.report_interval_s = report_interval_s
        self.ckpt_dir = Path(tempfile.gettempdir()) / f"gauntlet-ray-{os.getuid()}" / "checkpoints"
        self._local_ckpt: dict[str, Path] = {}
        self.runs: list[str] = []
        self.gpu_ids = [str(g) for g in gpu_ids]
        self.warm_s = self.warm_up(perturbations)

    def warm_up(self, perturbations: Sequence[tuple[str, Mapping[str, Any]]]) -> float:
        """Build the sweep's perturbations before the actor reports ready, so their imports (torchattacks
        pulls in scipy: ~1.7 s here) count as start-up, not as the first task's time. A perturbation
        that fails to build is left for its task, which then fails with its name."""
        t0 = time.monotonic()
        for name, cfg in perturbations:
            try:
                self.res.perturbation(name, cfg)
            except Exception as exc:
                log.debug("warm-up of perturbation %s failed (its task will report it): %s", name, exc)
        return time.monotonic() - t0

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device_name, "pid": os.getpid(), "host": socket.gethostname(),
                "threads": torch.get_num_threads(), "numba_threads": os.environ.get("NUMBA_NUM_THREADS"),
                "loads": dict(self.res.loads), "runs": list(self.runs), "gpu_ids": self.gpu_ids,
                "cpu_s": time.process_time(), "warm_s": self.warm_s, "nice": os.nice(0)}

    def _local_task(self, task: Task, shipped: Shipped) -> Task:
        """``task`` with its model pointing at a verified local copy of the shipped checkpoint."""
        if shipped.dataset is not None and shipped.dataset_key not in self.res.shipped_data:
            self.res.shipped_data[shipped.dataset_key] = self.fetch(shipped.dataset)
        if shipped.checkpoint is None:
            return task
        sha = task.checkpoint_sha256
        if sha not in self._local_ckpt:
            self._local_ckpt[sha] = materialise_checkpoint(self.fetch(shipped.checkpoint), task, self.ckpt_dir)
        model = {**task.model, "checkpoint": str(self._local_ckpt[sha]), "sha256": sha, "train": None}
        return dataclasses.replace(task, model=model)

    def run(self, task: Task, attempt: int, shipped: Shipped) -> TaskResult:
        self.runs.append(task.task_id)
        batcher = WorkBatcher(functools.partial(self.report, task.task_id, attempt), self.report_interval_s)
        try:
            result = evaluate(self._local_task(task, shipped), self.res, on_batch=batcher.batch_done, on_work=batcher)
        except torch.OutOfMemoryError:
            raise GauntletError(oom_message(task, self.device_name)) from None
        return dataclasses.replace(result, task=task, device=self.device_name, worker=self.name)
