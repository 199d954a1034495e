"""The upload app (JPEG re-encoding) as a sweep target: examples crafted without knowing the re-encoding (a transfer
from the local model, sent once) are scored by the app's answer after re-encoding, and every recorded perturbation
size is measured on the pixels sent (the decoded JPEG the oracle put on the wire, for the declared-JPEG contract).

One tiny sweep (scripts/bench_upload_jpeg.py's, at n=8, Square ≤ 100 queries, PGD 5 steps) against
examples/targets/upload_app.py on 127.0.0.1, always stopped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.remote.encoding import ImageContract, decode_one, encode_one, row_keys, to_grid
from engine.remote.http import UploadOracle
from engine.remote.local import LocalOracle
from engine.store.examples import load
from engine.store.results import read
from engine.sweep import run_sweep
from examples.targets.common import load_model
from examples.targets.upload_app import preprocess
from tests.conftest import load_script
from tests.remote_servers import serve

pytestmark = pytest.mark.timeout(300)
QUALITY, EPS = 75, 0.2


def _bench() -> Any:
    return load_script("bench_upload_jpeg")


@pytest.fixture(scope="module")
def swept(embedded_checkpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the sweep once; record every file the oracles sent (the bytes on the wire)."""
    out = tmp_path_factory.mktemp("upload_jpeg") / "run"
    wire: dict[str, set[bytes]] = {"png": set(), "jpeg": set()}  # per contract
    real = UploadOracle._fetch

    def recording(self: UploadOracle, grid: torch.Tensor, payloads: list[bytes] | None) -> Any:
        wire[self.image.encoding].update(payloads or [])
        return real(self, grid, payloads)

    bench = _bench()
    mp = pytest.MonkeyPatch()
    mp.setattr(UploadOracle, "_fetch", recording)
    try:
        with serve("upload", "--jpeg-quality", str(QUALITY)) as server:
            cfg = bench.sweep_config(server.url + "/classify", out, n=8, eps=[EPS], budget=100, quality=QUALITY,
                                     pgd_steps=5, batch_size=8)
            cfg.update(save_examples="all")
            run_sweep(cfg)
    finally:
        mp.undo()
    return {"out": out, "wire": wire, "table": bench.success_table(out, EPS)}


def test_re_querying_the_pixels_sent_sends_the_same_file_so_they_arrive_unchanged() -> None:
    """JPEG is not idempotent: an attack that queries the decoded pixels it was given must not have them encoded
    again (they would arrive moved, and its size would be measured on pixels the endpoint never saw)."""
    seen: list[torch.Tensor] = []

    class Recording(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return x.flatten(1)[:, :10]

    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    oracle = LocalOracle(Recording(), num_classes=10, encoding="jpeg", jpeg_quality=QUALITY)
    held = oracle.sent(x)
    again = ImageContract("jpeg", QUALITY)
    twice = torch.stack([decode_one(encode_one(r, again), 1) for r in to_grid(held)]).float() / 255
    assert not torch.equal(twice, held)  # encoding the decoded pixels again would move them
    oracle.query(held, torch.arange(4))
    assert torch.equal(seen[-1], held) and torch.equal(oracle.sent(held), held)
    oracle.query(x, torch.arange(4))  # the float image itself is encoded once: the endpoint sees its decoding
    assert torch.equal(seen[-1], held)


def _rows(out: Path) -> dict[tuple[str, str, float, int], dict[str, Any]]:
    t = read(out).to_pylist()
    return {(r["model"], r["perturbation"], r["level"], r["sample_id"]): r for r in t}


CONTRACTS = {"upload_png": ImageContract("png"), "upload_known": ImageContract("png", reencode_jpeg=QUALITY),
             "upload_jpeg": ImageContract("jpeg", QUALITY)}


@pytest.mark.parametrize("model", sorted(CONTRACTS))
def test_every_recorded_size_is_measured_on_the_file_that_was_sent(swept: dict[str, Any], model: str) -> None:
    contract, rows = CONTRACTS[model], _rows(swept["out"])
    wire = swept["wire"][contract.encoding]
    ex = load(swept["out"], model=model)
    keys = ex.keys.to_pylist()
    assert {k["perturbation"] for k in keys} == {"square", "xfer_square", "xfer_pgd"}
    # an example that is the decoding of a file sent (what the attacks hold) was sent as that very file
    by_pixels = {row_keys(decode_one(f, 1)[None])[0]: f for f in wire}
    changed = 0
    for i, k in enumerate(keys):
        grid = to_grid(ex.x[i:i + 1])
        sent_adv = by_pixels.get(row_keys(grid)[0]) or encode_one(grid[0], contract)
        sent_clean = encode_one(to_grid(ex.clean[i:i + 1])[0], contract)
        assert sent_adv in wire and sent_clean in wire  # these very files reached the app
        adv, clean = decode_one(sent_adv, 1).double() / 255, decode_one(sent_clean, 1).double() / 255
        size = float((adv - clean).abs().max())
        row = rows[(model, k["perturbation"], k["level"], k["sample_id"])]
        assert row["perturbation_size"] == pytest.approx(size, abs=1e-6), k  # float32 pixels; a grid step is 4e-3
        changed += size > 0
    assert changed >= 8  # real examples were measured, not only clean copies


def test_transferred_examples_are_scored_by_the_apps_answer_after_re_encoding(swept: dict[str, Any]) -> None:
    """The not-knowing rows' ``pred`` is what the app answers for the PNG it received, JPEG-re-encoded at q75."""
    model, rows = load_model("digits_cnn"), _rows(swept["out"])
    ex = load(swept["out"], model="upload_png")
    keys = ex.keys.to_pylist()
    xfer = [i for i, k in enumerate(keys) if k["perturbation"].startswith("xfer_") and k["level"] == EPS]
    assert len(xfer) >= 8
    for i in xfer:
        png = encode_one(to_grid(ex.x[i:i + 1])[0], ImageContract("png"))
        with torch.no_grad():
            app = int(model(preprocess(png, 32, QUALITY, 1)).argmax())
        k = keys[i]
        assert rows[("upload_png", k["perturbation"], k["level"], k["sample_id"])]["pred"] == app, k
    with Image.open(io.BytesIO(png)) as img:  # what was sent is lossless: the app re-encodes, not the client
        assert img.format == "PNG"


def test_the_success_table_counts_what_the_rows_say(swept: dict[str, Any]) -> None:
    """Success = the app answered the clean image right and the example wrong (``fooled``), and, stricter, with the
    size recorded on the pixels sent ≤ ε (``fooled_in``); each interval contains its rate."""
    t = read(swept["out"]).to_pandas()
    for r in swept["table"]:
        g = t[(t["model"] == r["model"]) & (t["perturbation"] == r["perturbation"])]
        clean = g[g["level"] == 0].set_index("sample_id")["correct"]
        at = g[np.isclose(g["level"], EPS)].set_index("sample_id")
        a = at.loc[clean[clean].index]
        wrong = ~a["correct"].astype(bool)
        assert r["attacked"] == len(a) and r["fooled"] == int(wrong.sum())
        assert r["fooled_in"] == int((wrong & (a["perturbation_size"] <= EPS + 1e-6)).sum()) <= r["fooled"]
        for key in ("fooled", "fooled_in"):
            lo, hi = r[f"{key}_ci"]
            assert lo <= r[f"{key}_rate"] <= hi
    got = {(r["model"], r["perturbation"]) for r in swept["table"]}
    assert got == {(m, p) for m in ("digits_cnn", *CONTRACTS) for p in ("square", "xfer_square", "xfer_pgd")}
    local = {r["perturbation"]: r for r in swept["table"] if r["model"] == "digits_cnn"}
    assert local["square"]["fooled"] == local["xfer_square"]["fooled"]  # same attack, seeds, budget: same examples
