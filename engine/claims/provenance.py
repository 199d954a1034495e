"""What a verdict was computed on, for a reviewer to file: the claim file, the model and its checkpoint's sha256,
the dataset and its identity, the samples, the attacks with their budgets, Gauntlet's version and the command.

Pure reads of the composed config, the sweep's plan and the files on disk; nothing here runs a model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import engine
from engine.claims.schema import ClaimFile
from engine.claims.subset import ids_digest
from engine.models.checkpoint import sha256_of

SUBSET_TARGET = "engine.claims.subset.subset_of"
LOCATION_KEYS = ("root", "path", "class_index")  # dataset config keys naming files or folders it reads
IDS_LISTED = 10_000  # sample ids written out in full up to this many (always hashed)
LISTING_CAP = 200_000  # files stat'ed for a folder's identity; beyond this the identity says it is partial
MEMBER_KEYS = ("loss", "n_iter", "n_restarts", "n_queries", "n_target_classes", "eot", "steps", "p_init", "rho",
               "at", "mode")


def claim_file_record(cf: ClaimFile) -> dict[str, Any]:
    p = Path(cf.path)
    return {"path": str(p.resolve()), "sha256": sha256_of(p), "title": cf.title,
            "source": cf.extra.get("source")}


def model_record(cfg: Mapping[str, Any], name: str, checkpoint_sha256: str | None) -> dict[str, Any]:
    m = cfg["model"][name]
    arch = m.get("arch") or {}
    return {"name": name, "arch": arch.get("_target_") if isinstance(arch, Mapping) else str(arch),
            "checkpoint": str(Path(str(m.get("checkpoint"))).expanduser()), "checkpoint_sha256": checkpoint_sha256,
            "mean": m.get("mean"), "std": m.get("std")}


def base_dataset_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The dataset config under a claim's ``subset_of`` wrapper (or the config itself)."""
    d = cfg["dataset"]
    return d["base"] if d.get("_target_") == SUBSET_TARGET else d


def dataset_identity(base_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Identity of what the dataset config reads: per location, its files' count, total size, newest
    modification time and a sha256 of the sorted (path, size, mtime) listing.

    The fallback when no content fingerprint is at hand (a verdict normally records the base sweep's,
    ``Plan.identity``); it names the data without reading every byte.
    """
    out: dict[str, Any] = {}
    for key in LOCATION_KEYS:
        value = base_cfg.get(key)
        if value in (None, "", "???"):
            continue
        out[key] = _listing_identity(Path(str(value)).expanduser())
    if not out:
        out["built_in"] = str(base_cfg.get("_target_"))  # e.g. the embedded digits: no file to name
    return out


def _listing_identity(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"path": str(path), "exists": False}
    files = [path] if path.is_file() else sorted(p for p in _walk(path))
    h = hashlib.sha256()
    size = newest = 0
    for f in files[:LISTING_CAP]:
        st = f.stat()
        size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(path.resolve()), "files": len(files), "bytes": size, "newest_mtime_ns": newest,
            "listing_sha256": h.hexdigest(), **({"partial": True} if len(files) > LISTING_CAP else {})}


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, _dirs, names in os.walk(root):
        found += [Path(dirpath) / n for n in names if not n.startswith(".")]
    return found


def dataset_record(cfg: Mapping[str, Any], name: str, num_classes: int,
                   content: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dataset a verdict saw: name, config, where its files are (``identity``: a listing) and what they
    hold (``content``: the fingerprint whose digest the base sweep's task ids carry, engine/data/fingerprint.py)."""
    base = base_dataset_config(cfg)
    keep = {k: v for k, v in base.items() if not isinstance(v, (Mapping, list))}
    return {"name": name, "num_classes": num_classes, "config": keep, "identity": dataset_identity(base),
            "content": dict(content or {})}


def samples_record(cfg: Mapping[str, Any], ids: Sequence[int]) -> dict[str, Any]:
    d = cfg["dataset"]
    if d.get("_target_") == SUBSET_TARGET:
        sel: dict[str, Any] = {"selection": "subset", "mode": d.get("mode"), "n": d.get("n"), "seed": d.get("seed")}
    else:
        base = base_dataset_config(cfg)
        sel = {"selection": "first", "n": int(cfg["n_examples"]),
               "dataset_order": base.get("subset", "first"), "dataset_order_seed": base.get("subset_seed")}
    return {**sel, "count": len(ids), "ids_sha256": ids_digest(ids),
            "sample_ids": [int(i) for i in ids] if len(ids) <= IDS_LISTED else None}


def attack_record(block: Mapping[str, Any]) -> dict[str, Any]:
    """A perturbation config as a reviewer reads it: what it is, its levels and each member's budget."""
    rec: dict[str, Any] = {"type": str(block.get("_target_", "")).rsplit(".", 1)[-1] or "suite"}
    for key in ("norm", "eps", "severities", "budget"):  # budget: a query-based attack's queries per sample
        if key in block:
            rec[key] = block[key]
    if isinstance(block.get("attacks"), list):
        rec["members"] = [_member(m) for m in block["attacks"] if isinstance(m, Mapping)]
    return rec


def _member(m: Mapping[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": m.get("name"), "attack": str(m.get("_target_", "")).rsplit(".", 1)[-1]}
    rec.update({k: m[k] for k in MEMBER_KEYS if k in m})
    if isinstance(m.get("member"), Mapping):
        rec["wraps"] = _member(m["member"])
    return rec


def provenance(cf: ClaimFile, cfg: Mapping[str, Any], checkpoint_sha256: str | None, dataset_name: str,
               num_classes: int, ids: Sequence[int], budget: float, command: str | None,
               content: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything but the verdicts that ``verdict.json`` records (docs/claims.md)."""
    return {
        "gauntlet_version": engine.__version__,
        "command": command,
        "claim_file": claim_file_record(cf),
        "model": model_record(cfg, cf.model_name, checkpoint_sha256),
        "dataset": dataset_record(cfg, dataset_name, num_classes, content),
        "samples": samples_record(cfg, ids),
        "attacks": {"budget": budget, "seed": cfg.get("seed"),
                    "base": {name: attack_record(p) for name, p in cfg["perturbation"].items()}},
        "out_dir": str(Path(str(cfg["out_dir"])).expanduser().resolve()),
    }
