"""A content-moderation style upload endpoint: JPEG-re-encodes and resizes what it receives, rate-limits with 429.

    python examples/targets/upload_app.py --port 8081 --model digits_cnn --jpeg-quality 75

``POST /classify`` takes one image as multipart form data (field ``file``) or JSON ``{"image": base64}`` and
answers ``{"label": int, "scores": [probabilities]}`` (``--label-only``: the label alone; ``--round``: scores
rounded). ``GET /stats`` gives the requests and images answered and the 429s sent; ``GET /health`` readiness.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
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
from PIL import Image

from examples.targets.common import FAULTS, base_app, faulty, load_model


def preprocess(data: bytes, size: int, quality: int | None, channels: int) -> torch.Tensor:
    """What the service does before its model sees the image: decode, resize, JPEG re-encode, decode again."""
    with Image.open(io.BytesIO(data)) as img:
        pil = img.convert("L" if channels == 1 else "RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    if quality is not None:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        with Image.open(io.BytesIO(buf.getvalue())) as again:
            pil = again.convert(pil.mode)
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())[None]


async def _image_bytes(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ValueError("no file field")
        return await upload.read()
    return base64.b64decode(json.loads(await request.body())["image"])


def make_app(model: torch.nn.Module, size: int = 32, channels: int = 1, quality: int | None = 75,
             rate: float | None = None, label_only: bool = False, round_digits: int | None = None,
             fault: str = "none", count_file: str | None = None,
             fault_control: bool = False) -> FastAPI:
    app, counter, gate, state, flaky = base_app(count_file, rate, fault, fault_control)

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/stats")
    def stats() -> dict[str, int]:
        return counter.as_dict()

    @app.post("/classify")
    async def classify(request: Request) -> Any:
        if not gate.admit():
            counter.add(throttled=1)
            return JSONResponse({"error": "rate limit"}, 429, headers={"Retry-After": "1"})
        if state["fault"] == "flaky" and flaky.fails_now():
            return JSONResponse({"error": "unavailable"}, 503)
        if state["fault"] == "slow":
            await asyncio.sleep(2.0)  # past the client's timeout in the fault tests
        try:
            x = preprocess(await _image_bytes(request), size, quality, channels)
        except (KeyError, ValueError, OSError) as err:
            return JSONResponse({"error": f"bad image: {err}"}, 400)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)[0]
        counter.add(images=1)
        if state["fault"] == "malformed":
            return Response(b'{"label": 3, "scores": [0.1', media_type="application/json")
        scores = probs.tolist() if round_digits is None else [round(v, round_digits) for v in probs.tolist()]
        body: dict[str, Any] = {"label": int(probs.argmax())}
        if not label_only:
            body["scores"] = faulty([scores], state["fault"])[0]
        if state["fault"] == "missing_field":
            body = {"result": body}
        return Response(json.dumps(body), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--size", type=int, default=32, help="the model's input size the service resizes to")
    parser.add_argument("--jpeg-quality", type=int, default=75, help="re-encoding quality; 0 turns it off")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s before answering 429")
    parser.add_argument("--label-only", action="store_true")
    parser.add_argument("--round", type=int, default=None, dest="round_digits")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--fault-control", action="store_true", help="allow POST /fault/{mode} (tests only)")
    parser.add_argument("--count-file", default=None)
    args = parser.parse_args(argv)
    app = make_app(load_model(args.model), args.size, 1, args.jpeg_quality or None, args.rate_limit,
                   args.label_only, args.round_digits, args.fault, args.count_file,
                   args.fault_control)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
