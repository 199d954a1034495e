"""The one loop that calls a model and a perturbation: perturb, verify, classify, record per sample."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from engine.evaluation.checks import check_logits, verify_batch
from engine.evaluation.examples import ExampleCollector
from engine.evaluation.quantize import on_grid
from engine.evaluation.resources import Resources
from engine.evaluation.tasks import Task, TaskResult
from engine.perturbations.base import BatchContext, LevelOutput, Perturbation, worst_of
from engine.remote.accounting import stats_mark, stats_since
from engine.remote.api import RemoteError, oracle_of

ProgressFn = Callable[[int], None]
WorkFn = Callable[[int, int], None]  # (evals spent, planned evals found unnecessary) since the last call


class _LevelAccount:
    """Progress of one level of one batch: what the perturbation reported while it ran (a suite, per member
    and iteration), then settled from the level's real cost, so every level books exactly its plan: evals
    spent (``grad_evals`` + ``queries`` of an attack, one classification per sample otherwise) and the rest
    of its planned evals as unnecessary. A perturbation that reports nothing is counted here alone."""

    def __init__(self, on_work: WorkFn) -> None:
        self.on_work, self.spent, self.skipped = on_work, 0, 0

    def report(self, spent: int, skipped: int) -> None:
        self.spent += spent
        self.skipped += skipped
        self.on_work(spent, skipped)

    def settle(self, pert: Perturbation, out: LevelOutput, n: int) -> None:
        planned = n * max(1, pert.planned_evals)
        actual = int(out.grad_evals.sum()) + int(out.queries.sum()) if pert.family == "attack" else planned
        spent, skipped = actual - self.spent, max(0, planned - actual) - self.skipped
        if spent or skipped:
            self.on_work(spent, skipped)
        self.spent = self.skipped = 0


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit (> 0 ⇔ correct, barring ties)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


def _rows(out: LevelOutput, logits: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
          sizes: torch.Tensor, default_breaker: str) -> dict[str, np.ndarray]:
    pred = logits.argmax(dim=1)
    correct = pred == y
    n = len(ids)
    if out.broken_by is not None:
        breaker = np.asarray(out.broken_by, dtype=object)
    else:
        breaker = np.full(n, default_breaker, dtype=object)
    # Only a misclassified sample whose input was actually changed was "broken" by anything: the
    # engine's own classification decides, whatever the perturbation claimed.
    breaker = np.where(correct.cpu().numpy() | (sizes.numpy() == 0), "", breaker)
    return {
        "sample_id": ids.numpy().astype(np.int64),
        "label": y.cpu().numpy().astype(np.int64),
        "level": np.full(n, out.level, dtype=np.float64),
        "pred": pred.cpu().numpy().astype(np.int64),
        "correct": correct.cpu().numpy(),
        "margin": margins(logits, y).double().cpu().numpy(),
        "perturbation_size": sizes.numpy(),
        "broken_by": breaker,
        "grad_evals": out.grad_evals.cpu().numpy().astype(np.int64),
        "queries": out.queries.cpu().numpy().astype(np.int64),
        "queries_to_success": _to_success(out, correct, n),
    }


def _to_success(out: LevelOutput, correct: torch.Tensor, n: int) -> np.ndarray:
    """Queries to success per row (query-based attacks), None where the sample was not broken: the attack's
    count stands only where the engine's own classification agrees that the example is misclassified."""
    q = out.queries_to_success
    if q is None:
        return np.full(n, None, dtype=object)
    keep = (q.cpu() >= 0) & ~correct.cpu()
    return np.array([int(v) if k else None for v, k in zip(q.tolist(), keep.tolist(), strict=True)], dtype=object)


def evaluate(task: Task, res: Resources, on_batch: ProgressFn | None = None,
             on_work: WorkFn | None = None) -> TaskResult:
    """Run ``task`` and return its verified per-sample rows, sorted by (level, sample_id).

    Every perturbed batch passes ``verify_batch`` and every logit matrix
    ``check_logits`` before a row is recorded; a failure raises and nothing of
    this task is returned. A perturbation with ``score_draws`` R > 1 (an attack
    suite on a randomised model) has each example classified R times: the row
    records the draw with the smallest margin, so it is correct only if all are.
    ``on_batch``: samples done after each batch; ``on_work``: progress in evals within batches (``_LevelAccount``).
    """
    started = time.perf_counter()
    model = res.model(task.model_name, task.model)
    data = res.dataset(task.dataset).slice(task.start, task.stop)
    pert = res.perturbation(task.perturbation_name, task.perturbation)
    chunks: list[dict[str, np.ndarray]] = []
    default_breaker = pert.name if pert.family == "attack" else ""
    keep = ExampleCollector(task.save_examples, task.examples_cap, pert.family)  # save_examples (none: a no-op)
    surrogates = res.surrogates(pert)  # a transfer attack's source model(s); empty for every other perturbation
    account = _LevelAccount(on_work) if on_work is not None else None
    mark = stats_mark(oracle_of(model))
    excluded: list[int] = []
    for b0 in range(0, len(data), task.batch_size):
        batch = data.slice(b0, b0 + task.batch_size)
        x = batch.images.to(res.device)
        y = batch.labels.to(res.device)
        ctx = BatchContext(model=model, seed=task.seed, sample_ids=batch.sample_ids, surrogates=surrogates,
                           progress=account.report if account is not None else None)
        try:
            scored = _batch_rows(task, model, pert, ctx, x, y, data.num_classes, default_breaker, account)
        except RemoteError:
            if getattr(model, "on_error", "fail") != "skip":
                raise
            excluded += batch.sample_ids.tolist()  # on_error: skip: the batch's samples are excluded, counted
        else:
            chunks += [row for row, _ in scored]
            for row, x_pert in scored:  # only a batch whose every level was scored keeps examples
                keep.add(float(row["level"][0]), x, x_pert, row)
        if on_batch is not None:
            on_batch(len(batch))
    columns = _columns(chunks)
    remote = stats_since(oracle_of(model), mark)
    if remote is not None:
        remote.update(excluded=len(excluded), excluded_ids=excluded)
    return TaskResult(task, columns, pert.family, pert.norm, time.perf_counter() - started, str(res.device),
                      remote=remote, examples=keep.finish(tuple(data.image_shape)))


def _batch_rows(task: Task, model: torch.nn.Module, pert: Perturbation, ctx: BatchContext, x: torch.Tensor,
                y: torch.Tensor, num_classes: int, default_breaker: str,
                account: _LevelAccount | None = None) -> list[tuple[dict[str, np.ndarray], torch.Tensor]]:
    """Every level's verified rows for one batch, each with the inputs they scored (all or nothing: a failure
    mid-batch keeps none of them)."""
    out_rows = []
    quantize = task.quantize != "none" and pert.family == "attack"
    oracle = oracle_of(model)
    centre = x if oracle is None else oracle.sent(x)  # a remote target's ball is around the clean image it receives
    for out in pert.run(x, y, ctx):
        if account is not None:
            account.settle(pert, out, len(y))
        sizes = verify_batch(pert, out.level, x, out.x, ball=oracle is None)
        float_correct = None
        if quantize:  # quantize: uint8 | uint16 (engine/evaluation/quantize.py): rows score the grid example
            out, sizes, float_correct = on_grid(out, centre, y, pert, model, task.quantize)
        if oracle is not None:  # the ε ball checked on the pixels the endpoint receives
            sizes = verify_batch(pert, out.level, centre, oracle.sent(out.x))
        # a randomised model's example counts as correct only when every one of these draws classifies it so
        logits, _ = worst_of(model, out.x, y, pert.score_draws)
        check_logits(logits, len(y), num_classes, task.model_name, f"{pert.name} level {out.level:g}")
        row = _rows(out, logits, y, ctx.sample_ids, sizes, default_breaker)
        if float_correct is not None:
            row["float_correct"] = float_correct.numpy()
        out_rows.append((row, out.x))
    return out_rows


def _columns(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The task's rows sorted by (level, sample_id); no rows at all when every sample was excluded."""
    if not chunks:
        empty = {"sample_id": np.int64, "label": np.int64, "level": np.float64, "pred": np.int64, "correct": bool,
                 "margin": np.float64, "perturbation_size": np.float64, "broken_by": object,
                 "grad_evals": np.int64, "queries": np.int64}
        return {k: np.zeros(0, dtype=t) for k, t in empty.items()}
    columns = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((columns["sample_id"], columns["level"]))
    return {k: v[order] for k, v in columns.items()}
