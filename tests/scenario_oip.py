"""Serve any model configs through the example OIP server's app (examples/targets/oip_server.py), for the scenario
matrix's remote cells: the server's command line serves only the embedded digits models by name, so a layout's
own checkpoint (CIFAR-shaped, 100 classes, a user's package) is served through its ``make_app`` instead.

    python tests/scenario_oip.py --port 8080 --configs models.json   # {"served name": <model config>, …}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when run as a script

import torch
import uvicorn

from engine.models.loader import build_model
from examples.targets.oip_server import make_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--configs", required=True, help="JSON file: served name → model config")
    args = parser.parse_args()
    configs = json.loads(Path(args.configs).read_text())
    models = {name: build_model(name, cfg, torch.device("cpu")) for name, cfg in configs.items()}
    uvicorn.run(make_app(models), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
