"""Query-based attacks: the common frame that gets the oracle, opens its scope per ε, and reports per-sample queries.

Every query a query-based attack makes goes through an :class:`~engine.remote.api.Oracle`: the remote
model's own, or, for a checkpoint held locally, a ``LocalOracle`` around it, so that accounting is the same
either way. Per ε the frame opens ``oracle.scope(f"{name}@{ε:g}", budget)``, asks the target for the clean
label, lets the attack (:meth:`QueryAttack.search`) work on the samples the target classifies correctly, and
checks each claimed example once more (the success check, counted like any query). A sample stops when it
is broken or its budget is spent: attacks ask for what is ``left`` before every query (:class:`Asker`), so
``QueryBudgetExhausted`` never ends a sweep. ``queries`` is what the oracle counted for the sample in the
scope; ``queries_to_success`` is the count when its success check passed (-1 when never broken).

Attacks hold and query the pixels the oracle says it sends (``oracle.sent``: the 8-bit grid, or the decoded
JPEG), so the returned example is what the target saw and its size is measured on those pixels. The ball's
centre is the clean image as the target receives it: for a remote model ``oracle.sent(x)`` (the engine's rows
measure ``‖sent(x_adv) − sent(x)‖``, so the attack keeps exactly that inside ε — data off the 8-bit grid no
longer puts examples half a grey level outside ε), for a local checkpoint the clean image as loaded (the
evaluator measures against that). An example whose sent pixels still leave the ball is not counted as broken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from engine.compose.threat_model import ThreatModel
from engine.errors import ConfigError
from engine.perturbations.base import BatchContext, Family, LevelOutput, Perturbation, check_eps_list
from engine.perturbations.norms import Norm
from engine.remote.api import Answer, Oracle, QueryBudgetExhausted, oracle_of
from engine.seeding import derive_seed

Needs = Literal["label", "scores"]
SCORE_OUTPUTS = ("topk", "probs", "logits")


class OutOfBudget(Exception):
    """Raised by :class:`Asker` before a query a sample cannot afford; caught by the attack, never escapes."""


def _classes(model: nn.Module, shape: tuple[int, ...]) -> int:
    """The class count of a local checkpoint: one forward pass on a blank image (not a query to a target, so
    not counted; a remote model's oracle states its own)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        return int(model(torch.zeros((1, *shape), device=device)).shape[1])


def query_oracle(model: nn.Module, needs: Needs, name: str, shape: tuple[int, ...]) -> Oracle:
    """The oracle behind ``model`` (a remote model's), or a local one around it (same accounting).

    A score-based attack on a label-only target is refused here, naming what the target returns.
    """
    oracle = oracle_of(model)
    if oracle is None:
        from engine.remote.local import LocalOracle  # floor 2: the local stand-in for an endpoint

        oracle = LocalOracle(model, output="logits" if needs == "scores" else "label",
                             num_classes=_classes(model, shape))
    if needs == "scores" and oracle.output not in SCORE_OUTPUTS:
        raise ConfigError(f"perturbation {name!r} is score-based but the target returns only {oracle.output!r}; "
                          "label-only attacks: hopskipjump_l2, hopskipjump_linf, rays_linf")
    return oracle


class Asker:
    """A batch's window onto the oracle: row ``i`` of the batch is sample ``ids[i]``; queries are charged to it.

    ``reserve`` queries per sample are kept back for the frame's success check.
    """

    def __init__(self, oracle: Oracle, ids: torch.Tensor, y: torch.Tensor, reserve: int = 1) -> None:
        self.oracle, self.ids, self.y, self.reserve = oracle, ids.cpu(), y, reserve
        self.run_spent = False  # the run's budget (shared by all samples) refused a query: nobody asks again

    def left(self, rows: torch.Tensor) -> torch.Tensor:
        """Queries each of ``rows`` may still spend on its search (int64, CPU)."""
        if self.run_spent:
            return torch.zeros(len(rows), dtype=torch.int64)
        return (self.oracle.remaining(self.ids[rows.cpu()]) - self.reserve).clamp(min=0)

    def _ask(self, x: torch.Tensor, rows: torch.Tensor) -> Answer:
        """One query, after checking every row's sample can pay; the run's budget (which ``remaining`` may not
        show) refusing it ends every sample's search instead of the sweep."""
        need = torch.bincount(rows, minlength=len(self.ids))
        if bool((need > self.left(torch.arange(len(self.ids)))).any()):
            raise OutOfBudget
        try:
            return self.oracle.query(x, self.ids[rows])
        except QueryBudgetExhausted:
            self.run_spent = True
            raise OutOfBudget from None

    def labels(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The target's labels for ``x``; row k is charged to batch row ``rows[k]`` (rows may repeat)."""
        return self._ask(x, rows.cpu()).labels.to(self.y.device)

    def wrong(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """True where the target's label for ``x`` is not the true label of its row (label-only decision)."""
        return self.labels(x, rows) != self.y[rows.to(self.y.device)]

    def margins(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Score of the true class minus the best other score (≤ 0: misclassified), from the target's scores.

        Probabilities (``probs``, ``topk``) are compared as log-probabilities: log p_y − log p_k = z_y − z_k,
        so the margin is the logit margin the attacks' papers use (AutoAttack's Square: logits), not a
        probability difference that flattens out near 0 and 1. Scores the contract leaves out (top-k zeros,
        non-finite entries) count as -inf; a true class outside the top-k is therefore misclassified."""
        rows = rows.cpu()
        ans = self._ask(x, rows)
        if ans.scores is None:
            raise ConfigError("a score-based attack got no scores from its target")
        s = ans.scores.to(x.device, torch.float64)
        if self.oracle.output in ("probs", "topk"):
            s = torch.where(s > 0, s, torch.zeros_like(s)).log()  # 0 (left out, or underflow) → -inf
        s = torch.where(torch.isfinite(s), s, torch.full_like(s, float("-inf")))
        y = self.y[rows.to(self.y.device)].to(x.device)
        true = s.gather(1, y[:, None]).squeeze(1)
        others = s.scatter(1, y[:, None], float("-inf")).amax(1)
        margin = true - others
        # the label decides when scores tie or the true score is missing
        return torch.where(ans.labels.to(x.device) != y, torch.clamp(margin, max=0.0), margin)


def ball_centre(oracle: Oracle, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The clean image the ε ball is drawn around: as the endpoint receives it for a remote model (what the
    engine's rows are measured against), as loaded for a local checkpoint."""
    return oracle.sent(x) if oracle_of(model) is not None else x


def grid_ball(oracle: Oracle, x: torch.Tensor, cand: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """The pixels the oracle sends for ``cand``, pulled into the ε ball around ``x`` where rounding left it.

    Rows whose sent pixels already fit are kept as sent (an oracle that sends floats changes nothing). L∞:
    the others are clipped to the 8-bit grid values inside the ball and sent again (rounding commutes with that
    clip, so only the pixels rounding pushed out move); then, any norm, the step from ``x`` is shortened until
    the sent pixels fit (rows that never fit keep the sent ``x``; the frame does not count those as broken).
    """
    sent = oracle.sent(cand)
    bad = norm.measure(sent - x) > norm.bound(eps)
    if norm.name == "linf" and bool(bad.any()):
        rows = bad.nonzero().squeeze(1).to(x.device)
        lo = torch.ceil((x[rows] - eps).clamp(0.0, 1.0) * 255 - 1e-4) / 255
        hi = torch.floor((x[rows] + eps).clamp(0.0, 1.0) * 255 + 1e-4) / 255
        cand = cand.clone()
        cand[rows] = torch.maximum(torch.minimum(cand[rows], hi), lo)
        sent[rows] = oracle.sent(cand[rows])
        bad = norm.measure(sent - x) > norm.bound(eps)
    for t in (0.99, 0.97, 0.9, 0.75, 0.5, 0.0):
        if not bool(bad.any()):
            break
        rows = bad.nonzero().squeeze(1).to(x.device)
        sent[rows] = oracle.sent(x[rows] + t * (cand[rows] - x[rows]))
        bad = norm.measure(sent - x) > norm.bound(eps)
    return sent


@dataclass
class Found:
    """What a search returns for the rows it was given: its best examples (sent pixels) and which it claims."""

    x_adv: torch.Tensor
    claimed: torch.Tensor  # bool: the target misclassified x_adv and it lies within ε


@dataclass(frozen=True)
class QueryAttack(Perturbation):
    """Base of the query-based attacks (module docstring); subclasses implement :meth:`search`."""

    family: ClassVar[Family] = "attack"
    needs_model: ClassVar[bool] = True
    needs: ClassVar[Needs] = "label"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    eps: Sequence[float] = field(default_factory=tuple)
    budget: int = 10_000  # queries per sample and ε (the oracle's scope budget), success checks included

    def __post_init__(self) -> None:
        check_eps_list(self.name, list(self.eps))
        object.__setattr__(self, "eps", tuple(sorted(float(e) for e in self.eps)))
        if self.norm not in self.norms:
            raise ConfigError(f"perturbation {self.name!r}: {type(self).__name__} supports norms "
                              f"{list(self.norms)}, not {self.norm!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 2:
            raise ConfigError(f"perturbation {self.name!r}: budget must be an integer ≥ 2 (queries per sample "
                              f"and ε, the clean check and the success check included), got {self.budget!r}")
        super().__post_init__()

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.eps)

    @property
    def threat_model(self) -> ThreatModel:
        """The tags' threat model with what the attack needs of the target and its budget stated."""
        tm = super().threat_model
        return replace(tm, access=tm.access or ("label_only" if self.needs == "label" else "score_based"),
                       queries=self.budget)

    @property
    def oracle_output(self) -> str:
        """What the attack needs of a remote target ('label' or 'scores'; engine/planning/remote_fit.py)."""
        return self.needs

    @property
    def ball(self) -> Norm:
        norm = self.norm_obj
        assert norm is not None
        return norm

    def run(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext) -> Iterator[LevelOutput]:
        oracle = query_oracle(ctx.model, self.needs, self.name, tuple(x.shape[1:]))
        for level in self.levels:
            yield self.attack_level(oracle, x, y, float(level), ctx)

    def attack_level(self, oracle: Oracle, x: torch.Tensor, y: torch.Tensor, level: float,
                     ctx: BatchContext) -> LevelOutput:
        """One ε: clean label, search on the correctly classified rows, success check; all inside one scope."""
        n, ids = x.shape[0], ctx.sample_ids.cpu()
        x_out = x.clone()
        to_success = torch.full((n,), -1, dtype=torch.int64)
        centre = ball_centre(oracle, ctx.model, x)
        with oracle.scope(f"{self.name}@{level:g}", self.budget):
            if level > 0:
                ask = Asker(oracle, ids, y)
                try:
                    wrong = ask.wrong(oracle.sent(x), torch.arange(n))
                except OutOfBudget:  # no budget for the clean check: nothing is attacked at this ε
                    wrong = torch.ones(n, dtype=torch.bool)
                pool = (~wrong).nonzero().squeeze(1).cpu()
                if pool.numel():
                    found = self.search(ask, centre, y, pool, level, ctx)
                    self._check(oracle, ask, centre, pool, found, level, x_out, to_success)
            used = oracle.used(ids).to(torch.int64).clone()
        return LevelOutput(level, x_out, torch.zeros(n, dtype=torch.int64), used,
                           queries_to_success=to_success)

    def _check(self, oracle: Oracle, ask: Asker, x: torch.Tensor, pool: torch.Tensor, found: Found, level: float,
               x_out: torch.Tensor, to_success: torch.Tensor) -> None:
        """Count a claim only if its sent pixels lie in the ball and the target, asked once more, misclassifies."""
        dev = x.device
        inside = (self.ball.measure(found.x_adv - x[pool.to(dev)]) <= self.ball.bound(level)).cpu()
        keep = (found.claimed.cpu() & inside).nonzero().squeeze(1)
        if keep.numel() == 0:
            return
        rows = pool[keep]
        ask.reserve = 0  # the check spends the query each search kept back
        try:
            confirmed = ask.wrong(found.x_adv[keep.to(dev)], rows).cpu()
        except OutOfBudget:  # the run's budget ran out before the check: unconfirmed claims do not count
            return
        mark = getattr(oracle, "mark_success", None)  # the oracle's own queries-to-success record, where it keeps one
        if mark is not None and bool(confirmed.any()):
            mark(ask.ids[rows[confirmed]])
        used = oracle.used(ask.ids[rows])
        for r, k, ok, u in zip(rows.tolist(), keep.tolist(), confirmed.tolist(), used.tolist(), strict=True):
            if ok:
                x_out[r] = found.x_adv[k]
                to_success[r] = int(u)

    def search(self, ask: Asker, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, level: float,
               ctx: BatchContext) -> Found:
        """Attack rows ``pool`` of the batch at ε = ``level``; return one example per pool row."""
        raise NotImplementedError

    def generators(self, ctx: BatchContext, pool: torch.Tensor, level: float) -> list[torch.Generator]:
        """One generator per pool row, seeded by (global seed, sample id, name, ε): independent of the batch."""
        return [torch.Generator().manual_seed(derive_seed(ctx.seed, int(ctx.sample_ids[int(r)]), self.name, level))
                for r in pool.tolist()]
