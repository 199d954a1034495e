"""Turn a composed sweep config into tasks: validate everything, then list models × perturbations × shards."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engine.compose.config import schema_problems
from engine.compose.levels import Labels, check_units, normalize_levels
from engine.data.fingerprint import FileSource, identity_of, source_of
from engine.errors import ConfigError
from engine.evaluation.examples import DEFAULT_CAP, SAVE_MODES
from engine.evaluation.quantize import MODES as QUANTIZE_MODES
from engine.evaluation.resources import build_dataset, build_perturbation
from engine.evaluation.tasks import Task
from engine.models.fit import check_fits
from engine.models.loader import ensure_checkpoint
from engine.planning.remote_fit import check_remote_perturbations
from engine.planning.sweep_targets import check_sweep_targets
from engine.remote.model import is_remote, remote_identity
from engine.seeding import stable_hash

DoneFn = Callable[[str], bool]
ModelCheck = Callable[[str, Mapping[str, Any]], object]


@dataclass(frozen=True)
class Plan:
    """All tasks of the sweep, split into those still to run and those whose results exist.

    ``identity`` is the dataset's content identity (engine/data/fingerprint.py); its digest is part of
    every task id. ``keys`` holds each task's id key without it, so :meth:`task_id_for` can tell which
    ids the same tasks had on other data (a changed dataset, or rows written before identities).
    """

    run_id: str
    tasks: tuple[Task, ...]
    todo: tuple[Task, ...]
    identity: Mapping[str, Any] = field(default_factory=dict, compare=False)
    keys: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)
    source: FileSource | None = field(default=None, compare=False, repr=False)  # the files, for a re-check

    @property
    def done(self) -> tuple[Task, ...]:
        todo = {t.task_id for t in self.todo}
        return tuple(t for t in self.tasks if t.task_id not in todo)

    def task_id_for(self, task_id: str, data_digest: str | None) -> str:
        """The id task ``task_id`` has when the data's digest is ``data_digest`` (None: an id without one)."""
        return task_id_of(self.keys[task_id], data_digest)


def task_id_of(key: Mapping[str, Any], data_digest: str | None) -> str:
    """A task's id: its key (model, dataset config, perturbation, rows, seed) joined with the data's digest."""
    return stable_hash(dict(key) if data_digest is None else {**key, "data": data_digest}, 20)


def dataset_identity(dataset_cfg: Mapping[str, Any], cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The content identity of the dataset ``dataset_cfg`` builds (name, kind, source, sha256 ``digest``,
    the parts that explain a change); what task ids, ``sweep.json`` and verdicts name."""
    return identity_of(build_dataset(dict(dataset_cfg)), cache_dir)


def _positive(cfg: Mapping[str, Any], key: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def shard_ranges(n: int, shard_size: int | None) -> list[tuple[int, int]]:
    """Contiguous row ranges covering ``[0, n)``; one range when ``shard_size`` is None."""
    step = shard_size if shard_size else n
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def prepare(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], Labels]:
    """Checks that need no file or model: unknown keys, the ``_target_`` policy, level lists.

    Returns the config with normalised levels (``eps=0.1`` → ``[0.1]``, ``8/255`` → a float)
    and the text of levels given as fractions.
    """
    problems = schema_problems(dict(cfg))
    if problems:
        raise ConfigError("; ".join(problems))
    check_sweep_targets(cfg)
    perts, labels = normalize_levels(cfg.get("perturbation") or {})
    return {**cfg, "perturbation": perts}, labels


def _check_threat_models(perts: Mapping[str, Any], image_shape: tuple[int, ...]) -> None:
    """An attack must declare a norm (else nothing could verify it) and ε in the norm's units."""
    for name, pert in perts.items():
        if pert.family == "attack" and pert.norm is None:
            raise ConfigError(f"perturbation.{name} is an attack without a norm; set norm: linf | l2 | l1 "
                              "(every adversarial example is checked against its ε ball)")
        if pert.family == "attack":
            check_units(name, pert.norm, tuple(pert.levels), image_shape)


def example_options(cfg: Mapping[str, Any]) -> tuple[str, int, str]:
    """``save_examples``, ``save_examples_cap`` and ``quantize``, checked."""
    mode, cap = cfg.get("save_examples", "none"), cfg.get("save_examples_cap", DEFAULT_CAP)
    quantize = cfg.get("quantize", "none")
    if mode not in SAVE_MODES:
        raise ConfigError(f"save_examples={mode!r} must be one of {', '.join(SAVE_MODES)}")
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"save_examples_cap={cap!r} must be a positive integer (examples kept per task)")
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize={quantize!r} must be one of {', '.join(QUANTIZE_MODES)}")
    return mode, cap, quantize


def make_plan(
    cfg: Mapping[str, Any], is_done: DoneFn, check_model: ModelCheck | None = None, progress: bool = True
) -> Plan:
    """Validate the sweep and build its tasks; ``is_done(task_id)`` filters finished ones.

    Everything that can fail on bad input fails here, before any result is
    written: value ranges, perturbation configs, dataset size, checkpoints
    (``check_model(name, cfg)`` loads each model that still has work, so a
    corrupt or mismatched file is caught up front).
    """
    cfg, _ = prepare(cfg)
    n_examples = _positive(cfg, "n_examples")
    batch_size = _positive(cfg, "batch_size")
    shard_size = cfg.get("shard_size")
    if shard_size is not None:
        shard_size = _positive(cfg, "shard_size")
    if not cfg["model"]:
        raise ConfigError("no model selected; e.g. model=[digits_cnn,digits_cnn_at]")
    if not cfg["perturbation"]:
        raise ConfigError("no perturbation selected; e.g. perturbation=[clean,pgd_linf]")
    baseline = cfg.get("corruption_baseline")
    if baseline is not None and baseline != "alexnet" and baseline not in cfg["model"]:
        raise ConfigError(
            f"corruption_baseline={baseline!r} is not a model of this sweep; "
            f"use one of {', '.join(cfg['model'])}, alexnet, or null"
        )
    dataset_cfg = dict(cfg["dataset"])
    data = build_dataset(dataset_cfg)
    if n_examples > len(data):
        raise ConfigError(
            f"n_examples={n_examples} but dataset {data.name!r} has only {len(data)} samples in this split; "
            f"use n_examples≤{len(data)}"
        )
    perts = {name: build_perturbation(name, pcfg) for name, pcfg in cfg["perturbation"].items()}
    _check_threat_models(perts, tuple(data.image_shape))
    check_remote_perturbations(cfg["model"], perts)  # gradient attacks on a remote model: refused by name
    cache_dir = cfg.get("cache_dir")
    shas = {name: ensure_checkpoint(name, mcfg, progress, cache_dir) for name, mcfg in cfg["model"].items()}
    sources = _surrogate_extras(perts, progress, cache_dir)
    seed = int(cfg["seed"])
    save, cap, quantize = example_options(cfg)
    content = identity_of(data, cache_dir)
    tasks, keys = [], {}
    for model_name, model_cfg in cfg["model"].items():
        identity = model_identity(model_cfg)
        if is_remote(model_cfg):  # rate limits, timeouts, credentials change no row: not part of the task id
            identity["remote"] = remote_identity(model_name, model_cfg)
        for pert_name, pert in perts.items():
            pert_cfg = dict(cfg["perturbation"][pert_name])
            for start, stop in shard_ranges(n_examples, shard_size):
                key = {
                    "model": [model_name, identity, shas[model_name]],
                    "dataset": dataset_cfg,
                    "perturbation": [pert_name, pert_cfg, {**pert.task_extras(batch_size), **sources[pert_name]}],
                    "rows": [start, stop],
                    "seed": seed,
                }
                if quantize != "none" and pert.family == "attack":  # rows of rounded examples: other tasks
                    key["quantize"] = quantize
                task_id = task_id_of(key, content["digest"])
                keys[task_id] = key
                tasks.append(
                    Task(
                        task_id=task_id, run_id="", model_name=model_name,
                        model=dict(model_cfg), checkpoint_sha256=shas[model_name],
                        dataset_name=data.name, dataset=dataset_cfg, perturbation_name=pert_name,
                        perturbation=pert_cfg, start=start, stop=stop, seed=seed, batch_size=batch_size,
                        dataset_identity=content["digest"], save_examples=save, examples_cap=cap,
                        quantize=quantize,
                    )
                )
    run_id = stable_hash(sorted(t.task_id for t in tasks), 12)
    tasks = [replace(t, run_id=run_id) for t in tasks]
    todo = tuple(t for t in tasks if not is_done(t.task_id))
    if check_model is not None:
        to_check = {name: (name, cfg["model"][name]) for name in dict.fromkeys(t.model_name for t in todo)}
        for t in todo:  # a transfer attack's source model too: it must fit the same data
            to_check.update({f"{n} (source of {t.perturbation_name})": (n, c)
                             for n, c in perts[t.perturbation_name].surrogates.items()})
        for shown, (name, model_cfg) in to_check.items():
            model = check_model(name, model_cfg)
            if isinstance(model, torch.nn.Module):  # channels, image size, classes, float logits
                check_fits(shown, model, data.image_shape, data.num_classes, data.name,
                           next(model.buffers(), torch.empty(0)).device)
    return Plan(run_id, tuple(tasks), todo, content, keys, source_of(data))


def model_identity(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What of a model config goes into a task id besides its sha256 (not where the file lives, nor how to train it)."""
    return {k: v for k, v in model_cfg.items() if k not in ("checkpoint", "sha256", "train", "train_if_missing")}


def _surrogate_extras(perts: Mapping[str, Any], progress: bool,
                      cache_dir: str | Path | None) -> dict[str, dict[str, Any]]:
    """Per perturbation, its source models (transfer attacks) as task-id extras: each checkpoint checked (sha256,
    trained at the embedded location like any model) and named by its sha256, so a changed source file never
    reuses rows crafted on the old one. Empty for every other perturbation (their task ids are unchanged)."""
    out: dict[str, dict[str, Any]] = {}
    for name, pert in perts.items():
        srcs = {src: [model_identity(mcfg), ensure_checkpoint(src, mcfg, progress, cache_dir)]
                for src, mcfg in pert.surrogates.items()}
        out[name] = {"surrogates": srcs} if srcs else {}
    return out
