"""The foundation's acceptance run on the embedded default: real checkpoints, 200 test samples."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from engine.sweep import run_sweep
from tests.conftest import compose_dict


@pytest.mark.slow
def test_default_models_on_200_samples(embedded_checkpoints: dict[str, str], tmp_path: Path) -> None:
    cfg = compose_dict([f"out_dir={tmp_path}", "n_examples=200", "perturbation=[clean,pgd_linf]", "progress=false"])
    outcome = run_sweep(cfg)
    table = ds.dataset(tmp_path / "results", format="parquet").to_table()
    assert table.num_rows == 2 * 200 * (1 + 7)
    acc = {(r.model, r.perturbation, r.level): r.accuracy for r in outcome.accuracy}
    assert acc[("digits_cnn", "clean", 0.0)] >= 0.95
    assert acc[("digits_cnn_at", "clean", 0.0)] >= 0.90
    eps = sorted({lv for (_, p, lv) in acc if p == "pgd_linf"})
    for model in ("digits_cnn", "digits_cnn_at"):
        curve = [acc[(model, "pgd_linf", e)] for e in eps]
        assert all(b <= a for a, b in itertools.pairwise(curve)), (model, curve)
    # Mid ε: adversarial training must buy real robustness, not a rounding error.
    assert acc[("digits_cnn_at", "pgd_linf", 0.1)] >= acc[("digits_cnn", "pgd_linf", 0.1)] + 0.4
    assert acc[("digits_cnn_at", "pgd_linf", 0.15)] >= acc[("digits_cnn", "pgd_linf", 0.15)] + 0.4
    # The same per-sample rows feed the summary: recompute one cell by hand.
    clean = table.filter((pc.field("model") == "digits_cnn") & (pc.field("perturbation") == "clean"))
    assert pc.sum(clean["correct"]).as_py() / clean.num_rows == acc[("digits_cnn", "clean", 0.0)]
