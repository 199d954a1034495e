"""Query-based attacks against the served digits_cnn (examples/targets/oip_server.py on 127.0.0.1): the queries
Gauntlet reports equal what its oracle answered, and the images the server received equal what was sent (rows
minus cache hits); no sample exceeds its budget; the examples are the pixels the server received."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from engine.evaluation.checks import verify_batch
from engine.perturbations.base import BatchContext
from engine.perturbations.hopskipjump import HopSkipJump
from engine.perturbations.query import QueryAttack
from engine.perturbations.rays import RayS
from engine.perturbations.square_query import SquareQuery
from engine.remote.http import HttpSettings, OIPOracle
from tests.remote_servers import Server, serve

pytestmark = pytest.mark.timeout(300)
TAGS = ("black-box", "AML.T0043.001", "AML.T0040")


@pytest.fixture(scope="module")
def oip(embedded_checkpoints: dict[str, str]) -> Iterator[Server]:
    with serve("oip") as server:
        yield server


class Remote(nn.Module):
    """A target reached only through its OIP oracle (what RemoteModel is to an attack)."""

    def __init__(self, oracle: OIPOracle) -> None:
        super().__init__()
        self.oracle = oracle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a query-based attack must not call the model directly")


@pytest.mark.parametrize("att", [
    SquareQuery(name="sq", norm="linf", eps=[0.2], budget=60, tags=TAGS),
    HopSkipJump(name="hsj", norm="linf", eps=[0.2], budget=120, tags=TAGS),
    RayS(name="rays", norm="linf", eps=[0.1, 0.2], budget=60, tags=TAGS),
], ids=lambda a: a.name)
def test_reported_queries_equal_the_oracle_and_the_servers_counts(att: QueryAttack, oip: Server) -> None:
    from engine.data.digits import load_digits

    data = load_digits().slice(0, 4)
    x, y, ids = data.images, data.labels, data.sample_ids
    label = att.needs == "label"
    oracle = OIPOracle(oip.url, "digits_cnn", num_classes=10, output="label" if label else "probs",
                       output_name="label" if label else "probabilities", http=HttpSettings(retries=1, backoff_s=0.05),
                       max_batch=64)
    before = oip.stats()
    outs = list(att.run(x, y, BatchContext(Remote(oracle), 0, ids)))
    after, stats = oip.stats(), oracle.run_stats()
    assert sum(int(o.queries.sum()) for o in outs) == stats["rows"]  # every row the oracle answered, per sample
    assert after["images"] - before["images"] == stats["sent"] == stats["rows"] - stats["cached"]
    assert after["requests"] - before["requests"] == stats["calls"]
    for o in outs:
        assert int(o.queries.max()) <= att.budget
        verify_batch(att, o.level, oracle.sent(x), o.x)  # the ball around the clean image as the server got it
        broken = o.queries_to_success >= 0
        assert torch.equal(o.x[broken], oracle.sent(o.x[broken]))
