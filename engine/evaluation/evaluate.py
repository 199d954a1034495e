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
from engine.perturbations.base import BatchContext, LevelOutput, worst_of

ProgressFn = Callable[[int], None]


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
    }


def evaluate(task: Task, res: Resources, on_batch: ProgressFn | None = None) -> TaskResult:
    """Run ``task`` and return its verified per-sample rows, sorted by (level, sample_id).

    Every perturbed batch passes ``verify_batch`` and every logit matrix
    ``check_logits`` before a row is recorded; a failure raises and nothing of
    this task is returned. A perturbation with ``score_draws`` R > 1 (an attack
    suite on a randomised model) has each example classified R times: the row
    records the draw with the smallest margin, so it is correct only if all are.
    """
    started = time.perf_counter()
    model = res.model(task.model_name, task.model)
    data = res.dataset(task.dataset).slice(task.start, task.stop)
    pert = res.perturbation(task.perturbation_name, task.perturbation)
    chunks: list[dict[str, np.ndarray]] = []
    default_breaker = pert.name if pert.family == "attack" else ""
    keep = ExampleCollector(task.save_examples, task.examples_cap, pert.family)  # save_examples (none: a no-op)
    quantize = task.quantize != "none" and pert.family == "attack"
    for b0 in range(0, len(data), task.batch_size):
        batch = data.slice(b0, b0 + task.batch_size)
        x = batch.images.to(res.device)
        y = batch.labels.to(res.device)
        ctx = BatchContext(model=model, seed=task.seed, sample_ids=batch.sample_ids)
        for out in pert.run(x, y, ctx):
            sizes = verify_batch(pert, out.level, x, out.x)
            float_correct = None
            if quantize:  # quantize: uint8 | uint16 (engine/evaluation/quantize.py): rows score the grid example
                out, sizes, float_correct = on_grid(out, x, y, pert, model, task.quantize)
            # a randomised model's example counts as correct only when every one of these draws classifies it so
            logits, _ = worst_of(model, out.x, y, pert.score_draws)
            check_logits(logits, len(y), data.num_classes, task.model_name,
                         f"{pert.name} level {out.level:g}")
            row = _rows(out, logits, y, batch.sample_ids, sizes, default_breaker)
            if float_correct is not None:
                row["float_correct"] = float_correct.numpy()
            keep.add(out.level, x, out.x, row)
            chunks.append(row)
        if on_batch is not None:
            on_batch(len(batch))
    columns = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((columns["sample_id"], columns["level"]))
    columns = {k: v[order] for k, v in columns.items()}
    return TaskResult(task, columns, pert.family, pert.norm, time.perf_counter() - started, str(res.device),
                      examples=keep.finish(tuple(data.image_shape)))
