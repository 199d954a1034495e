"""The attacker's inputs: the test split the copy is judged on, and the query set it is stolen with.

Query sets: ``train`` (the victim's own distribution: the dataset config's train split), ``synthetic`` (seeded
uniform noise of the test images' shape), or any dataset config name (another data set; its labels are never
used for the copy). Rows are taken in a seeded order, so budget B uses the first B queries of one fixed
sequence and a larger budget only adds queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from engine.compose.config import compose_sweep
from engine.data import SampleSet
from engine.data.fingerprint import identity_of
from engine.errors import ConfigError
from engine.evaluation.resources import build_dataset
from engine.planning.sweep_targets import check_sweep_targets
from engine.seeding import derive_seed, stable_hash


@dataclass(frozen=True)
class QuerySet:
    """The first ``len(images)`` queries in order; ``labels`` are the true labels where known (None otherwise)."""

    kind: str
    images: torch.Tensor
    labels: torch.Tensor | None
    identity: str  # digest of what the sequence is drawn from and how (never of the budgets)
    available: int  # rows the source holds: the largest budget it can serve


def compose(models: list[str], dataset: str, seed: int, locations: Mapping[str, str]) -> dict[str, Any]:
    """The sweep config for these models and dataset (locations applied), every ``_target_`` checked."""
    over = [f"model=[{','.join(dict.fromkeys(models))}]", f"dataset={dataset}", "perturbation=[clean]",
            f"seed={seed}"] + [f"{k}={v}" for k, v in locations.items()]
    try:
        cfg = compose_sweep(tuple(over))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"cannot compose model(s) {models} with dataset {dataset!r}: {first}") from None
    check_sweep_targets(cfg)
    return cfg


def test_split(cfg: Mapping[str, Any], n_test: int) -> tuple[SampleSet, str]:
    """The first ``n_test`` rows (0: all) of the dataset config as composed, and their identity."""
    data = build_dataset(cfg["dataset"])
    n = len(data) if n_test == 0 else n_test
    if n > len(data):
        raise ConfigError(f"n_test={n_test} but the test split of {data.name!r} holds {len(data)} samples")
    ident = stable_hash([identity_of(data, cfg.get("cache_dir"))["digest"], n])
    return data.slice(0, n), ident


def _train_split(cfg: Mapping[str, Any]) -> Any:
    dcfg = dict(cfg["dataset"])
    if "split" not in dcfg:
        raise ConfigError(f"dataset {dcfg.get('_target_')} has no train split (no split: key); give the query set "
                          "as another dataset config (queries=npz queries.path=…) or queries=synthetic")
    dcfg["split"] = "train"
    return build_dataset(dcfg)


def _ordered(data: Any, n: int, seed: int, kind: str, cache_dir: Any) -> QuerySet:
    order = np.random.default_rng(derive_seed(seed, "extract-queries")).permutation(len(data))[:n]
    rows = data.take(order)
    ident = stable_hash([kind, identity_of(data, cache_dir)["digest"], seed])
    return QuerySet(kind, rows.images, rows.labels, ident, len(data))


SYNTHETIC_MAX_BYTES = 2 << 30  # the noise is generated in memory: refuse a budget that would not fit


def synthetic(shape: tuple[int, int, int], n: int, seed: int) -> QuerySet:
    """Uniform noise in [0, 1]: the attacker with no data at all."""
    size = 4 * n * shape[0] * shape[1] * shape[2]
    if size > SYNTHETIC_MAX_BYTES:
        raise ConfigError(f"queries=synthetic with a largest budget of {n} queries would take {size / 2**30:.1f} GiB "
                          f"of generated images (limit {SYNTHETIC_MAX_BYTES / 2**30:.0f} GiB); lower the budgets")
    gen = torch.Generator().manual_seed(derive_seed(seed, "extract-synthetic"))
    images = torch.rand((n, *shape), generator=gen)
    return QuerySet("synthetic", images, None, stable_hash(["synthetic", list(shape), seed]), 1 << 62)


def query_set(settings: Any, cfg: Mapping[str, Any], shape: tuple[int, int, int], n: int) -> QuerySet:
    """The first ``n`` queries of the run's sequence; refused when the source holds fewer than ``n``."""
    kind = settings.queries
    if kind == "synthetic":
        return synthetic(shape, n, settings.seed)
    if kind == "train":
        data = _train_split(cfg)
    else:
        located = {k.replace("queries.", "dataset.", 1): v for k, v in settings.locations.items()
                   if k.startswith("queries.")}
        data = build_dataset(compose([settings.target], kind, settings.seed, located)["dataset"])
    if tuple(data.image_shape) != tuple(shape):
        raise ConfigError(f"queries={kind}: its images are {tuple(data.image_shape)} but the target's test images "
                          f"are {tuple(shape)}; the copy is trained and judged on one image size")
    if n > len(data):
        raise ConfigError(f"budgets up to {n} queries but the query set {kind!r} ({data.name}) holds {len(data)} "
                          f"images; lower the largest budget, or use a larger query set (queries=<dataset config>, "
                          "queries=synthetic)")
    return _ordered(data, n, settings.seed, kind, cfg.get("cache_dir"))


def baseline_set(cfg: Mapping[str, Any], n: int, seed: int) -> tuple[QuerySet | None, str]:
    """Labelled victim-distribution data for the independent model (never sent to the target), or why not.

    The baseline of the transfer comparison is a model of the copy's architecture trained on true labels of
    the victim's train split (as many as the largest budget, when the split holds them).
    """
    try:
        data = _train_split(cfg)
    except ConfigError as exc:
        return None, f"no independent model: {exc}"
    return _ordered(data, min(n, len(data)), seed, "baseline", cfg.get("cache_dir")), ""
