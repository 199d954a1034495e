"""Train (or verify) the two embedded digits checkpoints and print their sha256 and accuracy.

    python scripts/train_digits.py            # train missing ones, verify existing ones
    python scripts/train_digits.py --force    # retrain both

Checkpoints go to $GAUNTLET_CACHE_DIR/checkpoints (default ~/.cache/gauntlet),
as safetensors plus a ``.json`` manifest with the sha256 and training recipe.
"""

from __future__ import annotations

import argparse
import logging

import torch

from engine.compose.config import compose_sweep
from engine.data.digits import load_digits
from engine.models.checkpoint import manifest_path
from engine.models.loader import build_model, checkpoint_path, ensure_checkpoint

MODELS = ("digits_cnn", "digits_cnn_at")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="delete and retrain the checkpoints")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = compose_sweep([f"model=[{','.join(MODELS)}]"])["model"]
    test = load_digits(split="test")
    for name in MODELS:
        mcfg = models[name]
        path = checkpoint_path(mcfg)
        if args.force:
            path.unlink(missing_ok=True)
            manifest_path(path).unlink(missing_ok=True)
        sha = ensure_checkpoint(name, mcfg)
        model = build_model(name, mcfg, torch.device("cpu"))
        with torch.no_grad():
            acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
        print(f"{name:15s} {path}  sha256={sha}  clean test accuracy={100 * acc:.1f}%")


if __name__ == "__main__":
    main()
