"""Query-based attacks through the oracle (Square on scores, HopSkipJump L2/L∞, RayS L∞) on the embedded digits_cnn.

Each attack is run on a model reached only through a LocalOracle (what a remote model looks like to an attack):
it lowers accuracy, every example is in the ball as the engine checks it, per-sample queries stay within the
budget and equal the oracle's own count, results are deterministic per seed and do not depend on the batch,
and no budget (per sample or per run) ever ends the sweep with QueryBudgetExhausted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from engine.errors import ConfigError
from engine.evaluation.checks import verify_batch
from engine.evaluation.resources import Resources
from engine.perturbations.base import BatchContext, LevelOutput
from engine.perturbations.hopskipjump import HopSkipJump
from engine.perturbations.query import QueryAttack
from engine.perturbations.rays import RayS
from engine.perturbations.square_query import SquareQuery
from engine.remote.api import Answer, Output
from engine.remote.local import LocalOracle
from tests.conftest import compose_dict

TAGS = ("black-box", "AML.T0043.001", "AML.T0040")


class CountingOracle(LocalOracle):
    """A LocalOracle that also logs every row it is asked about, as (sample id): the test's own count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []

    def query(self, x: torch.Tensor, sample_ids: torch.Tensor) -> Answer:
        ans = super().query(x, sample_ids)  # refused queries raise before anything is logged
        self.asked += [int(s) for s in sample_ids.tolist()]
        return ans


class Served(nn.Module):
    """A model reached only through its oracle (engine.remote.api.oracle_of finds ``.oracle``)."""

    def __init__(self, model: nn.Module, output: Output = "logits", **kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.oracle = CountingOracle(model, output=output, num_classes=10, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


@pytest.fixture(scope="module")
def digits(embedded_checkpoints: dict[str, str]) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = compose_dict()
    res = Resources(torch.device("cpu"))
    data = res.dataset(cfg["dataset"]).slice(0, 6)
    return res.model("digits_cnn", cfg["model"]["digits_cnn"]), data.images, data.labels, data.sample_ids


ATTACKS = {
    "square_linf": lambda b: SquareQuery(name="sq", norm="linf", eps=[0.2], budget=b or 300, tags=TAGS),
    "square_l2": lambda b: SquareQuery(name="sq2", norm="l2", eps=[3.0], budget=b or 300, tags=TAGS),
    "hopskipjump_linf": lambda b: HopSkipJump(name="hsj", norm="linf", eps=[0.2], budget=b or 1000, tags=TAGS),
    "hopskipjump_l2": lambda b: HopSkipJump(name="hsj2", norm="l2", eps=[3.0], budget=b or 1000, tags=TAGS),
    "rays_linf": lambda b: RayS(name="rays", norm="linf", eps=[0.2], budget=b or 300, tags=TAGS),
}


def _run(att: QueryAttack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
         **oracle: Any) -> tuple[list[LevelOutput], Served]:
    served = Served(model, "label" if att.needs == "label" else "logits", **oracle)
    return list(att.run(x, y, BatchContext(served, 7, ids))), served


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_lowers_accuracy_within_eps_and_counts_every_query(name: str, digits: Any) -> None:
    model, x, y, ids = digits
    att = ATTACKS[name](None)
    (out,), served = _run(att, model, x, y, ids)
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum())
        robust = int((model(out.x).argmax(1) == y).sum())
    assert robust < clean, f"{name} broke nothing ({robust}/{clean})"
    # the engine's own ball and box check (raises if outside), around the clean image as the target receives it
    sizes = verify_batch(att, out.level, served.oracle.sent(x), out.x)
    assert float(sizes.max()) <= att.ball.bound(out.level)
    broken = out.queries_to_success >= 0
    assert torch.equal(out.x[broken], served.oracle.sent(out.x[broken])), "not the pixels the target received"
    assert torch.equal(out.x[~broken], x[~broken])  # an unbroken sample is returned as it was
    assert int(out.queries.max()) <= att.budget
    counted = torch.tensor([served.oracle.asked.count(int(s)) for s in ids])
    assert torch.equal(out.queries, counted), "reported queries differ from the oracle's own count"
    assert int(out.queries.sum()) == served.oracle.stats.rows
    with torch.no_grad():
        wrong = model(out.x).argmax(1) != y
    assert bool(broken.any()) and torch.equal(broken & ~wrong, torch.zeros_like(broken))
    assert torch.equal(out.queries_to_success[broken], out.queries[broken])  # it stops when broken


@pytest.mark.parametrize("name", ["square_linf", "hopskipjump_linf", "rays_linf"])
def test_deterministic_per_seed_and_independent_of_the_batch(name: str, digits: Any) -> None:
    model, x, y, ids = digits
    att = ATTACKS[name](200)
    (a,), _ = _run(att, model, x, y, ids)
    (b,), _ = _run(att, model, x, y, ids)
    assert torch.equal(a.x, b.x) and torch.equal(a.queries, b.queries)
    pick = torch.tensor([4, 1])  # two samples alone, in another order
    (c,), _ = _run(att, model, x[pick], y[pick], ids[pick])
    assert torch.equal(c.x, a.x[pick]) and torch.equal(c.queries, a.queries[pick])
    assert torch.equal(c.queries_to_success, a.queries_to_success[pick])
    (d,), _ = _run(att, model, x, y, ids + 1000)  # other sample ids: other draws (RayS draws none)
    if name != "rays_linf":
        assert not torch.equal(d.x, a.x)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("budget", [2, 3, 17])
def test_a_spent_budget_stops_the_sample_never_the_sweep(name: str, budget: int, digits: Any) -> None:
    model, x, y, ids = digits
    (out,), served = _run(ATTACKS[name](budget), model, x[:3], y[:3], ids[:3])
    assert int(out.queries.max()) <= budget
    assert int(out.queries.sum()) == served.oracle.stats.rows


@pytest.mark.parametrize("name", ["square_linf", "hopskipjump_linf", "rays_linf"])
def test_the_run_budget_running_out_ends_the_attack_not_the_sweep(name: str, digits: Any) -> None:
    model, x, y, ids = digits
    (out,), served = _run(ATTACKS[name](500), model, x[:3], y[:3], ids[:3], run_budget=40)
    assert served.oracle.limiter.spent() <= 40  # rows that reached the model (cache hits are free for the run)
    assert int(out.queries.sum()) == served.oracle.stats.rows
    assert torch.isfinite(out.x).all()


def test_a_score_based_attack_on_a_label_only_target_is_refused(digits: Any) -> None:
    model, x, y, ids = digits
    served = Served(model, "label")
    with pytest.raises(ConfigError, match="label-only attacks: hopskipjump_l2, hopskipjump_linf, rays_linf"):
        list(ATTACKS["square_linf"](10).run(x, y, BatchContext(served, 0, ids)))


def test_a_local_model_gets_a_local_oracle_with_the_same_numbers(digits: Any) -> None:
    """Same numbers on data on the 8-bit grid (the digits are not: a remote target's ball is drawn around the
    clean image it receives, a local model's around the image as loaded — tests/test_remote_ball.py)."""
    model, x, y, ids = digits
    x = torch.round(x * 255) / 255
    att = ATTACKS["rays_linf"](200)
    (served_out,), _ = _run(att, model, x, y, ids)
    (local_out,) = list(att.run(x, y, BatchContext(model, 7, ids)))
    assert torch.equal(local_out.x, served_out.x) and torch.equal(local_out.queries, served_out.queries)


@pytest.mark.parametrize("bad", [{"budget": 1}, {"budget": 2.5}, {"eps": [-0.1]}, {"norm": "l2", "cls": RayS}])
def test_bad_settings_are_one_config_error(bad: dict[str, Any]) -> None:
    cls = bad.pop("cls", HopSkipJump)
    kwargs = {"name": "x", "norm": "linf", "eps": [0.1], "tags": TAGS, **bad}
    with pytest.raises(ConfigError):
        cls(**kwargs)


def test_the_threat_model_states_access_and_budget() -> None:
    tm = ATTACKS["hopskipjump_linf"](1234).threat_model
    assert tm.access == "label_only" and tm.queries == 1234 and "AML.T0040" in tm.atlas
    assert "top-1 label only, at most 1,234 queries" in tm.adversary()
    assert ATTACKS["square_linf"](50).threat_model.as_dict()["access"] == "score_based"


class FloatOracle:
    """An oracle that sends the float pixels as they are (no 8-bit grid), counting per scope: to compare
    Square through the oracle with the suite member draw for draw."""

    output: Output = "logits"
    num_classes = 10

    def __init__(self, model: nn.Module) -> None:
        self.model, self.counts, self.key, self.budget = model, {}, "", None  # type: dict[tuple[str, int], int]

    def sent(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def query(self, x: torch.Tensor, sample_ids: torch.Tensor) -> Answer:
        for s in sample_ids.tolist():
            self.counts[(self.key, s)] = self.counts.get((self.key, s), 0) + 1
        with torch.no_grad():
            logits = self.model(x)
        return Answer(logits.argmax(1), logits, torch.zeros(len(x), dtype=torch.bool))

    def remaining(self, sample_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([10**9 if self.budget is None else self.budget - self.counts.get((self.key, s), 0)
                             for s in sample_ids.tolist()])

    def used(self, sample_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.counts.get((self.key, s), 0) for s in sample_ids.tolist()])

    def scope(self, key: str, budget_per_sample: int | None) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def cm() -> Any:
            self.key, self.budget = key, budget_per_sample
            yield

        return cm()


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 2.0)])
def test_square_through_an_oracle_is_the_suite_member_draw_for_draw(norm: str, eps: float, digits: Any) -> None:
    """Same seeds, float pixels: the oracle route returns the member's examples; it adds the clean check and
    the success check to the member's own count, nothing else."""
    from engine.perturbations.norms import get_norm
    from engine.perturbations.square import Square
    from engine.perturbations.suite import MemberContext
    from engine.seeding import derive_seed

    model, x, y, ids = digits
    att = SquareQuery(name="sq", norm=norm, eps=[eps], budget=400, tags=TAGS)
    served = nn.Module()
    served.oracle = FloatOracle(model)  # type: ignore[assignment]
    (out,) = list(att.run(x, y, BatchContext(served, 3, ids)))
    mctx = MemberContext(model, get_norm(norm), eps, 10, tuple(derive_seed(3, int(s), "sq", eps) for s in ids),
                         derive_seed(3, "sq", eps))
    member = Square(name="sq", n_queries=400)
    run = member._single_run if norm == "linf" else member._single_run_l2
    hit, x_best, q = run(mctx, x, y, mctx.generators(), mctx.shared_generator())
    broken = out.queries_to_success >= 0
    assert torch.equal(broken, hit.cpu()) and bool(broken.any())
    assert torch.equal(out.x[broken], x_best[broken])
    assert torch.equal(out.queries[broken], q[broken] + 2)  # + the clean check + the success check


@pytest.mark.parametrize("name", list(ATTACKS))
def test_three_channel_images_on_the_8bit_grid(name: str) -> None:
    """CIFAR-like data (3 channels, pixels already on the 8-bit grid, as CIFAR, image folders and .npz of
    uint8 hold them): the examples stay on the grid inside ε (checked by the engine), the counts hold."""
    import numpy as np

    from tests.data_fixtures import smooth_images

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(128, 10)).eval()
    x = torch.from_numpy(np.ascontiguousarray(smooth_images(4, seed=3).transpose(0, 3, 1, 2))).float() / 255
    with torch.no_grad():
        y = net(x).argmax(1)  # every sample starts correct
    att = ATTACKS[name](60)
    eps = 8 / 255 if att.norm == "linf" else 0.5
    att = dataclasses.replace(att, eps=[eps])
    (out,), served = _run(att, net, x, y, torch.arange(4))
    verify_batch(att, eps, x, out.x)
    assert torch.equal(out.x * 255, torch.round(out.x * 255))  # on the grid, broken or not
    counted = torch.tensor([served.oracle.asked.count(i) for i in range(4)])
    assert torch.equal(out.queries, counted) and int(out.queries.max()) <= 60


def test_the_report_says_black_box_numbers_are_upper_bounds_without_curves() -> None:
    from engine.sinks.budget_summary import black_box_names, budget_html

    perts = [{"name": "square_linf", "family": "attack", "tags": ["black-box", "AML.T0043.001"]},
             {"name": "aa", "family": "attack", "tags": ["white-box", "black-box"]},
             {"name": "pgd", "family": "attack", "tags": ["white-box"]}]
    assert black_box_names(perts) == ["square_linf"]
    assert "upper bounds on robust accuracy" in budget_html([], ["square_linf"]) and budget_html([], []) == ""


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_on_probabilities_is_square_on_logits(norm: str, digits: Any) -> None:
    """Probabilities are compared as log-probabilities (their differences are the logit margins): Square through
    a target that returns probabilities takes the same steps and finds the same examples as through its logits."""
    model, x, y, ids = digits
    att = ATTACKS[f"square_{norm}"](400)
    (on_logits,), _ = _run(att, model, x, y, ids)
    served = Served(model, "probs")
    (on_probs,) = list(att.run(x, y, BatchContext(served, 7, ids)))
    assert torch.equal(on_logits.x, on_probs.x) and torch.equal(on_logits.queries, on_probs.queries)
    assert bool((on_probs.queries_to_success >= 0).any())  # it does break samples


def test_rays_dither_keeps_the_search_alive_on_images_already_on_the_8bit_grid(digits: Any) -> None:
    """On 8-bit images every pixel of x + t·s steps at the same t, and RayS's bisection stalls; a fixed per-sample
    offset within ±½ grey level before rounding restores a gradual ray. Measured (docs/BENCHMARKS.md): 21 → 9 of
    30 left standing at ε = 0.1. Examples stay inside ε on the pixels sent either way."""
    from engine.data.digits import load_digits

    model = digits[0]
    data = load_digits()
    x = torch.round(data.images[:16] * 255) / 255
    y, ids = data.labels[:16], torch.arange(16)
    standing = {}
    for dither in (False, True):
        att = RayS(name="rays", norm="linf", eps=[0.1], budget=2000, tags=TAGS, dither=dither)
        (out,), served = _run(att, model, x, y, ids)
        verify_batch(att, 0.1, served.oracle.sent(x), out.x)
        with torch.no_grad():
            standing[dither] = int((model(out.x).argmax(1) == y).sum())
    print("standing, plain rounding / dither:", standing)
    assert standing[True] + 3 <= standing[False], standing
