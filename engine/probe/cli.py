"""``gauntlet probe url=… max_requests=N duration=S [key=value …]``: the availability probe as a command."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, GauntletError, error_exit, subcommand_start

USAGE = """usage: gauntlet probe url=URL max_requests=N duration=SECONDS [key=value …]

Probe an image-upload endpoint's availability (docs/threat-model.md): latency p50/p99 and error rate at
increasing concurrency, then crafted inputs (the largest image the contract allows, an oversized image, a
malformed file, a decompression-bomb PNG, a slow client), each followed by a check that the service is up and
still answers a reference image as before. It never starts without a request cap and a duration, stops by
itself at either, and targets loopback only unless allow_remote=true (a service you own; never production).

keys: levels=[1,2,4,8] timeout=10 health=/health field=file side=32 channels=1 oversize_side=2048
      bomb_side=20000 allow_remote=false out_dir=DIR (writes DIR/probe.parquet)"""
INTS = ("max_requests", "side", "channels", "oversize_side", "bomb_side")
FLOATS = {"duration": "duration_s", "timeout": "timeout_s"}


def parse(argv: Sequence[str]) -> tuple[Any, str | None]:
    from engine.probe.run import ProbeSettings

    raw: dict[str, Any] = {}
    out_dir = None
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq:
            raise ConfigError(f"argument {a!r} is not key=value (gauntlet probe --help)")
        try:
            if key in INTS:
                raw[key] = int(value)
            elif key in FLOATS:
                raw[FLOATS[key]] = float(value)
                if not math.isfinite(raw[FLOATS[key]]) or raw[FLOATS[key]] <= 0:
                    raise ValueError
            elif key == "levels":
                raw[key] = tuple(int(v) for v in re.split(r"[\s,]+", value.strip("[] ")) if v)
            elif key == "allow_remote":
                raw[key] = value.lower() in ("true", "1", "yes")
            elif key in ("url", "health", "field"):
                raw[key] = value
            elif key == "out_dir":
                out_dir = value
            else:
                raise ConfigError(f"unknown key {key!r} (gauntlet probe --help)")
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a valid value (a positive number)") from None
    for key, name in (("url", "url"), ("max_requests", "max_requests"), ("duration_s", "duration")):
        if key not in raw:
            raise ConfigError(f"{name}= is required: the probe never starts without a target, a request cap and "
                              "a duration (gauntlet probe --help)")
    if not raw.get("levels", (1,)) or any(c < 1 for c in raw.get("levels", (1,))):
        raise ConfigError("levels= must list concurrency levels ≥ 1, e.g. levels=[1,2,4,8]")
    return ProbeSettings(**raw), out_dir


def reference_image(side: int) -> Any:
    """A digits test image (label known to the service's model) at the contract's size, uint8."""
    import numpy as np
    from PIL import Image

    from engine.data.digits import load_digits

    img = (load_digits(split="test").images[0, 0].numpy() * 255).round().astype(np.uint8)
    return img if side == img.shape[0] else np.asarray(Image.fromarray(img).resize((side, side)))


def _print(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["phase"] == "load":
            print(f"load  c={r['concurrency']:<3} requests {r['requests']:>5}  errors {r['error_rate']:.1%}  "
                  f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms")
        else:
            print(f"input {r['case']:<16} {r.get('note')}; up afterwards: {r.get('stayed_up')}, "
                  f"correct afterwards: {r.get('correct_after')}")


def main(argv: Sequence[str]) -> int:
    started = subcommand_start(argv, USAGE)
    if started is not None:
        return started
    try:
        from engine.probe.run import probe

        settings, out_dir = parse(argv)
        rows = probe(settings, reference_image(settings.side))
        if out_dir:
            import pyarrow as pa

            from engine.store.parquet import write_atomic

            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_atomic(pa.Table.from_pylist(rows), Path(out_dir) / "probe.parquet")
    except GauntletError as exc:
        return error_exit(exc)
    _print(rows)
    print(f"\n{rows[0]['requests_total']} requests to {rows[0]['target']} (cap {settings.max_requests})")
    return 0
