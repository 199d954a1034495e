"""GPU path: the same sweep on CUDA gives the same verdicts as on CPU (skipped without a CUDA device)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch

from engine.evaluation.resources import resolve_device
from engine.sweep import run_sweep
from tests.conftest import compose_dict, tiny_overrides

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_device_picks_cuda_exactly_when_present() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@needs_cuda
def test_cuda_sweep_matches_cpu_sweep(tiny_checkpoint: Path, tmp_path: Path) -> None:
    perts = "perturbation=[clean,fgsm_linf,contrast,gaussian_blur]"
    for device in ("cpu", "cuda"):
        run_sweep(compose_dict(tiny_overrides(tiny_checkpoint, tmp_path / device, perts, f"device={device}")))
    rows = {}
    for device in ("cpu", "cuda"):
        table = ds.dataset(tmp_path / device / "results", format="parquet").to_table()
        rows[device] = sorted(table.select(["perturbation", "level", "sample_id", "pred", "margin"]).to_pylist(),
                              key=lambda r: (r["perturbation"], r["level"], r["sample_id"]))
    assert len(rows["cpu"]) == len(rows["cuda"])
    agree = sum(a["pred"] == b["pred"] for a, b in zip(rows["cpu"], rows["cuda"], strict=True))
    assert agree / len(rows["cpu"]) >= 0.99  # float differences may flip a prediction on a knife edge
    assert max(abs(a["margin"] - b["margin"]) for a, b in zip(rows["cpu"], rows["cuda"], strict=True)
               if a["perturbation"] == "clean") < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_autoattack_suite_on_cuda_agrees_with_cpu(tiny_checkpoint: Path) -> None:
    """The AutoAttack members (per-sample CPU generators, targets run together, FAB's grouped early exit) run
    on CUDA and reach the CPU's verdicts up to float noise."""
    from engine.evaluation.resources import build_perturbation
    from engine.models.loader import build_model
    from engine.perturbations.base import BatchContext

    name = "autoattack_standard_linf"
    pcfg = compose_dict([f"perturbation=[{name}]"])["perturbation"][name]
    short = [{**a, "n_iter": 10} if "n_iter" in a else {**a, "n_queries": 200} for a in pcfg["attacks"]]
    suite = build_perturbation(name, {**pcfg, "eps": [0.02, 0.05], "attacks": short})
    mcfg = compose_dict(tiny_overrides(tiny_checkpoint, Path("unused")))["model"]["digits_cnn"]
    x = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    robust = {}
    for device in ("cpu", "cuda"):
        model = build_model("digits_cnn", mcfg, torch.device(device))
        xd = x.to(device)
        with torch.no_grad():
            y = model(xd).argmax(1)
        outs = list(suite.run(xd, y, BatchContext(model, 0, torch.arange(32))))
        with torch.no_grad():
            robust[device] = torch.stack([(model(o.x).argmax(1) == y).cpu() for o in outs])
        for o in outs:
            assert float((o.x - xd).abs().max()) <= o.level + 1e-5
    assert float((robust["cpu"] == robust["cuda"]).float().mean()) >= 0.9
