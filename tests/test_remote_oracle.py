"""The in-process oracle: the pixels sent, every row counted, cache, budgets raised before anything is sent."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from engine.errors import ConfigError
from engine.remote.accounting import LocalLimiter
from engine.remote.api import Oracle, QueryBudgetExhausted, RemoteError, oracle_of
from engine.remote.encoding import ImageContract, decode_one, encode_one, to_grid
from engine.remote.local import LocalOracle


class Counting(nn.Module):
    """A fixed linear classifier on 1×8×8 that records every image it sees."""

    def __init__(self, classes: int = 10, bad: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, classes)
        self.seen: list[torch.Tensor] = []
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        out = self.fc(x.flatten(1))
        if self.bad == "nan":
            out[0, 0] = float("nan")
        return out


def _batch(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _ids(n: int) -> torch.Tensor:
    return torch.arange(n)


def test_png_sends_the_8_bit_grid_and_the_model_sees_exactly_it() -> None:
    model = Counting()
    oracle = LocalOracle(model, num_classes=10)
    x = _batch()
    sent = oracle.sent(x)
    assert torch.equal(sent, torch.round(x * 255) / 255)
    assert not torch.equal(sent, x)
    answer = oracle.query(x, _ids(6))
    assert torch.equal(model.seen[0], sent)
    assert torch.equal(answer.labels, model.fc(sent.flatten(1)).argmax(1))
    assert torch.allclose(answer.scores.sum(1), torch.ones(6))  # type: ignore[union-attr]


def test_jpeg_sent_pixels_are_the_decoded_bytes_sent() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model = Counting(10)
    model.fc = nn.Linear(3 * 16 * 16, 10)
    oracle = LocalOracle(model, num_classes=10, encoding="jpeg", jpeg_quality=30)
    sent = oracle.sent(x)
    contract = ImageContract("jpeg", 30)
    expect = torch.stack([decode_one(encode_one(r, contract), 3) for r in to_grid(x)]).float() / 255
    assert torch.equal(sent, expect)
    assert (sent - x).abs().max() > 0.05  # JPEG at q=30 really changed the pixels
    oracle.query(x, _ids(3))
    assert torch.equal(model.seen[0], sent)


def test_every_row_is_counted_and_identical_queries_come_from_the_cache() -> None:
    model = Counting()
    oracle = LocalOracle(model, num_classes=10)
    x = _batch(4)
    first = oracle.query(torch.cat([x, x[:1]]), torch.tensor([0, 1, 2, 3, 0]))  # a duplicate in the batch
    assert first.cached.tolist() == [False, False, False, False, True]
    second = oracle.query(x, _ids(4))
    assert second.cached.all()
    assert torch.equal(second.labels, first.labels[:4])
    assert torch.equal(second.scores, first.scores[:4])  # type: ignore[arg-type,index]
    stats = oracle.run_stats()
    assert (stats["rows"], stats["cached"], stats["sent"], stats["calls"]) == (9, 5, 4, 1)
    assert sum(len(s) for s in model.seen) == 4  # the model saw each distinct image once
    assert oracle.used(_ids(4)).tolist() == [3, 2, 2, 2]  # per-sample counts include cache hits
    assert stats["run_budget_spent"] == 4


def test_without_cache_every_row_reaches_the_model() -> None:
    model = Counting()
    oracle = LocalOracle(model, num_classes=10, cache=False)
    x = _batch(3)
    oracle.query(x, _ids(3))
    again = oracle.query(x, _ids(3))
    assert not again.cached.any()
    assert oracle.run_stats()["sent"] == 6


def test_per_sample_budget_is_refused_before_anything_is_sent() -> None:
    model = Counting()
    oracle = LocalOracle(model, num_classes=10, budget_per_sample=2)
    oracle.query(_batch(2, 1), _ids(2))
    oracle.query(_batch(2, 2), _ids(2))
    assert oracle.remaining(_ids(3)).tolist() == [0, 0, 2]
    with pytest.raises(QueryBudgetExhausted, match="budget of 2"):
        oracle.query(_batch(2, 3), torch.tensor([2, 0]))
    assert len(model.seen) == 2 and oracle.run_stats()["sent"] == 4  # nothing more was sent
    assert oracle.used(_ids(3)).tolist() == [2, 2, 0]  # and nothing was charged
    with oracle.scope("square@0.1", 3):  # a new scope starts from zero with its own budget
        assert oracle.remaining(_ids(2)).tolist() == [3, 3]
        oracle.query(_batch(2, 3), _ids(2))
        assert oracle.used(_ids(2)).tolist() == [1, 1]
    assert oracle.used(_ids(2)).tolist() == [2, 2]


def test_run_budget_counts_sent_rows_and_is_refused_before_sending() -> None:
    model = Counting()
    oracle = LocalOracle(model, num_classes=10, run_budget=5)
    oracle.query(_batch(4, 1), _ids(4))
    oracle.query(_batch(4, 1), _ids(4))  # all cached: costs the run nothing
    with pytest.raises(QueryBudgetExhausted, match=r"run's query budget \(5\)"):
        oracle.query(_batch(2, 2), _ids(2))
    assert oracle.run_stats()["sent"] == 4 and len(model.seen) == 1
    oracle.query(_batch(1, 3), _ids(1))
    assert oracle.limiter.spent() == 5


def test_run_budget_counts_what_earlier_attempts_spent() -> None:
    oracle = LocalOracle(Counting(), num_classes=10, limiter=LocalLimiter(run_budget=5, already_spent=4))
    oracle.query(_batch(1), _ids(1))
    with pytest.raises(QueryBudgetExhausted):
        oracle.query(_batch(1, 9), _ids(1))


def test_label_topk_rounded_contracts() -> None:
    x = _batch(5)
    label = LocalOracle(Counting(), num_classes=10, output="label").query(x, _ids(5))
    assert label.scores is None
    probs = LocalOracle(Counting(), num_classes=10).query(x, _ids(5))
    assert torch.equal(label.labels, probs.labels)
    top = LocalOracle(Counting(), num_classes=10, output="topk", top_k=3, round_digits=2).query(x, _ids(5))
    assert top.scores is not None
    assert ((top.scores > 0).sum(1) <= 3).all()
    assert torch.allclose(top.scores * 100, torch.round(top.scores * 100))
    assert torch.equal(top.scores.argmax(1), probs.labels)
    with pytest.raises(ConfigError, match="top_k"):
        LocalOracle(Counting(), num_classes=10, output="topk")
    with pytest.raises(ConfigError, match="output must be one of"):
        LocalOracle(Counting(), num_classes=10, output="margins")  # type: ignore[arg-type]


def test_a_wrong_or_nan_answer_is_an_error_naming_the_field_never_a_prediction() -> None:
    with pytest.raises(RemoteError, match=r"7 classes.*declares 10.*field: scores"):
        LocalOracle(Counting(7), num_classes=10).query(_batch(2), _ids(2))
    with pytest.raises(RemoteError, match=r"NaN.*field: scores"):
        LocalOracle(Counting(10, bad="nan"), num_classes=10, output="logits").query(_batch(2), _ids(2))


def test_queries_to_success_and_protocol() -> None:
    oracle = LocalOracle(Counting(), num_classes=10)
    holder = nn.Module()
    holder.oracle = oracle  # type: ignore[assignment]
    assert isinstance(oracle, Oracle) and oracle_of(holder) is oracle
    with oracle.scope("hsj@0.2", 10):
        oracle.query(_batch(2, 1), _ids(2))
        oracle.query(_batch(2, 2), _ids(2))
        oracle.mark_success(torch.tensor([1]))
        oracle.query(_batch(2, 3), _ids(2))
        oracle.mark_success(torch.tensor([1]))  # a later success does not move the first
        assert oracle.queries_to_success(_ids(2)).tolist() == [-1, 2]


def test_bad_queries_are_refused_by_name() -> None:
    oracle = LocalOracle(Counting(), num_classes=10)
    with pytest.raises(ConfigError, match="NaN"):
        oracle.query(torch.full((1, 1, 8, 8), float("nan")), _ids(1))
    with pytest.raises(ConfigError, match="sample ids"):
        oracle.query(_batch(2), _ids(3))
    with pytest.raises(ConfigError, match="budget_per_sample"):
        LocalOracle(Counting(), num_classes=10, budget_per_sample=0)


def test_rate_limit_spaces_requests() -> None:
    limiter = LocalLimiter(rate_per_s=40.0, concurrency=1)
    start = time.monotonic()
    for _ in range(5):
        with limiter.slot():
            pass
    assert time.monotonic() - start >= 4 / 40.0 * 0.9  # a lower bound only: never wall-clock tight above


def test_oracle_for_prefers_the_remote_models_own_oracle() -> None:
    from engine.remote.local import oracle_for
    from engine.remote.model import RemoteModel

    inner = LocalOracle(Counting(), num_classes=10, output="label")
    remote = RemoteModel("r", inner)
    assert oracle_for(remote, 10, output="probs") is inner  # the endpoint's contract, not the caller's wish
    local = oracle_for(Counting(), 10, budget_per_sample=7)
    assert isinstance(local, LocalOracle) and local.remaining(torch.tensor([0])).tolist() == [7]
    x = _batch(3)
    assert torch.equal(remote(x).argmax(1), inner.query(x, _ids(3)).labels)  # forward: one-hot of the label


def test_a_lease_held_by_a_dead_holder_is_taken_back() -> None:
    from engine.remote.accounting import LeasedLimiter

    limiter = LeasedLimiter(concurrency=1, lease_s=0.2)
    limiter.acquire_lease()  # its holder "dies": never released
    second = limiter.acquire_lease()  # waits past the lease, then gets the slot back
    assert limiter.reclaimed == 1
    limiter.release_lease(second)
    assert limiter.acquire(timeout=0.01)  # the slot is free again, counted once
    limiter.release()
