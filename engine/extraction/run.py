"""Drive one ``gauntlet extract`` run: per contract, answers → a copy per budget → fidelity, accuracy, transfer.

Every query goes through the target's oracle, in its own scope: ``extract-steal`` (the stealing budget: query
i of the sequence is charged to sample id i, once), ``extract-fidelity`` (the test split, answered once and
kept: counted apart from the stealing budget) and ``extract-transfer/<copy>`` (each crafted example sent once).
Answers are kept in the run folder, so a re-run spends nothing twice and a finished budget is reused exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from omegaconf import OmegaConf

from engine.compose.threat_model import parse_tags
from engine.data import SampleSet
from engine.errors import ConfigError, GauntletError
from engine.evaluation.resources import resolve_device
from engine.extraction import queries as qs
from engine.extraction.settings import Contract, ExtractSettings
from engine.extraction.store import ContractDir, folder_name
from engine.extraction.train import fit, new_model, predict, targets_of
from engine.extraction.transfer import transfer
from engine.models.checkpoint import save_checkpoint, verify_file
from engine.models.wrapper import NormalizedModel
from engine.remote.api import Oracle
from engine.seeding import stable_hash
from engine.store.outdir import OutDirLock, check_out_dir
from engine.store.parquet import write_atomic

log = logging.getLogger(__name__)
SAVE_EVERY = 512  # answers are written at least this often, so a killed run loses little
EXTRACTION_TAGS = {"knowledge": "black-box", "goal": "untargeted", "stride": "information-disclosure",
                   "atlas": ["AML.T0024.002", "AML.T0005.001", "AML.T0043.002", "AML.T0042"]}
OracleFactory = Callable[[torch.nn.Module, Contract, int], Oracle]  # (target model, contract, classes) → oracle


@dataclass
class Spent:
    """Queries the oracle counted in this invocation, by scope."""

    steal: int = 0
    fidelity: int = 0
    transfer: int = 0

    @property
    def total(self) -> int:
        return self.steal + self.fidelity + self.transfer


@dataclass
class Context:
    """What every contract shares: settings, composed config, test split, query sequence, the target."""

    settings: ExtractSettings
    cfg: dict[str, Any]
    test: SampleSet
    queries: qs.QuerySet
    baseline: qs.QuerySet | None
    baseline_note: str
    target_identity: dict[str, Any]
    oracle_for: Callable[[Contract], Oracle]
    device: torch.device
    identity: dict[str, Any] = field(default_factory=dict)
    spent: Spent = field(default_factory=Spent)


def _ask(oracle: Oracle, scope: str, x: torch.Tensor, ids: torch.Tensor, done: int,
         keep: Callable[[torch.Tensor, torch.Tensor | None], None], labels: torch.Tensor,
         scores: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Answers for rows ``done:`` of ``x`` (once each, in ``scope``), appended to the ones held; saved as they come."""
    spent = 0
    with oracle.scope(scope, 1):
        for i in range(done, len(x), SAVE_EVERY):
            rows = slice(i, min(i + SAVE_EVERY, len(x)))
            answer = oracle.query(x[rows], ids[rows])
            labels = torch.cat([labels, answer.labels.cpu().long()])
            if answer.scores is not None:
                got = answer.scores.detach().cpu().float()
                scores = got if scores is None else torch.cat([scores, got])
            spent += int(oracle.used(ids[rows]).sum())
            keep(labels, scores)
    return labels, scores, spent


def target_answers(ctx: Context, cdir: ContractDir, oracle: Oracle, which: str, x: torch.Tensor,
                   ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The target's answers for every row of ``x``: those held in the folder, the rest asked now."""
    labels, scores = cdir.answers(which)
    if len(labels) > len(x):  # a run with larger budgets asked more; this one needs only a prefix
        return labels[: len(x)], None if scores is None else scores[: len(x)]
    if len(labels) < len(x):
        scope = "extract-steal" if which == "steal" else "extract-fidelity"
        labels, scores, spent = _ask(oracle, scope, x, ids, len(labels),
                                     lambda lab, sc: cdir.save_answers(which, lab, sc), labels, scores)
        setattr(ctx.spent, "steal" if which == "steal" else "fidelity",
                getattr(ctx.spent, "steal" if which == "steal" else "fidelity") + spent)
    return labels, scores


def _tags() -> dict[str, Any]:
    return parse_tags("gauntlet extract", EXTRACTION_TAGS).as_dict()


def save_copy(ctx: Context, cdir: ContractDir, model: torch.nn.Module, key: str, note: str) -> dict[str, str]:
    """The copy as safetensors + a model config (``--config-dir <folder>/configs model=<name>``)."""
    s = ctx.settings
    copy_cfg = ctx.cfg["model"][s.copy_model]
    name = f"{s.target}_stolen_{cdir.root.name}_{key}".replace("-", "_")
    ckpt = (cdir.root / "copies" / f"{key}.safetensors").resolve()
    net = model.net if isinstance(model, NormalizedModel) else model
    digest = save_checkpoint(net.state_dict(), ckpt, {"model": name, "extraction": note,
                                                      "identity": cdir.digest, "torch": torch.__version__})
    block = {"arch": copy_cfg["arch"], "mean": list(copy_cfg["mean"]), "std": list(copy_cfg["std"]),
             "checkpoint": str(ckpt), "sha256": digest}
    if copy_cfg.get("memory_format"):
        block["memory_format"] = copy_cfg["memory_format"]
    path = cdir.root / "configs" / "model" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# @package model.{name}\n# {note} (gauntlet extract; docs/extraction.md)\n"
                    + OmegaConf.to_yaml(OmegaConf.create(block)))
    return {"copy_model": name, "copy_checkpoint": str(ckpt), "copy_sha256": digest, "copy_config": str(path)}


def _measure(ctx: Context, oracle: Oracle, model: torch.nn.Module, scope: str,
             test_labels: torch.Tensor) -> dict[str, Any]:
    """Fidelity and accuracy on the test split (no queries), then transfer to the target (sent once)."""
    s, test = ctx.settings, ctx.test
    pred = predict(model, test.images)
    result = transfer(model, oracle, scope, test.images, test.labels, test.sample_ids, test_labels,
                      s.eps, s.attack_steps, s.seed)
    ctx.spent.transfer += result.queries
    return {"fidelity": float((pred == test_labels).float().mean()),
            "accuracy": float((pred == test.labels).float().mean()),
            "target_accuracy": float((test_labels == test.labels).float().mean()), "n_test": len(test.labels),
            "eps": s.eps, "norm": "linf", "transfer_success": result.success,
            "transfer_attacked": result.attacked, "transfer_fooled": result.fooled,
            "transfer_outside_ball": result.outside, "transfer_queries": result.queries}


def _row(ctx: Context, contract: Contract, role: str, budget: int, extra: dict[str, Any]) -> dict[str, Any]:
    s = ctx.settings
    return {"target": s.target, "contract": contract.label, "output": contract.output,
            "decimals": contract.decimals, "role": role, "budget": budget, "query_set": s.queries,
            "seed": s.seed, **extra, "threat_model": stable_json(_tags()),
            "atlas": list(EXTRACTION_TAGS["atlas"]), "stride": EXTRACTION_TAGS["stride"]}


def stable_json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def reusable(cdir: ContractDir, key: str) -> dict[str, Any] | None:
    """A finished row whose copy is still on disk, intact; else None (the budget is recomputed)."""
    row = cdir.read_row(key)
    if row is None:
        return None
    try:
        verify_file(Path(row["copy_checkpoint"]), row["copy_sha256"], row["copy_model"])
    except GauntletError as exc:
        log.warning("%s: its copy cannot be reused (%s); training it again", cdir.row_path(key), exc)
        return None
    return row


def copy_row(ctx: Context, cdir: ContractDir, oracle: Oracle, contract: Contract, budget: int,
             answers: tuple[torch.Tensor, torch.Tensor | None], test_labels: torch.Tensor) -> dict[str, Any]:
    """Train the copy on the first ``budget`` answers, save it, measure it."""
    s, key = ctx.settings, f"budget_{budget}"
    started = time.perf_counter()
    labels, scores = answers
    goal = targets_of(contract.output, labels[:budget], None if scores is None else scores[:budget])
    model = new_model(s.copy_model, ctx.cfg["model"][s.copy_model], s.seed, "copy")
    model = fit(model, ctx.queries.images[:budget], goal, s, "copy", ctx.device)
    seconds = time.perf_counter() - started
    saved = save_copy(ctx, cdir, model, key, f"copy of {s.target} from {budget} {contract.label} answers")
    measured = _measure(ctx, oracle, model, f"extract-transfer/{cdir.root.name}/{key}", test_labels)
    return _row(ctx, contract, "copy", budget, {"queries": budget, **measured, **saved,
                                                 "train_seconds": round(seconds, 2)})


def baseline_row(ctx: Context, cdir: ContractDir, oracle: Oracle, contract: Contract,
                 test_labels: torch.Tensor) -> dict[str, Any] | None:
    """The independent model: the copy's architecture on true labels of the victim's train split."""
    base = ctx.baseline
    if base is None or base.labels is None:
        return None
    s = ctx.settings
    started = time.perf_counter()
    model = new_model(s.copy_model, ctx.cfg["model"][s.copy_model], s.seed + 1, "baseline")
    model = fit(model, base.images, base.labels, s, "baseline", ctx.device)
    seconds = time.perf_counter() - started
    saved = save_copy(ctx, cdir, model, "baseline", f"independent {s.copy_model} on {len(base.labels)} true labels")
    measured = _measure(ctx, oracle, model, f"extract-transfer/{cdir.root.name}/baseline", test_labels)
    return _row(ctx, contract, "baseline", len(base.labels), {"queries": 0, **measured, **saved,
                                                              "train_seconds": round(seconds, 2)})


def run_contract(ctx: Context, out_dir: Path, contract: Contract) -> list[dict[str, Any]]:
    """One contract's rows: the baseline, then every budget (reused where finished, else computed now)."""
    s = ctx.settings
    cdir = ContractDir(out_dir / folder_name(contract.label), {**ctx.identity, "contract": contract.label})
    cdir.claim()
    oracle = ctx.oracle_for(contract)
    test_labels, _ = target_answers(ctx, cdir, oracle, "test", ctx.test.images, ctx.test.sample_ids)
    rows: list[dict[str, Any]] = []
    base = reusable(cdir, "baseline")
    if base is None:
        base = baseline_row(ctx, cdir, oracle, contract, test_labels)
        if base is not None:
            cdir.write_row("baseline", base)
    if base is not None:
        rows.append(base)
    todo = [b for b in s.budgets if reusable(cdir, f"budget_{b}") is None]
    answers: tuple[torch.Tensor, torch.Tensor | None] = (torch.zeros(0, dtype=torch.int64), None)
    if todo:
        n = max(todo)
        ids = torch.arange(n, dtype=torch.int64)  # query i of the sequence is sample id i
        answers = target_answers(ctx, cdir, oracle, "steal", ctx.queries.images[:n], ids)
    for budget in s.budgets:
        row = reusable(cdir, f"budget_{budget}")
        if row is None:
            row = copy_row(ctx, cdir, oracle, contract, budget, answers, test_labels)
            cdir.write_row(f"budget_{budget}", row)
            log.info("%s budget %d: fidelity %.3f, transfer %.3f", contract.label, budget, row["fidelity"],
                     row["transfer_success"])
        else:
            log.info("%s budget %d: finished earlier, reused", contract.label, budget)
        rows.append(row)
    return rows


def _target_identity(settings: ExtractSettings, cfg: Mapping[str, Any], device: torch.device
                     ) -> tuple[dict[str, Any], torch.nn.Module]:
    """The target model (local, or remote: answered only through its oracle) and its identity: the checkpoint's
    sha256 and config, or the remote contract's digest (endpoint, output, encoding; never a secret)."""
    from engine.models.loader import build_model, ensure_checkpoint
    from engine.remote.model import is_remote

    mcfg = cfg["model"][settings.target]
    if is_remote(mcfg) and not settings.copy:
        raise ConfigError(f"target={settings.target} is a remote model: no local architecture describes it; name "
                          "the copy's, copy=<model config> (e.g. copy=digits_cnn)")
    digest = ensure_checkpoint(settings.target, mcfg, progress=False, cache_dir=cfg.get("cache_dir"))
    kind = "remote" if is_remote(mcfg) else "local"
    ident = {"kind": kind, "name": settings.target, "sha256": digest,
             "config": stable_hash({k: v for k, v in mcfg.items() if k not in ("checkpoint", "sha256", "remote")})}
    return ident, build_model(settings.target, mcfg, device)


def _check_fits(settings: ExtractSettings, cfg: Mapping[str, Any], target: torch.nn.Module, test: SampleSet,
                device: torch.device) -> None:
    """The target and the copy's architecture must take the test images and give one score per class: else the
    copy is trained on, and judged against, answers that cannot be the test labels (e.g. a 10-class target on
    CIFAR-100), and every number is silently wrong. A remote target's answers are checked by its oracle."""
    from engine.models.arch import instantiate_arch
    from engine.models.fit import check_fits
    from engine.remote.model import is_remote

    target_cfg = cfg["model"][settings.target]
    if not is_remote(target_cfg):
        check_fits(settings.target, target, test.image_shape, test.num_classes, test.name, device)
    elif target_cfg["remote"].get("num_classes") != test.num_classes:
        raise ConfigError(f"model.{settings.target}.remote.num_classes={target_cfg['remote'].get('num_classes')} but "
                          f"dataset {test.name!r} has {test.num_classes} classes; point the target at the data it "
                          "classifies")
    copy_cfg = cfg["model"][settings.copy_model]
    net = instantiate_arch(settings.copy_model, copy_cfg.get("arch") or {})
    copy = NormalizedModel(net, list(copy_cfg["mean"]), list(copy_cfg["std"])).eval()
    check_fits(f"{settings.copy_model} (the copy)", copy, test.image_shape, test.num_classes, test.name,
               torch.device("cpu"))


def prepare(settings: ExtractSettings, oracle_factory: OracleFactory) -> Context:
    """Compose and check everything that can fail on bad input, before any query is sent."""
    device = resolve_device(settings.device)
    _tags()  # the rows' threat model is checked before anything runs
    cfg = qs.compose([settings.target, settings.copy_model], settings.dataset, settings.seed, {
        k: v for k, v in settings.locations.items() if not k.startswith("queries.")})
    test, test_ident = qs.test_split(cfg, settings.n_test)
    largest = max(settings.budgets)
    queries = qs.query_set(settings, cfg, test.image_shape, largest)
    baseline, note = qs.baseline_set(cfg, largest, settings.seed)
    target_ident, model = _target_identity(settings, cfg, device)
    _check_fits(settings, cfg, model, test, device)
    ctx = Context(settings, cfg, test, queries, baseline, note, target_ident,
                  lambda contract: oracle_factory(model, contract, test.num_classes), device)
    copy_cfg = cfg["model"][settings.copy_model]
    ctx.identity = {"settings": stable_hash(settings.identity()), "target": target_ident, "test": test_ident,
                    "queries": queries.identity, "baseline": None if baseline is None else baseline.identity,
                    "copy_arch": stable_hash([copy_cfg.get("arch"), copy_cfg.get("mean"), copy_cfg.get("std")])}
    return ctx


def extract(settings: ExtractSettings, oracle_factory: OracleFactory
            ) -> tuple[list[dict[str, Any]], Spent, Path]:
    """Run every contract; return all rows, the queries spent now, and the out_dir (rows also in Parquet)."""
    out_dir = check_out_dir(settings.out_dir)
    ctx = prepare(settings, oracle_factory)
    lock = OutDirLock(out_dir)
    lock.acquire()
    try:
        rows = [r for c in settings.contracts for r in run_contract(ctx, out_dir, c)]
        write_atomic(pa.Table.from_pylist(rows), out_dir / "extraction.parquet")
    finally:
        lock.release()
    if ctx.baseline_note:
        log.warning("%s", ctx.baseline_note)
    return rows, ctx.spent, out_dir
