"""Run a sweep's tasks in Ray actors over every CPU/GPU of a cluster, retrying tasks whose worker died.

The only engine module that imports Ray (lazily, inside ``RayRunner.run``). Each actor holds a
``Resources`` on one device (``engine.runners.ray_worker``); the driver keeps a bounded number of
tasks in flight per actor (``ray.wait``), dispatches them grouped by model then perturbation so
an actor keeps its model, ships each checkpoint's bytes and a small dataset through the object
store once, and yields each result as it arrives (the driver alone writes Parquet).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.data import SampleSet
from engine.errors import CheckpointError, ConfigError, GauntletError
from engine.evaluation.resources import Resources
from engine.evaluation.tasks import Task, TaskResult
from engine.remote.accounting import LeasedLimiter, LocalLimiter
from engine.remote.api import QueryBudgetExhausted
from engine.remote.model import install_limiter, installed_limiter, is_remote, remote_settings, target_key
from engine.runners.base import RunContext, default_threads
from engine.runners.ray_worker import Shipped, Worker
from engine.runners.signals import keeping_handlers
from engine.seeding import stable_hash

log = logging.getLogger(__name__)

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a private instance binds to 127.0.0.1 only
# Ray renices every worker process by +15 so that its own daemons stay responsive. On a busy machine
# that starves the sweep: beside 4 busy loops at nice 0 a nice-15 actor got ~3 % of a core, and the
# 64-sample default sweep had done 2 of its 14 tasks after 15 minutes (docs/BENCHMARKS.md, "Ray under
# contention"). Our workers are the work: they run at the raylet's priority (a private instance's is
# the driver's, as runner=local's).
NICENESS_ENV = {"RAY_worker_niceness": "0"}  # an increment, read by each worker process at start-up
TICK_S = 0.5  # how often the driver collects progress reports while it waits for results
MiB = 1 << 20
JOIN_ATTEMPTS = 3  # tries to join a cluster through Ray Client (ray://) before giving up
JOIN_RETRY_S = 2.0  # wait before the next try, times the attempt number


def _import_ray(private: bool) -> Any:
    if private:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # read when ray is first imported
    import ray

    return ray


def _retryable(ray: Any) -> tuple[type[BaseException], ...]:
    """Errors that mean the worker (process or node) was lost, not that the task is wrong."""
    ex = ray.exceptions
    return (ex.RayActorError, ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError,
            ex.LocalRayletDiedError, ex.OutOfMemoryError)


@dataclass
class _Actor:
    name: str
    handle: Any
    ready_ref: Any
    started: float
    ready: bool = False
    ready_at: float = 0.0
    alive: bool = True
    device: str = ""
    model: str | None = None  # model of the last task sent to it
    info: dict[str, Any] = field(default_factory=dict)  # what the actor said about itself when ready
    inflight: deque[tuple[Any, Task, int]] = field(default_factory=deque)  # (ref, task, attempt), in order


class TaskQueue:
    """Tasks waiting for an actor, one queue per model (in sweep order), each by perturbation then rows."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        perts = {p: i for i, p in enumerate(dict.fromkeys(t.perturbation_name for t in tasks))}
        self.queues: dict[str, deque[Task]] = {m: deque() for m in dict.fromkeys(t.model_name for t in tasks)}
        for t in sorted(tasks, key=lambda t: (perts[t.perturbation_name], t.start)):
            self.queues[t.model_name].append(t)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def take(self, current: str | None, actors_on: dict[str, int]) -> Task | None:
        """The next task for an actor holding model ``current``: same model if any is left, else the
        model with the most queued tasks per actor already on it (so actors spread over models)."""
        if current is not None and self.queues.get(current):
            return self.queues[current].popleft()
        left = [m for m, q in self.queues.items() if q]
        if not left:
            return None
        best = max(left, key=lambda m: (len(self.queues[m]) / (1 + actors_on.get(m, 0)), -left.index(m)))
        return self.queues[best].popleft()

    def put_back(self, task: Task) -> None:
        self.queues[task.model_name].appendleft(task)


@dataclass
class RayRunner:
    """``runner=ray``: see configs/runner/ray.yaml for every key."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: float | None = None
    object_store_memory: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    num_actors: int | None = None
    threads: int | None = None
    in_flight: int = 2
    max_retries: int = 3
    ship_checkpoints: bool = True
    ship_dataset_max_mb: float = 256.0
    keep_models: int = 2
    start_timeout_s: float = 300.0
    start_grace_s: float = 10.0
    report_interval_s: float = 0.5

    def __post_init__(self) -> None:
        for key in ("cpus_per_actor", "max_retries", "ship_dataset_max_mb"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"runner.{key}={getattr(self, key)} must be ≥ 0")
        for key in ("in_flight", "keep_models"):
            if getattr(self, key) < 1:
                raise ConfigError(f"runner.{key}={getattr(self, key)} must be ≥ 1")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"runner.gpus_per_actor={self.gpus_per_actor} must be ≥ 0 (0.5 packs two per GPU)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"runner.threads={self.threads} must be ≥ 1, or null for the actor's CPU share")
        if self.start_grace_s < 0 or self.start_timeout_s <= 0:
            raise ConfigError("runner.start_grace_s must be ≥ 0 and runner.start_timeout_s > 0")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"runner.num_actors={self.num_actors} must be ≥ 1, or null for what the cluster fits")
        if self.address not in (None, "local", "auto", "env") and not (
                "://" in str(self.address) or ":" in str(self.address)):
            raise ConfigError(f"runner.address={self.address!r}: use null (private instance), auto, env, "
                              "host:port or ray://host:port")
        self._actors: list[_Actor] = []
        self._warm: list[tuple[str, dict[str, Any]]] = []
        self.attempts: dict[str, int] = {}
        self.worker_info: list[dict[str, Any]] = []

    # -- the runner protocol ---------------------------------------------------------------
    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        if not tasks:
            return
        private = self.address in (None, "local")
        ray = _import_ray(private)
        with keeping_handlers():  # ray.init's own SIGTERM handler would exit without a word (engine/sweep.py)
            owned = self._connect(ray, private)
        self._actors, self.attempts, self.worker_info = [], {}, []
        self._limiters: dict[str, tuple[Any, int]] = {}
        sink = None
        before: dict[str, float] = {}
        try:
            before = ray.available_resources()
            sink = _sink_class(ray).options(scheduling_strategy=_on_driver_node(ray),
                                            runtime_env={"env_vars": dict(NICENESS_ENV)}).remote()
            self._limiters = _remote_limiters(ray, tasks)  # one per remote target, shared by every actor
            shipped = self._ship(ray, tasks, ctx)
            self._warm = list({stable_hash([t.perturbation_name, t.perturbation]): (t.perturbation_name,
                                                                                  dict(t.perturbation))
                               for t in tasks}.values())
            self._start_actors(ray, sink, self._actor_count(ray, len(tasks)))
            yield from self._drive(ray, TaskQueue(tasks), shipped, ctx, sink)
            self.worker_info = self._collect_info(ray)
        finally:
            _sync_limiters(ray, self._limiters)
            limiter_handles = [handle for handle, _ in self._limiters.values()]
            self._limiters = {}
            for handle in [a.handle for a in self._actors] + ([sink] if sink is not None else []) + limiter_handles:
                try:
                    ray.kill(handle, no_restart=True)
                except Exception as exc:  # already gone with its node; never mask the sweep's own error
                    log.debug("could not kill an actor: %s", exc)
            if owned:
                ray.shutdown()
            else:
                _await_release(ray, before)

    def workers(self) -> list[dict[str, Any]]:
        """Name, pid, device of each live, started actor (for tests and diagnostics)."""
        return [{**a.info, "name": a.name, "device": a.device, "inflight": len(a.inflight)}
                for a in self._actors if a.alive and a.ready]

    # -- where it runs ---------------------------------------------------------------------
    def _connect(self, ray: Any, private: bool) -> bool:
        """Start a private instance or join the configured cluster; True when this runner owns it."""
        if ray.is_initialized():
            log.info("runner=ray: using the Ray instance this process is already connected to")
            return False
        if private:
            if os.environ.get("RAY_ADDRESS"):
                log.warning("RAY_ADDRESS is set but runner.address is null: starting a private Ray instance; "
                            "use runner.address=env (or =auto) to join that cluster")
            num_cpus = self.num_cpus if self.num_cpus is not None else os.cpu_count() or 1
            num_gpus = self.num_gpus if self.num_gpus is not None else torch.cuda.device_count()
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     object_store_memory=self.object_store_memory, include_dashboard=False,
                     log_to_driver=True)
            log.info("runner=ray: private Ray instance with %s CPU(s), %s GPU(s)", num_cpus, num_gpus)
            return True
        address = os.environ.get("RAY_ADDRESS") if self.address == "env" else self.address
        if not address:
            raise ConfigError("runner.address=env but RAY_ADDRESS is not set; export it or give the address")
        self._join(ray, address)
        log.info("runner=ray: joined the Ray cluster at %s: %s", address, ray.cluster_resources())
        return True

    def _join(self, ray: Any, address: str) -> None:
        """``ray.init(address)``; a Ray Client (ray://) join is tried JOIN_ATTEMPTS times, because its
        server-side session start is known to fail transiently (ray-project/ray#21625, seen here once)."""
        attempts = JOIN_ATTEMPTS if address.startswith("ray://") else 1
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=address, log_to_driver=True)
                return
            except (ConnectionError, ValueError, RuntimeError) as exc:
                if attempt == attempts:
                    raise ConfigError(
                        f"runner.address={self.address!r}: cannot join a Ray cluster ({exc}). Start one with "
                        "`ray start --head`, or use runner.address=null for a private instance") from None
                log.warning("runner=ray: joining %s failed (attempt %d of %d: %s); retrying in %g s",
                            address, attempt, attempts, str(exc).splitlines()[0], JOIN_RETRY_S * attempt)
                if ray.is_initialized():
                    ray.shutdown()
                time.sleep(JOIN_RETRY_S * attempt)

    def _shape(self, ray: Any) -> tuple[float, float, int]:
        """(GPUs, CPUs, threads) of each actor, nulls resolved: GPU actors take 1 CPU and 1 thread; CPU
        actors take ``threads`` CPUs, where a null ``threads`` is ``default_threads()``, the count
        ``runner=local`` uses, so the two runners give identical rows (README, "Running on a cluster")."""
        gpus = float(ray.available_resources().get("GPU", 0.0))
        gpa = self.gpus_per_actor if self.gpus_per_actor is not None else (1.0 if gpus > 0 else 0.0)
        if gpa > 0 and gpus <= 0:
            raise ConfigError(f"runner.gpus_per_actor={gpa:g} but the Ray cluster has no free GPU (an actor would "
                              "wait forever); use runner.gpus_per_actor=0 for CPU actors")
        if self.cpus_per_actor is not None:
            cpa = self.cpus_per_actor
        elif gpa > 0:
            cpa = 1.0
        else:
            cpa = float(self.threads if self.threads is not None else self._cpu_actor_threads(ray))
        threads = self.threads if self.threads is not None else max(1, int(cpa))
        return gpa, cpa, threads

    def _cpu_actor_threads(self, ray: Any) -> int:
        """``default_threads()``, or the CPUs of the cluster's biggest node when no node has that many."""
        want = default_threads()
        nodes = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
        biggest = int(max(nodes, default=want))
        if 1 <= biggest < want:
            log.warning("runner=ray: CPU actors get %d thread(s), the most any node has; runner=local uses %d, so "
                        "rows may differ from it in the last bits (set runner.threads on both to match)",
                        biggest, want)
            return biggest
        return want

    def _actor_count(self, ray: Any, n_tasks: int) -> int:
        gpa, cpa, threads = self._shape(ray)
        self._gpa, self._cpa, self._threads = gpa, cpa, threads
        avail = ray.available_resources()
        gpus, cpus = float(avail.get("GPU", 0.0)), float(avail.get("CPU", 0.0))
        fits = min(math.floor(gpus / gpa + 1e-9) if gpa else math.inf,
                   math.floor(cpus / cpa + 1e-9) if cpa else math.inf)
        if fits == math.inf:
            raise ConfigError("runner.cpus_per_actor=0 and gpus_per_actor=0: set runner.num_actors")
        if self.num_actors is not None:
            if self.num_actors > fits:
                raise ConfigError(
                    f"runner.num_actors={self.num_actors} but the cluster fits {fits} actor(s) of "
                    f"{cpa:g} CPU + {gpa:g} GPU (free: {cpus:g} CPU, {gpus:g} GPU); "
                    f"use runner.num_actors≤{fits} or smaller runner.cpus_per_actor/gpus_per_actor")
            return self.num_actors
        if fits < 1:
            raise ConfigError(f"the Ray cluster has no room for one actor of {cpa:g} CPU + "
                              f"{gpa:g} GPU (free: {cpus:g} CPU, {gpus:g} GPU); lower runner.cpus_per_actor")
        return int(min(fits, n_tasks))

    # -- what travels once -----------------------------------------------------------------
    def _ship(self, ray: Any, tasks: Sequence[Task], ctx: RunContext) -> dict[str, Shipped]:
        """Put each checkpoint's bytes and the (small) dataset into the object store once, per model."""
        ckpts: dict[str, Any] = {}
        if self.ship_checkpoints:
            for t in {t.checkpoint_sha256: t for t in tasks if not is_remote(t.model)}.values():
                ckpts[t.checkpoint_sha256] = ray.put(_read_checkpoint(t))
        datasets: dict[str, tuple[Any, str]] = {}
        res = ctx.resources if ctx.resources is not None else Resources(torch.device("cpu"))
        for t in {stable_hash(t.dataset): t for t in tasks}.values():
            key = stable_hash(t.dataset)
            data = res.dataset(t.dataset)
            if not isinstance(data, SampleSet):  # decoded on demand: each worker reads only its shards' rows
                log.info("dataset %s is read from its files by each worker (only the rows of its tasks)",
                         t.dataset_name)
                continue
            stop = max(u.stop for u in tasks if stable_hash(u.dataset) == key)
            prefix = data.slice(0, stop)
            mb = prefix.images.element_size() * prefix.images.nelement() / MiB
            if mb <= self.ship_dataset_max_mb:
                datasets[key] = (ray.put(prefix), key)
            else:
                log.info("dataset %s: %.0f MiB > runner.ship_dataset_max_mb=%g; each worker reads it from its path",
                         t.dataset_name, mb, self.ship_dataset_max_mb)
        out = {}
        for t in tasks:
            ref, key = datasets.get(stable_hash(t.dataset), (None, ""))
            out[t.task_id] = Shipped(ckpts.get(t.checkpoint_sha256), ref, key)
        return out

    # -- actors ----------------------------------------------------------------------------
    def _start_actors(self, ray: Any, sink: Any, n: int) -> None:
        self._sink, self._n_started, self._n_initial, self._open = sink, 0, n, False
        self._cls = _actor_class(ray)
        log.info("runner=ray: starting %d actor(s) of %g CPU + %g GPU (%d thread(s)), %d task(s) in flight each",
                 n, self._cpa, self._gpa, self._threads, self.in_flight)
        for _ in range(n):
            self._spawn(ray)

    def _spawn(self, ray: Any) -> _Actor:
        name = f"ray-{self._n_started}"
        self._n_started += 1
        threads = self._threads
        env = {**{k: str(threads) for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
               **NICENESS_ENV}
        handle = self._cls.options(
            num_cpus=self._cpa, num_gpus=self._gpa, max_restarts=0, max_task_retries=0,
            scheduling_strategy="SPREAD", runtime_env={"env_vars": env},
        ).remote(name, threads, self._sink, self.report_interval_s, self.keep_models, self._warm, self._limiters)
        actor = _Actor(name, handle, handle.info.remote(), time.monotonic())
        self._actors.append(actor)
        return actor

    def _collect_info(self, ray: Any) -> list[dict[str, Any]]:
        """Each reachable actor's info; one that cannot answer (its node gone since its last task) is left out
        rather than emptying the list (diagnostics only: never fail a finished sweep over them)."""
        refs = [a.handle.info.remote() for a in self._actors if a.alive and a.ready]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30) if refs else ([], [])
        info = []
        for ref in ready:
            try:
                info.append(ray.get(ref))
            except Exception as exc:
                log.debug("could not collect an actor's info: %s", exc)
        return info

    # -- the dispatch loop -----------------------------------------------------------------
    def _drive(self, ray: Any, queue: TaskQueue, shipped: dict[str, Shipped], ctx: RunContext,
               sink: Any) -> Iterator[TaskResult]:
        lost = _retryable(ray)
        owner: dict[Any, _Actor] = {}
        self._drain_ref: Any = None
        last_drain = time.monotonic()
        while len(queue) or any(a.inflight for a in self._actors):
            self._fill(queue, shipped, owner, ctx)
            waiting = [a.ready_ref for a in self._actors if a.alive and not a.ready] + list(owner)
            self._check_stalled(queue)
            if not waiting:  # only idle actors held back by start_grace_s: nothing to wait on yet
                time.sleep(TICK_S)
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=TICK_S)
            if time.monotonic() - last_drain >= TICK_S:
                self._drain(ray, sink, ctx)
                last_drain = time.monotonic()
            for ref in ready:
                if ref in owner:
                    yield from self._on_result(ray, ref, owner, queue, ctx, lost)
                else:
                    self._on_ready(ray, ref, queue, ctx, lost)

    def _fill(self, queue: TaskQueue, shipped: dict[str, Shipped], owner: dict[Any, _Actor],
              ctx: RunContext) -> None:
        live = [a for a in self._actors if a.alive and a.ready]
        if not self._dispatch_open(live):
            return
        for actor in live:
            while len(actor.inflight) < self.in_flight:
                on: dict[str, int] = {}
                for a in live:
                    if a.model is not None:
                        on[a.model] = on.get(a.model, 0) + 1
                task = queue.take(actor.model, on)
                if task is None:
                    return
                attempt = self.attempts.get(task.task_id, 0) + 1
                self.attempts[task.task_id] = attempt
                ref = actor.handle.run.remote(task, attempt, shipped[task.task_id])
                if not actor.inflight:
                    ctx.events.task_started(task, actor.name)
                actor.inflight.append((ref, task, attempt))
                actor.model = task.model_name
                owner[ref] = actor

    def _dispatch_open(self, live: list[_Actor]) -> bool:
        """Hold the first tasks until every initial actor is up (or ``start_grace_s`` after the first),
        so work and models spread over the whole pool instead of the first actor to start."""
        if self._open:
            return True
        if not live:
            return False
        first = min(a.ready_at for a in live)
        self._open = len(live) >= self._n_initial or time.monotonic() - first >= self.start_grace_s
        return self._open

    def _on_ready(self, ray: Any, ref: Any, queue: TaskQueue, ctx: RunContext,
                  lost: tuple[type[BaseException], ...]) -> None:
        actor = next(a for a in self._actors if a.ready_ref == ref)  # ==: Ray Client hands back new ref objects
        try:
            info = ray.get(ref)
        except lost as exc:
            actor.alive = False
            log.warning("actor %s died while starting (%s)", actor.name, type(exc).__name__)
            self._replace(ray)
            return
        actor.ready, actor.device, actor.ready_at = True, str(info["device"]), time.monotonic()
        actor.info = dict(info)
        if int(info.get("nice", 0)) > os.nice(0) and not any(a.info.get("nice") == info["nice"]
                                                             for a in self._actors if a is not actor):
            log.warning("runner=ray: actor %s runs at nice %s, this driver at %d: on a busy machine it gets only "
                        "what the other processes leave (its raylet was started niced)", actor.name,
                        info["nice"], os.nice(0))
        ctx.events.worker_ready(actor.name, actor.device)

    def _on_result(self, ray: Any, ref: Any, owner: dict[Any, _Actor], queue: TaskQueue, ctx: RunContext,
                   lost: tuple[type[BaseException], ...]) -> Iterator[TaskResult]:
        actor = owner.pop(ref)
        entry = next(e for e in actor.inflight if e[0] == ref)
        task = entry[1]
        try:
            result = ray.get(ref)
        except lost as exc:
            self._lose(ray, actor, owner, queue, ctx, f"its worker {actor.name} was lost ({type(exc).__name__})")
            return
        except ray.exceptions.RayTaskError as exc:
            yield from self._finished_elsewhere(ray, owner)
            raise _task_error(exc, task, actor) from None
        actor.inflight.remove(entry)
        if actor.inflight:
            ctx.events.task_started(actor.inflight[0][1], actor.name)
        yield result

    def _lose(self, ray: Any, actor: _Actor, owner: dict[Any, _Actor], queue: TaskQueue, ctx: RunContext,
              reason: str) -> None:
        """The actor is gone: requeue its tasks (front of their model's queue) and start a replacement."""
        actor.alive = False
        ray.kill(actor.handle, no_restart=True)
        for ref, task, _ in reversed(actor.inflight):
            owner.pop(ref, None)
            if self.attempts.get(task.task_id, 0) > self.max_retries:
                raise GauntletError(f"{task.describe()} (task {task.task_id}) lost its worker "
                                    f"{self.attempts[task.task_id]} times; giving up (runner.max_retries="
                                    f"{self.max_retries}). Last: {reason}")
            queue.put_back(task)
            ctx.events.task_retried(task, reason)
        actor.inflight.clear()
        self._replace(ray)

    def _replace(self, ray: Any) -> None:
        """Start a replacement actor (it gets work once ready), at most ``max_retries`` per initial actor."""
        if self._n_started < self._n_initial * (1 + self.max_retries):
            self._spawn(ray)

    def _check_stalled(self, queue: TaskQueue) -> None:
        if not len(queue) or any(a.alive and a.ready for a in self._actors):
            return
        pending = [a for a in self._actors if a.alive and not a.ready]
        oldest = min((a.started for a in pending), default=time.monotonic() - self.start_timeout_s - 1)
        if time.monotonic() - oldest > self.start_timeout_s:
            raise GauntletError(
                f"no Ray actor is running and none started within runner.start_timeout_s={self.start_timeout_s:g} s "
                f"({len(queue)} task(s) left): the cluster lacks room for an actor of {self._cpa:g} CPU + "
                f"{self._gpa:g} GPU. Re-run the same command to resume once it has.")

    def _drain(self, ray: Any, sink: Any, ctx: RunContext) -> None:
        """Collect the workers' batched progress reports: one request at a time, picked up on a later tick
        once answered, so a slow progress sink (a busy machine) never holds up results. Reports of tasks
        that have finished meanwhile are void (the result counts them)."""
        if self._drain_ref is None:
            self._drain_ref = sink.drain.remote()
        ready, _ = ray.wait([self._drain_ref], num_returns=1, timeout=0)
        if not ready:
            return
        ref, self._drain_ref = self._drain_ref, None
        try:
            reports = ray.get(ref)
        except Exception as exc:  # progress only; results still arrive
            log.debug("progress reports unavailable: %s", exc)
            return
        current = {(t.task_id, att): t for a in self._actors if a.alive for _, t, att in a.inflight}
        for key, (spent, skipped, samples, seconds) in reports.items():
            task = current.get(key)
            if task is not None:
                ctx.on_work(task, int(spent), int(skipped), int(samples), float(seconds))

    def _finished_elsewhere(self, ray: Any, owner: dict[Any, _Actor]) -> Iterator[TaskResult]:
        """Before failing fast, hand over results that are already complete so the driver writes them."""
        refs = list(owner)
        if not refs:
            return
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            try:
                yield ray.get(ref)
            except Exception:  # failing anyway: only complete results are worth keeping
                continue


def _await_release(ray: Any, before: dict[str, float], timeout_s: float = 15.0) -> None:
    """On a shared instance, wait until our killed actors' CPUs/GPUs are free again (Ray frees them
    asynchronously), so the next sweep in this process sizes its pool from the true free resources."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = ray.available_resources()
        if all(now.get(k, 0.0) >= before.get(k, 0.0) - 1e-9 for k in ("CPU", "GPU")):
            return
        time.sleep(0.1)


def _on_driver_node(ray: Any) -> Any:
    """Keep the progress sink beside the driver (a lost worker node must not take it along)."""
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    except Exception:  # Ray Client and older Rays: anywhere will do
        return "DEFAULT"


def _read_checkpoint(task: Task) -> bytes:
    path = Path(str(task.model["checkpoint"])).expanduser()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != task.checkpoint_sha256:
        raise CheckpointError(f"model {task.model_name!r}: checkpoint {path} changed since the sweep was "
                              "planned (sha256 differs); re-run to re-plan")
    return data


def _task_error(exc: Any, task: Task, actor: _Actor) -> Exception:
    """A task's own error (deterministic: not retried), naming the task and the worker."""
    cause = getattr(exc, "cause", None)
    where = f"{task.describe()} (task {task.task_id}) failed on {actor.name} [{actor.device}]"
    if isinstance(cause, GauntletError):
        return GauntletError(f"{where}: {cause}")
    return RuntimeError(f"{where}:\n{exc}")


def _sink_class(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class ProgressSink:
        """Collects workers' progress reports; the driver drains them every tick."""

        def __init__(self) -> None:
            self.pending: dict[tuple[str, int], tuple[int, int, int, float]] = {}

        def report(self, task_id: str, attempt: int, spent: int, skipped: int, samples: int, seconds: float) -> None:
            key = (task_id, attempt)
            a, b, c, d = self.pending.get(key, (0, 0, 0, 0.0))
            self.pending[key] = (a + spent, b + skipped, c + samples, d + seconds)

        def drain(self) -> dict[tuple[str, int], tuple[int, int, int, float]]:
            out, self.pending = self.pending, {}
            return out

    return ProgressSink


def _actor_class(ray: Any) -> Any:
    @ray.remote
    class GauntletWorker:
        """A Ray actor around ``engine.runners.ray_worker.Worker``."""

        def __init__(self, name: str, threads: int, sink: Any, interval: float, keep_models: int,
                     perturbations: list[tuple[str, dict[str, Any]]], limiters: dict[str, Any] | None = None) -> None:
            def report(task_id: str, attempt: int, spent: int, skipped: int, samples: int, seconds: float) -> None:
                sink.report.remote(task_id, attempt, spent, skipped, samples, seconds)

            for key, (handle, concurrency) in (limiters or {}).items():  # remote targets: one limiter per run
                install_limiter(key, RayLimiterProxy(ray, handle, concurrency))

            self.worker = Worker(name, threads, list(ray.get_gpu_ids()), report, ray.get, interval, keep_models,
                                 perturbations)

        def info(self) -> dict[str, Any]:
            return {**self.worker.info(), "node_id": ray.get_runtime_context().get_node_id()}

        def run(self, task: Task, attempt: int, shipped: Shipped) -> TaskResult:
            return self.worker.run(task, attempt, shipped)

    return GauntletWorker


# -- remote targets: one limiter actor per target holds the run's budget, rate and concurrency --------------------
def _limiter_class(ray: Any) -> Any:
    @ray.remote(num_cpus=0, max_concurrency=1000)  # threaded: slots block in acquire, never the actor
    class RemoteLimiter:
        """A ``LocalLimiter`` that every worker of the run shares (it writes the run folder's spend file)."""

        def __init__(self, run_budget: int | None, rate: float | None, concurrency: int, spent: int,
                     spent_file: str | None, lease_s: float) -> None:
            self.limiter = LeasedLimiter(run_budget, rate, concurrency, already_spent=spent, spent_file=spent_file,
                                         lease_s=lease_s)

        def reserve(self, rows: int) -> str | None:
            try:
                self.limiter.reserve(rows)
            except QueryBudgetExhausted as exc:
                return str(exc)
            return None

        def refund(self, rows: int) -> None:
            self.limiter.refund(rows)

        def spent(self) -> int:
            return self.limiter.spent()

        def acquire(self) -> int:
            return self.limiter.acquire_lease()

        def release(self, token: int) -> None:
            self.limiter.release_lease(token)

        def throttle(self, seconds: float) -> None:
            self.limiter.throttle(seconds)

        def relax(self) -> None:
            self.limiter.relax()

    return RemoteLimiter


class RayLimiterProxy:
    """The ``Limiter`` a worker's oracle holds under Ray: every call goes to the run's one limiter actor."""

    def __init__(self, ray: Any, handle: Any, concurrency: int) -> None:
        self._ray, self._handle = ray, handle
        self.concurrency = concurrency  # threads one oracle may send from (the actor caps the run's total)

    def reserve(self, rows: int) -> None:
        refused = self._ray.get(self._handle.reserve.remote(rows))
        if refused:
            raise QueryBudgetExhausted(refused)

    def refund(self, rows: int) -> None:
        self._ray.get(self._handle.refund.remote(rows))

    def spent(self) -> int:
        return int(self._ray.get(self._handle.spent.remote()))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        token = self._ray.get(self._handle.acquire.remote())
        try:
            yield
        finally:
            self._handle.release.remote(token)

    def throttle(self, seconds: float) -> None:
        self._handle.throttle.remote(seconds)

    def relax(self) -> None:
        self._handle.relax.remote()


def _remote_limiters(ray: Any, tasks: Sequence[Task]) -> dict[str, tuple[Any, int]]:
    """One limiter actor per remote target of ``tasks``, on the driver node, starting from the driver's spend."""
    out: dict[str, Any] = {}
    for task in tasks:
        if not is_remote(task.model):
            continue
        key = target_key(task.model_name, task.model)
        if key in out:
            continue
        block = remote_settings(task.model_name, task.model)
        driver = installed_limiter(key)
        spent = driver.spent() if driver is not None else 0
        spent_file = getattr(driver, "spent_file", None)
        concurrency = int(block.get("concurrency") or 4)
        lease_s = 2 * float(block.get("timeout_s", 10.0)) + 30.0  # a slot is held for one request at most
        handle = _limiter_class(ray).options(scheduling_strategy=_on_driver_node(ray)).remote(
            block.get("run_budget"), block.get("rate_limit"), concurrency, spent, spent_file, lease_s)
        out[key] = (handle, concurrency)
    return out


def _sync_limiters(ray: Any, limiters: dict[str, tuple[Any, int]]) -> None:
    """After the run: the driver's limiter takes each actor's total (sanity probes and later runs count on)."""
    for key, (handle, _) in limiters.items():
        driver = installed_limiter(key)
        try:
            spent = int(ray.get(handle.spent.remote(), timeout=30))
        except Exception as exc:  # the actor is gone: its spend file has the total
            log.warning("remote target %s: could not read the run's spend from its limiter (%s)", key, exc)
            continue
        if isinstance(driver, LocalLimiter):
            driver.resync(spent)
