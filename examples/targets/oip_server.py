"""Serve embedded Gauntlet models through the Open Inference Protocol (KServe v2) on 127.0.0.1.

    python examples/targets/oip_server.py --port 8080 --models digits_cnn,digits_cnn_at

Routes: GET /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready, POST
/v2/models/{name}/infer (one FP32 or UINT8 input tensor N×C×H×W; outputs ``probabilities`` FP32 N×K and
``label`` INT64 N, or only ``label`` with --label-only), and GET /stats (requests and images answered).
docs/remote-targets.md says why this runs on uvicorn rather than MLServer or KServe's model server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's engine, when run as a script

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from examples.targets.common import FAULTS, base_app, faulty, load_model

DTYPES = {"FP32": torch.float32, "UINT8": torch.uint8, "FP64": torch.float64}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


NUMPY = {"FP32": "<f4", "UINT8": "u1", "FP64": "<f8"}


def _input(raw: bytes, header_length: str | None) -> torch.Tensor:
    """The request's first input tensor: JSON data, or raw bytes after a JSON header (binary data extension)."""
    if header_length is None:
        spec = json.loads(raw)["inputs"][0]
        x = torch.tensor(spec["data"], dtype=DTYPES[spec["datatype"]]).reshape(spec["shape"])
    else:
        cut = int(header_length)
        spec = json.loads(raw[:cut])["inputs"][0]
        size = int(spec["parameters"]["binary_data_size"])
        arr = np.frombuffer(raw[cut:cut + size], dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])
        x = torch.from_numpy(arr.copy())
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _classify(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x).float(), dim=1)


def make_app(models: dict[str, torch.nn.Module], label_only: bool = False, rate: float | None = None,
             fault: str = "none", count_file: str | None = None,
             fault_control: bool = False) -> FastAPI:
    app, counter, gate, state, flaky = base_app(count_file, rate, fault, fault_control)

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"live": True, "ready": True}

    @app.get("/v2/models/{name}")
    def metadata(name: str) -> Any:
        if name not in models:
            return _error(404, f"unknown model {name}")
        return {"name": name, "platform": "pytorch", "outputs": ["probabilities", "label"]}

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> Any:
        return {"name": name, "ready": True} if name in models else _error(404, f"unknown model {name}")

    @app.get("/stats")
    def stats() -> dict[str, int]:
        return counter.as_dict()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Any:
        if name not in models:
            return _error(404, f"unknown model {name}")
        if not gate.admit():
            counter.add(throttled=1)
            return JSONResponse({"error": "rate limit"}, 429, headers={"Retry-After": "1"})
        if state["fault"] == "flaky" and flaky.fails_now():
            return JSONResponse({"error": "unavailable"}, 503)
        if state["fault"] == "slow":
            await asyncio.sleep(2.0)  # past the client's timeout in the fault tests
        try:
            x = _input(await request.body(), request.headers.get("inference-header-content-length"))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            return _error(400, f"bad request: {err}")
        probs = await run_in_threadpool(_classify, models[name], x)  # concurrent requests overlap
        counter.add(images=len(x))
        if state["fault"] == "malformed":
            return Response(b'{"outputs": [ {"name": "probabilities", "data": [0.1,', media_type="application/json")
        n, k = probs.shape
        label = {"name": "label", "shape": [n], "datatype": "INT64", "data": probs.argmax(1).tolist()}
        scores = faulty(probs.tolist(), state["fault"])
        width = len(scores[0]) if scores else k
        data = [v for row in scores for v in row]
        prob = {"name": "probabilities", "shape": [n, width], "datatype": "FP32", "data": data}
        outputs = [label] if label_only else [prob, label]
        if state["fault"] == "missing_field":
            return {"model_name": name, "results": outputs}
        return Response(json.dumps({"model_name": name, "outputs": outputs}), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--models", default="digits_cnn,digits_cnn_at")
    parser.add_argument("--label-only", action="store_true", help="answer the top-1 label only")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s before answering 429")
    parser.add_argument("--fault", choices=FAULTS, default="none", help="answer wrongly (fault tests)")
    parser.add_argument("--fault-control", action="store_true", help="allow POST /fault/{mode} (tests only)")
    parser.add_argument("--count-file", default=None)
    args = parser.parse_args(argv)
    models = {name: load_model(name) for name in args.models.split(",") if name}
    app = make_app(models, args.label_only, args.rate_limit, args.fault, args.count_file,
                   args.fault_control)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
