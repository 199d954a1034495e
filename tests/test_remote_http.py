"""The HTTP oracles against real servers on 127.0.0.1 (examples/targets/): answers, exact counts, faults, secrets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.data.digits import load_digits
from engine.errors import ConfigError
from engine.remote.api import QueryBudgetExhausted, RemoteError
from engine.remote.encoding import ImageContract
from engine.remote.http import HttpSettings, OIPOracle, UploadOracle
from engine.remote.local import LocalOracle
from examples.targets.common import load_model
from tests.remote_servers import Server, serve

pytestmark = pytest.mark.timeout(300)
TOKEN = "s3cr3t-token-for-tests-7f2a"


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return data.images[:48], data.labels[:48]


@pytest.fixture(scope="module")
def oip(embedded_checkpoints: dict[str, str]) -> Iterator[Server]:
    with serve("oip", "--fault-control", env={"TARGET_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def upload(embedded_checkpoints: dict[str, str]) -> Iterator[Server]:
    with serve("upload", "--fault-control", "--rate-limit", "25", "--jpeg-quality", "60") as server:
        yield server


def _auth(monkeypatch: pytest.MonkeyPatch) -> HttpSettings:
    monkeypatch.setenv("GAUNTLET_TEST_TOKEN", TOKEN)
    return HttpSettings(auth_env="GAUNTLET_TEST_TOKEN", retries=1, backoff_s=0.05)


def test_oip_answers_match_the_model_in_process_and_counts_match_the_server(
        oip: Server, digits: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = digits
    before = oip.stats()
    remote = OIPOracle(oip.url, "digits_cnn", num_classes=10, http=_auth(monkeypatch), max_batch=20)
    local = LocalOracle(load_model("digits_cnn"), num_classes=10)
    ids = torch.arange(len(x))
    got, want = remote.query(x, ids), local.query(x, ids)
    assert torch.equal(got.labels, want.labels)
    assert torch.allclose(got.scores, want.scores, atol=1e-5)  # type: ignore[arg-type]
    again = remote.query(torch.cat([x[:5], x[:5] + 1 / 255]), torch.arange(10) % 5)  # 5 cached, 5 new
    assert again.cached.tolist() == [True] * 5 + [False] * 5
    after = oip.stats()
    stats = remote.run_stats()
    assert after["images"] - before["images"] == stats["sent"] == 53
    assert after["requests"] - before["requests"] == stats["calls"] == 4  # 20 + 20 + 8, then 5
    assert (stats["rows"], stats["cached"]) == (58, 5)
    assert TOKEN not in repr(stats)


@pytest.mark.parametrize("binary", [False, True])
def test_oip_uint8_tensors_and_label_only(oip: Server, digits: tuple[torch.Tensor, torch.Tensor],
                                          monkeypatch: pytest.MonkeyPatch, binary: bool) -> None:
    x, y = digits
    label = OIPOracle(oip.url, "digits_cnn_at", num_classes=10, output="label", output_name="label",
                      tensor="uint8", binary=binary, http=_auth(monkeypatch))
    answer = label.query(x, torch.arange(len(x)))
    assert answer.scores is None
    assert (answer.labels == y).float().mean() > 0.8
    scores = OIPOracle(oip.url, "digits_cnn_at", num_classes=10, binary=binary, http=_auth(monkeypatch))
    want = LocalOracle(load_model("digits_cnn_at"), num_classes=10).query(x, torch.arange(len(x)))
    got = scores.query(x, torch.arange(len(x)))
    assert torch.equal(got.labels, answer.labels) and torch.allclose(got.scores, want.scores, atol=1e-5)


def test_without_the_token_the_call_fails_naming_endpoint_and_status(
        oip: Server, digits: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = OIPOracle(oip.url, "digits_cnn", num_classes=10)
    with pytest.raises(RemoteError, match=r"127\.0\.0\.1:\d+/v2/models/digits_cnn/infer: HTTP 401"):
        oracle.query(digits[0][:2], torch.arange(2))
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        OIPOracle(oip.url, "digits_cnn", num_classes=10, http=HttpSettings(auth_env="NOT_SET_ANYWHERE"))


def test_wrong_num_classes_in_the_contract_is_named(oip: Server, digits: tuple[torch.Tensor, torch.Tensor],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = OIPOracle(oip.url, "digits_cnn", num_classes=12, http=_auth(monkeypatch))
    with pytest.raises(RemoteError, match=r"10 classes, the contract declares 12 \(field: outputs.data"):
        oracle.query(digits[0][:3], torch.arange(3))


def test_per_sample_budget_holds_against_the_server(oip: Server, digits: tuple[torch.Tensor, torch.Tensor],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = OIPOracle(oip.url, "digits_cnn", num_classes=10, budget_per_sample=2, http=_auth(monkeypatch))
    before = oip.stats()["images"]
    x = digits[0][:4]
    for k in range(2):
        oracle.query(x + k / 255, torch.arange(4))
    with pytest.raises(QueryBudgetExhausted):
        oracle.query(x + 3 / 255, torch.arange(4))
    assert oip.stats()["images"] - before == 8 == oracle.run_stats()["sent"]


@pytest.mark.parametrize(("fault", "field"), [("malformed", "body"), ("wrong_classes", "outputs.data"),
                                               ("nan", "outputs.data"), ("missing_field", "outputs")])
def test_oip_faults_are_errors_naming_the_field(fault: str, field: str, oip: Server,
                                                digits: tuple[torch.Tensor, torch.Tensor],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = OIPOracle(oip.url, "digits_cnn", num_classes=10, http=_auth(monkeypatch))
    oip.fault(fault)
    try:
        with pytest.raises(RemoteError, match=rf"127\.0\.0\.1.*field: {field}"):
            oracle.query(digits[0][:3], torch.arange(3))
    finally:
        oip.fault("none")
    assert oracle.run_stats()["failed"] == 1
    assert oracle.query(digits[0][:3], torch.arange(3)).cached.sum() == 0  # nothing was cached from the fault


def test_upload_app_jpeg_reencoding_429_and_exact_counts(upload: Server,
                                                         digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    before = upload.stats()
    server = upload
    multipart = UploadOracle(server.url + "/classify", num_classes=10, scores_path="scores",
                             http=HttpSettings(retries=1), concurrency=4)
    answer = multipart.query(x[:30], torch.arange(30))
    as_json = UploadOracle(server.url + "/classify", num_classes=10, output="label", mode="base64_json",
                           field="image", image=ImageContract("jpeg", 90))
    labels = as_json.query(x[:10], torch.arange(10)).labels
    counts = {k: v - before[k] for k, v in server.stats().items()}
    assert (answer.labels == y[:30]).float().mean() > 0.8 and (labels == y[:10]).float().mean() > 0.7
    first, second = multipart.run_stats(), as_json.run_stats()
    assert counts["images"] == first["sent"] + second["sent"] == 40
    assert counts["requests"] == first["calls"] + second["calls"] == 40
    assert counts["throttled"] == first["throttled"] + second["throttled"] > 0  # it slowed down and finished


@pytest.mark.parametrize(("fault", "field"), [("malformed", "body"), ("wrong_classes", "scores"),
                                               ("nan", "scores"), ("missing_field", "'scores'")])
def test_upload_faults_are_errors_naming_the_field(fault: str, field: str, upload: Server,
                                                   digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    oracle = UploadOracle(upload.url + "/classify", num_classes=10, scores_path="scores",
                          http=HttpSettings(retries=0))
    upload.fault(fault)
    try:
        with pytest.raises(RemoteError, match=rf"127\.0\.0\.1.*{field}"):
            oracle.query(digits[0][:2] + 0.5 / 255, torch.arange(2))
    finally:
        upload.fault("none")


def test_a_killed_server_fails_naming_the_endpoint_and_refunds_the_run_budget(
        oip: Server, digits: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    """Last in the file: it kills the module's server and starts it again on the same port."""
    x = digits[0] + 2 / 255  # rows no other test sent
    monkeypatch.setenv("GAUNTLET_TEST_TOKEN", TOKEN)
    oracle = OIPOracle(oip.url, "digits_cnn", num_classes=10, run_budget=100,
                       http=HttpSettings(retries=2, backoff_s=0.05, auth_env="GAUNTLET_TEST_TOKEN"))
    oracle.query(x[:4], torch.arange(4))
    oip.stop()
    with pytest.raises(RemoteError, match=r"127\.0\.0\.1:\d+/v2/models/digits_cnn/infer: connection failed"):
        oracle.query(x[4:8], torch.arange(4))
    stats = oracle.run_stats()
    assert (stats["sent"], stats["run_budget_spent"], stats["retries"], stats["failed"]) == (4, 4, 2, 1)
    oip.start()  # the same port again: the oracle goes on where it stopped
    answer = oracle.query(x[:8], torch.arange(8))
    assert answer.cached.tolist() == [True] * 4 + [False] * 4
    assert oip.stats()["images"] == 4  # the restarted server saw only the four never answered


def test_5xx_is_retried_and_counted_a_timeout_fails_naming_it(upload: Server,
                                                               digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = digits[0][:3] + 3 / 255
    oracle = UploadOracle(upload.url + "/classify", num_classes=10, scores_path="scores",
                          http=HttpSettings(retries=2, backoff_s=0.05, timeout_s=0.5), concurrency=1)
    before = upload.stats()
    upload.fault("flaky")
    try:
        answer = oracle.query(x, torch.arange(3))
    finally:
        upload.fault("none")
    stats = oracle.run_stats()
    assert len(answer.labels) == 3 and stats["retries"] >= 1 and stats["sent"] == 3
    assert upload.stats()["images"] - before["images"] == 3  # a 503 answered nothing: no image counted twice
    upload.fault("slow")
    try:
        with pytest.raises(RemoteError, match=r"127\.0\.0\.1:\d+/classify: timed out after 0\.5 s after 3 attempt"):
            oracle.query(x + 1 / 255, torch.arange(3))
    finally:
        upload.fault("none")
    assert oracle.run_stats()["timeouts"] == 3
