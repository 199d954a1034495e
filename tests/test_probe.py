"""``gauntlet probe``: refuses without a cap and a duration, loopback only, completes within its cap, and tells a
service that survives a decompression bomb from one made to hang on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.probe.cli import main, parse, reference_image
from engine.probe.payloads import bomb, malformed
from engine.probe.run import CASES, ProbeSettings, probe
from engine.remote.api import QueryBudgetExhausted
from engine.remote.raw import RawClient, is_loopback
from tests.remote_servers import SCRIPTS, Server, free_port, serve

pytestmark = pytest.mark.timeout(300)
FAST = dict(max_requests=40, duration_s=40.0, levels=(1, 4), timeout_s=4.0)


@pytest.mark.parametrize(("args", "match"), [
    (["url=http://127.0.0.1:1/classify", "duration=5"], "max_requests= is required"),
    (["url=http://127.0.0.1:1/classify", "max_requests=50"], "duration= is required"),
    (["max_requests=50", "duration=5"], "url= is required"),
    (["url=http://127.0.0.1:1/c", "max_requests=50", "duration=-1"], "not a valid value"),
    (["url=http://127.0.0.1:1/c", "max_requests=50", "duration=5", "levels=[0]"], "levels="),
    (["url=http://127.0.0.1:1/c", "max_requests=50", "duration=5", "rate=3"], "unknown key"),
])
def test_the_probe_never_starts_without_a_cap_and_a_duration(args: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(args)
    assert main(args) == 2


@pytest.mark.parametrize("url", ["http://10.20.30.40:8081/classify", "http://example.invalid/classify",
                                 "http://[2001:db8::1]/classify", "ftp://127.0.0.1/x"])
def test_non_loopback_targets_are_refused_before_anything_is_sent(url: str) -> None:
    with pytest.raises(ConfigError):
        RawClient(url, max_requests=5)


def test_loopback_detection_and_the_hard_cap() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("10.0.0.1")
    client = RawClient(f"http://127.0.0.1:{free_port()}/x", max_requests=2, timeout_s=1.0)
    assert [client.request().status for _ in range(2)] == [None, None]  # nothing listens: no answer, counted
    with pytest.raises(QueryBudgetExhausted):
        client.request()
    assert client.sent == 2


def test_payloads_are_what_they_claim() -> None:
    import io

    from PIL import Image

    with pytest.raises(Image.DecompressionBombError):  # Pillow's own guard recognises it from the header
        Image.open(io.BytesIO(bomb(20000)))
    assert len(bomb(20000)) < 100_000
    with pytest.raises(Exception):  # noqa: B017 - any decoder error: the file must not decode
        Image.open(io.BytesIO(malformed())).load()


@pytest.fixture(scope="module")
def upload(embedded_checkpoints: dict[str, str]) -> Iterator[Server]:
    with serve("upload", "--jpeg-quality", "75") as server:
        yield server


def test_probe_against_the_upload_app_completes_within_its_cap(upload: Server) -> None:
    before = upload.stats()
    rows = probe(ProbeSettings(url=f"{upload.url}/classify", **FAST), reference_image(32))
    assert {r["host"] for r in rows} == {"127.0.0.1"} and {r["target"] for r in rows} == {f"{upload.url}/classify"}
    total = rows[0]["requests_total"]
    assert total <= 40
    load = [r for r in rows if r["phase"] == "load"]
    assert [r["concurrency"] for r in load] == [1, 4]
    assert all(r["requests"] > 0 and r["error_rate"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in load)
    crafted = {r["case"]: r for r in rows if r["phase"] == "crafted"}
    assert list(crafted) == list(CASES)
    assert crafted["malformed"]["note"] == "refused (HTTP 400)"
    assert crafted["bomb"]["note"].startswith(("refused", "server error"))  # Pillow's guard: no decode
    assert all(r["stayed_up"] and r["correct_after"] for r in crafted.values())
    assert {r["stride"] for r in rows} == {"denial-of-service"} and "AML.T0029" in rows[0]["atlas"]
    # the app counts the images it answered: never more than the probe sent
    assert upload.stats()["images"] - before["images"] <= total


def test_probe_detects_an_app_made_to_hang_on_the_bomb(embedded_checkpoints: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCRIPTS, "upload_hang", (Path(__file__).parent / "probe_hang_app.py", "/health"))
    server = Server("upload_hang", free_port(), ("--jpeg-quality", "0"))
    server.start()
    try:
        rows = probe(ProbeSettings(url=f"{server.url}/classify", **{**FAST, "levels": (1,)}), reference_image(32))
    finally:
        server.stop()
    crafted = {r["case"]: r for r in rows if r["phase"] == "crafted"}
    assert crafted["largest_allowed"]["stayed_up"] and crafted["malformed"]["stayed_up"]
    assert crafted["bomb"]["note"] == "hung: no answer within 4 s"
    assert crafted["bomb"]["stayed_up"] is False and crafted["bomb"]["correct_after"] is False
    assert crafted["slow_client"]["note"] == "skipped: the service was down after bomb"
    assert rows[0]["requests_total"] <= 40


def test_the_cli_writes_parquet_and_prints_every_level_and_input(upload: Server, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    code = main([f"url={upload.url}/classify", "max_requests=30", "duration=30", "levels=[2]", "timeout=4",
                 f"out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = pq.read_table(tmp_path / "probe.parquet")
    assert table.num_rows == 1 + len(CASES)
    assert "load  c=2" in out and "input bomb" in out and "(cap 30)" in out
