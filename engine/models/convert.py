"""``gauntlet convert-checkpoint IN OUT``: rewrite a torch checkpoint as safetensors plus a sha256 manifest.

By default IN is read with ``torch.load(weights_only=True)`` (no code runs). A pickle that needs code
is refused unless ``--trust-pickle`` is given for a file the user trusts: only then is it unpickled
with ``weights_only=False``. Either way the output holds tensors only and loads without pickle.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError, GauntletError
from engine.models.checkpoint import (
    extract_state,
    read_safetensors,
    read_torch_weights_only,
    save_checkpoint,
    sha256_of,
    strip_key_prefix,
)

log = logging.getLogger(__name__)
NAME = "convert-checkpoint"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"gauntlet {NAME}",
        description="Rewrite a checkpoint as safetensors (+ a .json manifest with its sha256). "
        "Reads with torch.load(weights_only=True) unless --trust-pickle is given.",
    )
    p.add_argument("input", type=Path, help="a .pt/.pth/.bin/.ckpt torch file (or .safetensors)")
    p.add_argument("output", type=Path, help="where to write the .safetensors file")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle IN with weights_only=False: RUNS CODE from the file; only for files you trust")
    p.add_argument("--state-key", default=None, help="dotted key of the weights in a nested file (e.g. model)")
    p.add_argument("--strip-prefix", default=None, help="prefix to remove from every key (default: 'module.' "
                   "when every key has it; '' to keep keys as they are)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return p


def _read(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    if path.suffix == ".safetensors":
        return read_safetensors(path, path.stem)
    try:
        return read_torch_weights_only(path, path.stem)
    except CheckpointError as exc:
        if not trust_pickle or "needs code to load" not in str(exc):
            raise
    log.warning("unpickling %s with weights_only=False (--trust-pickle): this runs code from the file", path)
    return torch.load(str(path), map_location="cpu", weights_only=False)


def _tensors(obj: Any) -> Any:
    """Modules become their state dict (a trusted full-model pickle)."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    return obj


def convert(src: Path, dst: Path, trust_pickle: bool = False, state_key: str | None = None,
            strip_prefix: str | None = None, force: bool = False) -> str:
    """Convert ``src`` to safetensors at ``dst``; return the new file's sha256."""
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output must end in .safetensors")
    if dst.exists() and not force:
        raise CheckpointError(f"{dst} exists; pass --force to overwrite it")
    state = extract_state(_tensors(_read(src, trust_pickle)), src, src.stem, state_key)
    state = strip_key_prefix(state, strip_prefix, src.stem)
    # safetensors refuses tensors that share memory; copies keep every key loadable as saved
    flat = {k: v.detach().clone().contiguous() for k, v in state.items()}
    info = {"converted_from": str(src), "source_sha256": sha256_of(src), "trusted_pickle": trust_pickle,
            "torch": torch.__version__}
    return save_checkpoint(flat, dst, info)


def main(argv: list[str]) -> int:
    """Entry point of the subcommand; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        digest = convert(args.input, args.output, args.trust_pickle, args.state_key, args.strip_prefix, args.force)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} (sha256 {digest})")
    print(f"use it in a model config:\n  checkpoint: {args.output.resolve()}\n  sha256: {digest}")
    return 0
