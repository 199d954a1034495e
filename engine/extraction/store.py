"""One contract's folder of an extraction run: its identity, the target's answers, the copies, one row per budget.

Layout under ``<out_dir>/<contract>/``: ``extract.json`` (what the rows depend on), ``answers/test.parquet`` and
``answers/steal.parquet`` (every answer the oracle gave, so a re-run never spends a query twice),
``copies/budget_<B>.safetensors`` (+ manifest), ``configs/model/<name>.yaml`` (a model config for the copy) and
``results/budget_<B>.parquet`` (one row each, stamped with the identity digest). A folder holding another
target, query set, seed or setting is refused, never mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from engine.errors import ConfigError, GauntletError
from engine.seeding import stable_hash
from engine.store.parquet import write_atomic

IDENTITY_KEY = b"gauntlet.extract.identity"


def folder_name(contract_label: str) -> str:
    return contract_label.replace(":", "_")


class ContractDir:
    """The files of one contract's extraction (see the module docstring)."""

    def __init__(self, root: Path, identity: dict[str, Any]) -> None:
        self.root = root
        self.identity = identity
        self.digest = stable_hash(identity, 32)

    def claim(self) -> None:
        """Write ``extract.json``, or check the one there: a different identity is refused by field."""
        path = self.root / "extract.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                raise ConfigError(f"{path} cannot be read; delete the folder {self.root} or use another out_dir") \
                    from None
            if old.get("digest") != self.digest:
                before = old.get("identity") or {}
                changed = sorted(k for k in set(before) | set(self.identity) if before.get(k) != self.identity.get(k))
                raise ConfigError(
                    f"{self.root} holds an extraction of another set-up (changed: {', '.join(changed) or 'content'}); "
                    "its budgets cannot be reused or mixed with this one. Use another out_dir, or delete the folder "
                    "to start again")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".extract.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"digest": self.digest, "identity": self.identity}, indent=2, default=str) + "\n")
        os.replace(tmp, path)

    # -- the target's answers --------------------------------------------------------------------------------
    def answers(self, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels and scores answered so far for ``which`` (test | steal), in query order."""
        path = self.root / "answers" / f"{which}.parquet"
        if not path.exists():
            return torch.zeros(0, dtype=torch.int64), None
        table = pq.read_table(path)
        if (table.schema.metadata or {}).get(IDENTITY_KEY, b"").decode() != self.digest:
            raise GauntletError(f"{path} was written by another extraction set-up; delete {self.root} to start again")
        labels = torch.tensor(table.column("label").to_pylist(), dtype=torch.int64)
        raw = table.column("scores").to_pylist()
        scores = None if not raw or raw[0] is None else torch.tensor(raw, dtype=torch.float32)
        return labels, scores

    def save_answers(self, which: str, labels: torch.Tensor, scores: torch.Tensor | None) -> None:
        table = pa.table({
            "position": pa.array(range(len(labels)), pa.int64()),
            "label": pa.array(labels.tolist(), pa.int64()),
            "scores": pa.array(scores.tolist() if scores is not None else [None] * len(labels),
                               pa.list_(pa.float32())),
        }).replace_schema_metadata({IDENTITY_KEY: self.digest.encode()})
        (self.root / "answers").mkdir(parents=True, exist_ok=True)
        write_atomic(table, self.root / "answers" / f"{which}.parquet")

    # -- result rows ------------------------------------------------------------------------------------------
    def row_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.parquet"

    def read_row(self, key: str) -> dict[str, Any] | None:
        """The finished row for ``key`` (``budget_<B>`` or ``baseline``), or None when it was never finished."""
        path = self.row_path(key)
        if not path.exists():
            return None
        table = pq.read_table(path)
        if (table.schema.metadata or {}).get(IDENTITY_KEY, b"").decode() != self.digest or table.num_rows != 1:
            raise GauntletError(f"{path} does not belong to this extraction set-up (identity differs); delete "
                                f"{self.root} to start again")
        return table.to_pylist()[0]

    def write_row(self, key: str, row: dict[str, Any]) -> None:
        (self.root / "results").mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([row]).replace_schema_metadata({IDENTITY_KEY: self.digest.encode()})
        write_atomic(table, self.row_path(key))
