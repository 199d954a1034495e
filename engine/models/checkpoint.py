"""Checkpoint files: sha256, sidecar manifest, and loading that never runs Python code from a file.

Formats (``model.<name>.format``): ``safetensors``; ``torch`` — ``.pt``/``.pth``/``.bin`` read with
``torch.load(weights_only=True)``, nested state dicts found by ``state_key`` (or ``state_dict`` /
``model`` / ``net`` / ``model_state_dict``), a ``module.`` prefix stripped; ``torchscript`` — only
when the config says so; ``auto`` picks by suffix. A pickle that needs code to load is refused
with the safe alternatives (``gauntlet convert-checkpoint IN OUT [--trust-pickle]``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, ConfigError

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
FORMATS = ("auto", "safetensors", "torch", "torchscript")
NESTED_KEYS = ("state_dict", "model", "net", "model_state_dict", "state")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def save_checkpoint(state: Mapping[str, torch.Tensor], path: Path, info: dict[str, Any]) -> str:
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


def check_sha256_pin(configured: object, model_name: str) -> str | None:
    """The config's ``sha256`` in lower case; a prefix or non-hex value is an error."""
    if configured is None or configured == "":
        return None
    pin = str(configured).strip().lower()
    if not SHA256.match(pin):
        raise ConfigError(
            f"model.{model_name}.sha256={configured!r} is not a sha256 ({len(pin)} characters); give the full "
            "64-hex sha256 of the file (sha256sum FILE), or null to trust the sidecar manifest"
        )
    return pin


def expected_sha256(path: Path, configured: str | None, model_name: str = "?") -> str | None:
    """The hash the file must have: the config's if given, else the sidecar manifest's, else None."""
    pin = check_sha256_pin(configured, model_name)
    if pin:
        return pin
    man = manifest_path(path)
    if not man.exists():
        return None
    fix = f"delete it (it is the sidecar of {path.name}) or fix it"
    try:
        doc = json.loads(man.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint manifest {man} is unreadable ({exc}); {fix}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sha256"), str):
        raise CheckpointError(f"checkpoint manifest {man} is not a JSON object with a \"sha256\" string; {fix}")
    digest = doc["sha256"].lower()
    if not SHA256.match(digest):
        raise CheckpointError(f"checkpoint manifest {man}: sha256 {doc['sha256']!r} is not 64 hex digits; {fix}")
    return digest


def verify_file(path: Path, configured_sha: str | None, model_name: str) -> str:
    """Check the file exists and matches its expected sha256; return the actual sha256."""
    key = f"model.{model_name}.checkpoint"
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in SAFE_SUFFIXES + TORCH_SUFFIXES)[:5]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise CheckpointError(f"{key}={path} is a directory{hint}; point it at the checkpoint file itself")
    if not path.is_file():
        raise CheckpointError(
            f"model {model_name!r}: checkpoint file {path} does not exist; set {key}=<path to .safetensors or .pt>"
        )
    expected = expected_sha256(path, configured_sha, model_name)
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise CheckpointError(
            f"model {model_name!r}: checkpoint {path} is corrupt or was replaced "
            f"(sha256 {actual[:12]}…, expected {expected[:12]}…). Restore the file, "
            "or delete it (and its .json manifest) to retrain an embedded checkpoint."
        )
    return actual


def _sniff(path: Path) -> str:
    """What the first bytes say the file is: ``zip`` (torch / TorchScript), ``pickle``, ``safetensors``, ``?``."""
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "?"


def resolve_format(path: Path, fmt: str, model_name: str) -> str:
    """``auto`` → by suffix; an unknown format or suffix is an error naming the key."""
    if fmt not in FORMATS:
        raise ConfigError(f"model.{model_name}.format={fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if path.suffix in SAFE_SUFFIXES:
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    raise CheckpointError(
        f"model {model_name!r}: checkpoint {path} has suffix {path.suffix!r}; use one of "
        f"{', '.join(SAFE_SUFFIXES + TORCH_SUFFIXES)}, or set model.{model_name}.format to one of "
        f"{', '.join(FORMATS[1:])}"
    )


def pickle_refusal(path: Path, model_name: str, detail: str) -> CheckpointError:
    """The message for a pickle that would need code to load: what is wrong and the safe ways out."""
    return CheckpointError(
        f"model {model_name!r}: checkpoint {path} is a pickle that needs code to load ({detail}); Gauntlet never "
        "runs code from a checkpoint. Safe alternatives: save the weights as safetensors "
        "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) or as a plain state_dict "
        "(torch.save(model.state_dict(), 'model.pt')); or, for a file you trust, convert it: "
        f"gauntlet convert-checkpoint {path} {path.with_suffix('.safetensors')} --trust-pickle"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_torch_weights_only(path: Path, model_name: str) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError that says why."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript archive", category=UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if "Weights only load failed" in str(exc):
            detail = f"it references {found.group(1)}" if found else "it holds objects other than tensors"
            raise pickle_refusal(path, model_name, detail) from None
        raise CheckpointError(f"model {model_name!r}: checkpoint {path} cannot be read ({_first_line(exc)})") from None
    except RuntimeError as exc:
        if "TorchScript" in str(exc):
            raise CheckpointError(
                f"model {model_name!r}: {path} is a TorchScript archive; set model.{model_name}.format=torchscript "
                "to load it as a program (for files you trust), or export its state_dict as safetensors"
            ) from None
        raise CheckpointError(
            f"model {model_name!r}: checkpoint {path} cannot be read ({_first_line(exc)}). "
            "It may be truncated or not a checkpoint."
        ) from None
    except (OSError, ValueError, EOFError, SafetensorError) as exc:  # torch.load hands *.safetensors to safetensors
        raise CheckpointError(
            f"model {model_name!r}: checkpoint {path} cannot be read ({_first_line(exc)}). "
            "It may be truncated or not a checkpoint."
        ) from None


def read_safetensors(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        kind = _sniff(path)
        if kind in ("zip", "pickle"):
            raise CheckpointError(
                f"model {model_name!r}: {path} is named .safetensors but is a torch {kind} file (a pickle). It was "
                f"not unpickled. Rename it to .pt (or set model.{model_name}.format=torch) to load it with "
                f"weights_only=True, or convert it: gauntlet convert-checkpoint {path} OUT.safetensors"
            ) from None
        raise CheckpointError(
            f"model {model_name!r}: checkpoint {path} cannot be read ({_first_line(exc)}). "
            "It may be truncated or not a safetensors file."
        ) from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe_keys(obj: Mapping[Any, Any]) -> str:
    keys = [str(k) for k in list(obj)[:12]]
    return ", ".join(keys) + (", …" if len(obj) > 12 else "")


def extract_state(obj: Any, path: Path, model_name: str, state_key: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: at ``state_key`` (dotted), or the first nested state dict found."""
    key = f"model.{model_name}.state_key"
    if state_key:
        node = obj
        for part in str(state_key).split("."):
            if not isinstance(node, Mapping) or part not in node:
                here = _describe_keys(node) if isinstance(node, Mapping) else type(node).__name__
                raise CheckpointError(f"{key}={state_key!r}: {path} has no {part!r} (keys found: {here})")
            node = node[part]
        if not _is_state_dict(node):
            raise CheckpointError(f"{key}={state_key!r}: that entry of {path} is not a name → tensor mapping")
        return dict(node)
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for nested in NESTED_KEYS:
            if _is_state_dict(obj.get(nested)):
                return dict(obj[nested])
        raise CheckpointError(
            f"model {model_name!r}: {path} holds no state dict at its top level or under "
            f"{', '.join(NESTED_KEYS)} (top-level keys found: {_describe_keys(obj)}); set {key} to the key "
            "that holds the weights (dotted for deeper levels, e.g. state_key=checkpoint.model)"
        )
    raise CheckpointError(f"model {model_name!r}: {path} holds a {type(obj).__name__}, not a state dict")


def strip_key_prefix(state: dict[str, torch.Tensor], prefix: str | None, model_name: str) -> dict[str, torch.Tensor]:
    """``prefix`` removed from every key that has it; ``None`` = auto (``module.`` when every key has it)."""
    if prefix is None:
        prefix = "module." if state and all(k.startswith("module.") for k in state) else ""
    if not prefix:
        return state
    if not any(k.startswith(prefix) for k in state):
        raise CheckpointError(
            f"model.{model_name}.strip_prefix={prefix!r}: no key has it (first keys: {', '.join(list(state)[:5])})"
        )
    return {k.removeprefix(prefix): v for k, v in state.items()}


def load_state(path: Path, model_name: str, fmt: str = "auto", state_key: str | None = None,
               strip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    kind = resolve_format(path, fmt, model_name)
    if kind == "torchscript":
        raise ConfigError(f"model.{model_name}.format=torchscript loads a whole program, not a state dict")
    if kind == "safetensors":
        state = read_safetensors(path, model_name)
        if state_key:
            raise ConfigError(f"model.{model_name}.state_key is for torch files; a safetensors file is flat")
    else:
        state = extract_state(read_torch_weights_only(path, model_name), path, model_name, state_key)
    return strip_key_prefix(state, strip_prefix, model_name)


def load_torchscript(path: Path, model_name: str) -> torch.nn.Module:
    """A TorchScript archive (only with ``format: torchscript``): TorchScript code, never Python pickles."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"model {model_name!r}: {path} is not a loadable TorchScript archive ({_first_line(exc)}); "
            f"set model.{model_name}.format to safetensors or torch for a state dict"
        ) from None
    return module
