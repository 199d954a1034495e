"""Checkpoint files: sha256, sidecar manifest, and loading that never runs code (safetensors / weights_only)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def save_checkpoint(state: dict[str, torch.Tensor], path: Path, info: dict[str, Any]) -> str:
    """Write ``state`` as safetensors plus a ``<file>.json`` manifest holding its sha256; both atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    digest = sha256_of(tmp)
    man_tmp = manifest_path(tmp)
    man_tmp.write_text(json.dumps({**info, "file": path.name, "sha256": digest}, indent=2) + "\n")
    os.replace(tmp, path)
    os.replace(man_tmp, manifest_path(path))
    return digest


def expected_sha256(path: Path, configured: str | None) -> str | None:
    """The hash the file must have: the config's if given, else the sidecar manifest's, else None."""
    if configured:
        return configured.lower()
    man = manifest_path(path)
    if not man.exists():
        return None
    try:
        return str(json.loads(man.read_text())["sha256"]).lower()
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint manifest {man} is unreadable ({exc}); delete it or fix it") from None


def verify_file(path: Path, configured_sha: str | None, model_name: str) -> str:
    """Check the file exists and matches its expected sha256; return the actual sha256."""
    if not path.is_file():
        raise CheckpointError(
            f"model {model_name!r}: checkpoint file {path} does not exist; "
            f"set model.{model_name}.checkpoint=<path to .safetensors or .pt>"
        )
    actual = sha256_of(path)
    expected = expected_sha256(path, configured_sha)
    if expected is not None and actual != expected:
        raise CheckpointError(
            f"model {model_name!r}: checkpoint {path} is corrupt or was replaced "
            f"(sha256 {actual[:12]}…, expected {expected[:12]}…). Restore the file, "
            "or delete it (and its .json manifest) to retrain an embedded checkpoint."
        )
    return actual


def load_state(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    try:
        if path.suffix in SAFE_SUFFIXES:
            return load_file(str(path), device="cpu")
        if path.suffix in TORCH_SUFFIXES:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
                obj = obj["state_dict"]
            if not isinstance(obj, dict):
                raise CheckpointError(f"model {model_name!r}: {path} holds a {type(obj).__name__}, not a state dict")
            return obj
    except CheckpointError:
        raise
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"model {model_name!r}: checkpoint {path} cannot be read ({first}). "
            "It may be truncated or not a checkpoint; only safetensors and weights-only torch files load."
        ) from None
    raise CheckpointError(
        f"model {model_name!r}: checkpoint {path} has suffix {path.suffix!r}; "
        f"use one of {', '.join(SAFE_SUFFIXES + TORCH_SUFFIXES)}"
    )
