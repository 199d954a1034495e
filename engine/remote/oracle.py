"""The shared body of every oracle: 8-bit grid and encoding, cache, budgets, statistics around one ``_fetch``.

A subclass answers a batch of unique, uncached uint8 rows (in-process model, Open Inference Protocol, upload
endpoint); everything a reviewer audits (what was sent, what was counted, what was refused) happens here, once.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import ConfigError
from engine.remote.accounting import CallStats, Limiter, LocalLimiter, SampleLedger
from engine.remote.api import Answer, Output, RemoteError
from engine.remote.encoding import ImageContract, decode_one, encode_batch, encode_one, reencoded, row_keys, to_grid

OUTPUTS = ("label", "topk", "probs", "logits")


@dataclass(frozen=True)
class Reply:
    """What ``_fetch`` returns for its rows: labels, and scores (N×K) unless the contract is label-only."""

    labels: torch.Tensor
    scores: torch.Tensor | None


class BaseOracle:
    """Implements :class:`engine.remote.api.Oracle`; subclasses implement ``_fetch`` (and ``endpoint``)."""

    endpoint = "in-process"
    scores_field = "scores"  # where the scores are in the endpoint's answer (named in errors)

    def __init__(self, *, output: Output = "probs", num_classes: int, budget_per_sample: int | None = None,
                 run_budget: int | None = None, image: ImageContract | None = None, top_k: int | None = None,
                 round_digits: int | None = None, cache: bool = True, cache_size: int = 100_000,
                 limiter: Limiter | None = None, rate_limit: float | None = None, concurrency: int = 4) -> None:
        if output not in OUTPUTS:
            raise ConfigError(f"remote output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        if num_classes < 2:
            raise ConfigError(f"remote num_classes must be ≥ 2, got {num_classes}")
        if output == "topk" and not (top_k and 1 <= top_k <= num_classes):
            raise ConfigError(f"remote output 'topk' needs top_k in 1..{num_classes}, got {top_k}")
        if round_digits is not None and not 0 <= round_digits <= 12:
            raise ConfigError(f"remote round_digits must be in 0..12 or null, got {round_digits}")
        self.output: Output = output
        self.num_classes = int(num_classes)
        self.top_k = top_k
        self.round_digits = round_digits
        self.image = image or ImageContract()
        self.ledger = SampleLedger(budget_per_sample)
        self.limiter: Limiter = limiter or LocalLimiter(run_budget, rate_limit, concurrency)
        self.stats = CallStats()
        self.use_cache = cache
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, torch.Tensor | None]] = OrderedDict()
        self._files: OrderedDict[str, bytes] = OrderedDict()  # JPEG: decoded pixels' key → the file they came from

    # -- the Oracle protocol ------------------------------------------------------------------------------------

    def query(self, x: torch.Tensor, sample_ids: torch.Tensor) -> Answer:
        ids = [int(i) for i in sample_ids.reshape(-1).tolist()]
        if len(ids) != x.shape[0]:
            raise ConfigError(f"oracle.query got {x.shape[0]} images but {len(ids)} sample ids")
        grid = to_grid(x, self.image.size)
        keys = row_keys(grid)
        todo = self._misses(keys)  # first row of each key neither cached nor earlier in the batch
        self.ledger.charge_check(ids)
        self.limiter.reserve(len(todo))  # the run's budget: only rows that reach the endpoint
        self.ledger.charge(ids)
        self.stats.rows += len(ids)
        fresh: dict[str, tuple[int, torch.Tensor | None]] = {}
        if todo:
            reply = self._send(grid[todo])
            for j, r in enumerate(todo):
                fresh[keys[r]] = (int(reply.labels[j]), None if reply.scores is None else reply.scores[j])
        return self._assemble(keys, todo, fresh)

    def remaining(self, sample_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.ledger.remaining(sample_ids.reshape(-1).tolist()), dtype=torch.int64)

    def used(self, sample_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.ledger.used(sample_ids.reshape(-1).tolist()), dtype=torch.int64)

    def sent(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._sent_grid(to_grid(x, self.image.size))
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return (grid.float() / 255.0).to(device=x.device, dtype=dtype)

    def seen(self, x: torch.Tensor) -> torch.Tensor:
        """What the model behind the endpoint is declared to see for ``x``: the pixels sent, then the contract's
        declared re-encoding (``reencode_jpeg``), if any. Crafting aid only: sizes are measured on :meth:`sent`."""
        pixels = self.sent(x)
        q = self.image.reencode_jpeg
        return pixels if q is None else reencoded(pixels, q)

    def scope(self, key: str, budget_per_sample: int | None) -> AbstractContextManager[None]:
        return self.ledger.scope(key, budget_per_sample)

    # -- additions beyond the protocol: success bookkeeping and reporting ---------------------------------------

    def mark_success(self, sample_ids: torch.Tensor) -> None:
        """Record queries-to-success for these samples in the current scope (first success only)."""
        self.ledger.mark_success(sample_ids.reshape(-1).tolist())

    def queries_to_success(self, sample_ids: torch.Tensor) -> torch.Tensor:
        """Queries each sample had used at its first success in the current scope; -1 where none (censored)."""
        return torch.tensor(self.ledger.to_success(sample_ids.reshape(-1).tolist()), dtype=torch.int64)

    def run_stats(self) -> dict[str, Any]:
        """Per-run statistics (no secrets: the endpoint's URL without query string, never a header)."""
        return {"endpoint": self.endpoint, "output": self.output, "encoding": self.image.encoding,
                **self.stats.as_dict(), "run_budget_spent": self.limiter.spent()}

    # -- internals ----------------------------------------------------------------------------------------------

    def _misses(self, keys: list[str]) -> list[int]:
        seen: set[str] = set()
        todo = []
        for r, k in enumerate(keys):
            if k in seen or (self.use_cache and k in self._cache):
                continue
            seen.add(k)
            todo.append(r)
        return todo

    def _sent_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """The uint8 pixels the endpoint decodes for each row. JPEG is not idempotent, so a row that is itself the
        decoding of a file made here (attacks hold and re-query ``sent`` pixels) is sent as that file and arrives
        unchanged; any other row is encoded, and its decoding remembered with its file."""
        if self.image.encoding == "png":
            return grid  # lossless: the server decodes exactly these pixels
        rows = []
        for row, key in zip(grid, row_keys(grid), strict=True):
            if key in self._files:
                self._files.move_to_end(key)
                rows.append(row)
                continue
            data = encode_one(row, self.image)
            decoded = decode_one(data, int(row.shape[0]))
            self._files[row_keys(decoded[None])[0]] = data
            rows.append(decoded)
        while len(self._files) > self.cache_size:
            self._files.popitem(last=False)
        return torch.stack(rows)

    def _wire_files(self, grid: torch.Tensor) -> list[bytes]:
        """One file per row: the remembered file where the row is its decoding, else the row encoded as declared."""
        if self.image.encoding == "png":
            return encode_batch(grid, self.image)
        return [self._files.get(k) or encode_one(row, self.image) for row, k in zip(grid, row_keys(grid), strict=True)]

    def _send(self, grid: torch.Tensor) -> Reply:
        """Send unique rows, check the reply's shape and values, count it; refund the budget if nothing arrived."""
        payloads = self._wire_files(grid) if self.needs_files else None
        try:
            reply = self._fetch(grid, payloads)
        except RemoteError as err:
            self.stats.failed += 1
            if getattr(err, "unsent", False):  # no row reached the endpoint (connection refused, say)
                self.limiter.refund(len(grid))
            else:
                self.stats.sent += len(grid)  # they reached it; its answer was unusable
            raise
        self.stats.sent += len(grid)
        try:
            return self._checked(reply, len(grid))
        except RemoteError:
            self.stats.failed += 1
            raise

    needs_files = False  # True where the endpoint receives image files (upload); tensors otherwise

    def _fetch(self, grid: torch.Tensor, payloads: list[bytes] | None) -> Reply:
        """Answer these unique rows (uint8, N×C×H×W; ``payloads``: their files); count calls and latency."""
        raise NotImplementedError

    def _checked(self, reply: Reply, n: int) -> Reply:
        """The contract held: N labels in range, N×num_classes finite scores (unless label-only)."""
        where = f"endpoint {self.endpoint}"
        if reply.labels.shape != (n,):
            raise RemoteError(f"{where}: expected {n} labels, got shape {tuple(reply.labels.shape)} (field: labels)")
        bad = (reply.labels < 0) | (reply.labels >= self.num_classes)
        if bad.any():
            raise RemoteError(f"{where}: label {int(reply.labels[bad][0])} is outside 0..{self.num_classes - 1} "
                              f"(field: label; num_classes is {self.num_classes})")
        if self.output == "label":
            return Reply(reply.labels.long(), None)
        if reply.scores is None or reply.scores.dim() != 2 or reply.scores.shape[0] != n:
            shape = None if reply.scores is None else tuple(reply.scores.shape)
            raise RemoteError(f"{where}: expected scores for {n} rows, got {shape} (field: {self.scores_field})")
        if reply.scores.shape[1] != self.num_classes:
            raise RemoteError(f"{where}: scores have {reply.scores.shape[1]} classes, the contract declares "
                              f"{self.num_classes} (field: {self.scores_field}; check num_classes)")
        if not torch.isfinite(reply.scores).all():
            raise RemoteError(f"{where}: scores hold NaN or inf (field: {self.scores_field}); no prediction is "
                              "made from them")
        return Reply(reply.labels.long(), reply.scores.float())

    def _assemble(self, keys: list[str], todo: list[int], fresh: dict[str, tuple[int, torch.Tensor | None]]
                  ) -> Answer:
        todo_set = set(todo)
        labels, scores, cached = [], [], []
        for r, k in enumerate(keys):
            hit = r not in todo_set
            label, row = fresh[k] if k in fresh else self._cache[k]
            if hit and k in self._cache:
                self._cache.move_to_end(k)
            labels.append(label)
            scores.append(row)
            cached.append(hit)
        self.stats.cached += sum(cached)
        if self.use_cache:
            self._remember(fresh)
        score_t = None if self.output == "label" else torch.stack([s for s in scores if s is not None])
        return Answer(torch.tensor(labels, dtype=torch.int64), score_t, torch.tensor(cached, dtype=torch.bool))

    def _remember(self, fresh: dict[str, tuple[int, torch.Tensor | None]]) -> None:
        self._cache.update(fresh)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def shape_scores(logits: torch.Tensor, output: Output, top_k: int | None, round_digits: int | None
                 ) -> torch.Tensor | None:
    """Model logits → scores as an endpoint with this contract returns them (top-k: the others are 0)."""
    if output == "label":
        return None
    if output == "logits":
        scores = logits.float()
    else:
        scores = torch.softmax(logits.float(), dim=1)
        if output == "topk":
            assert top_k is not None
            kept = torch.zeros_like(scores)
            idx = scores.topk(top_k, dim=1).indices
            scores = kept.scatter(1, idx, scores.gather(1, idx))
    if round_digits is not None:
        scale = 10.0 ** round_digits
        scores = torch.round(scores * scale) / scale
    return scores
