"""Saved adversarial examples (``save_examples``) and examples on the pixel grid (``quantize``).

Examples re-score to the rows' ``pred`` exactly, every broken sample has one, a resumed or a Ray sweep saves
the same set, a damaged or missing examples file is recomputed; ``quantize`` puts every attack example on the
grid inside its ε ball and the rows score the rounded example (digits, CIFAR, 8- and 16-bit image folders).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from engine.errors import ConfigError, GauntletError
from engine.evaluation.examples import ExampleCollector
from engine.evaluation.quantize import GRIDS, off_grid, to_grid
from engine.evaluation.resources import Resources
from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN
from engine.perturbations.norms import NORMS
from engine.store import examples
from engine.store.parquet import DIGEST_FIELDS, SCHEMA, ResultStore, content_digest
from engine.store.results import read
from engine.sweep import run_sweep
from tests import data_fixtures as fx
from tests.conftest import compose_dict, tiny_overrides

CPU = torch.device("cpu")
FAST = ("perturbation=[clean,fgsm_linf,pgd_l2,gaussian_noise]", "perturbation.fgsm_linf.eps=[0.0,0.05,0.2]",
        "perturbation.pgd_l2.eps=[0.5,2.0]", "perturbation.pgd_l2.steps=3",
        "perturbation.gaussian_noise.severities=[3]", "wandb=disabled")


def _sweep(cfg_overrides: list[str]) -> Any:
    return run_sweep(compose_dict(cfg_overrides))


def _rescore(out: Path, cfg: dict[str, Any], ex: examples.Examples) -> np.ndarray:
    """Each saved example classified again by its model, one batch per task (as the rows were)."""
    res, preds = Resources(CPU), []
    for task_id in dict.fromkeys(ex.keys["task_id"].to_pylist()):
        rows = np.flatnonzero(pc.equal(ex.keys["task_id"], task_id).to_numpy(zero_copy_only=False))
        name = ex.keys["model"][int(rows[0])].as_py()
        with torch.no_grad():
            preds.append(res.model(name, cfg["model"][name])(ex.x[rows]).argmax(1).numpy())
    return np.concatenate(preds)


def _broken(table: pa.Table) -> set[tuple[str, float, int]]:
    """(task, level, sample) of every misclassified row whose input was changed (attacks: a broken_by)."""
    mask = pc.and_(pc.invert(table["correct"]), pc.greater(table["perturbation_size"], 0))
    t = table.filter(mask)
    return set(zip(t["task_id"].to_pylist(), t["level"].to_pylist(), t["sample_id"].to_pylist(), strict=True))


def _keys(ex: examples.Examples) -> set[tuple[str, float, int]]:
    k = ex.keys
    return set(zip(k["task_id"].to_pylist(), k["level"].to_pylist(), k["sample_id"].to_pylist(), strict=True))


# -- the grid: exact, inside ε -------------------------------------------------------------------------------------


def _inside(x: torch.Tensor, xq: torch.Tensor, eps: float, norm: str, m: int) -> None:
    k, k0 = (xq.double() * m).round(), (x.double() * m)
    assert torch.equal(k.float() / m, xq), "not exactly k / M"
    if norm == "linf" and off_grid(x, "uint8" if m == 255 else "uint16") == 0:
        assert int((k - k0.round()).abs().max()) <= int(np.floor(eps * m + 1e-7))  # in whole grid steps
    measured = NORMS[norm].measure(xq - x)
    assert bool((measured <= eps * (1 + 1e-9) + (1e-6 if norm == "linf" else 0)).all()), measured.max()


@pytest.mark.parametrize("quantize", ["uint8", "uint16"])
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.05), ("l2", None), ("l1", None)])
def test_rounded_examples_are_on_the_grid_and_inside_the_ball(quantize: str, norm: str, eps: float | None) -> None:
    m, g = GRIDS[quantize], torch.Generator().manual_seed(1)
    x = torch.randint(3, m - 2, (16, 3, 8, 8), generator=g).float() / m
    sign = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
    if norm == "linf":
        x_adv = (x + sign * eps).clamp(0, 1)  # every pixel on the sphere (or the box)
    else:  # every pixel 0.5-1 step past a grid point: plain rounding moves each one away, out of the ball
        steps = torch.randint(0, 3, x.shape, generator=g) + 0.5 + 0.45 * torch.rand(x.shape, generator=g)
        x_adv = x + sign * steps / m
        eps = float(NORMS[norm].measure(x_adv - x).min())
    naive = (x_adv * m).round() / m
    xq, ok = to_grid(x, x_adv, eps, norm, quantize)
    assert bool(ok.all())
    _inside(x, xq, eps, norm, m)
    if eps != 8 / 255:  # plain rounding does leave the ball here, so the fall-back is what kept it inside
        assert bool((NORMS[norm].measure(naive - x) > NORMS[norm].bound(eps)).any())
        assert bool((xq != naive).any())
    else:
        assert torch.equal(xq, naive)  # ε on the grid: rounding alone stays inside


def test_off_grid_clean_inputs_keep_the_clean_input_where_no_grid_point_is_within_eps() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # like the resized digits: off any grid
    assert off_grid(x, "uint8") > 0
    same, ok = to_grid(x, x, 0.0, "linf", "uint8")  # ε = 0: no 8-bit image is in the ball
    assert not bool(ok.any()) and torch.equal(same, x)
    for norm, eps in (("linf", 0.05), ("l2", 1.0)):
        x_adv = (x + 0.7 * eps * torch.sign(torch.randn(x.shape)) / (1 if norm == "linf" else 8)).clamp(0, 1)
        xq, ok = to_grid(x, x_adv, eps, norm, "uint8")
        assert bool(ok.all())
        _inside(x, xq, eps, norm, 255)


def test_pixels_of_an_off_grid_sample_that_happen_to_be_near_the_grid_are_not_snapped() -> None:
    g = torch.Generator().manual_seed(2)
    k = torch.randint(60, 190, (8, 1, 16, 16), generator=g).double()
    u = torch.rand(k.shape, generator=g, dtype=torch.float64) - 0.5
    u[:, :, :4] = 5e-4  # a quarter of the pixels lie 5e-4 steps off the grid: not grid pixels
    x = ((k + u) / 255).float()
    eps = 0.2
    x_adv = (x + eps * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    xq, ok = to_grid(x, x_adv, eps, "linf", "uint8")
    assert bool(ok.all()) and off_grid(xq, "uint8") == 0
    assert float(NORMS["linf"].measure(xq - x).max()) <= NORMS["linf"].bound(eps)


# -- the collector: which rows, the cap shared between levels --------------------------------------------------------


def test_the_cap_is_shared_round_robin_between_levels_in_sample_order() -> None:
    keep = ExampleCollector("broken", cap=5, family="attack")
    x = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1)
    for level in (0.1, 0.2):
        row = {"sample_id": np.arange(6), "correct": np.array([0, 1, 0, 0, 0, 0], bool),
               "perturbation_size": np.full(6, level)}
        keep.add(level, x, x + level, row)
    got = keep.finish((1, 1, 1))
    assert got is not None
    assert list(zip(got["level"].tolist(), got["sample_id"].tolist(), strict=True)) == [
        (0.1, 0), (0.1, 2), (0.1, 3), (0.2, 0), (0.2, 2)]
    assert np.allclose(got["x"][:, 0, 0, 0] - got["clean"][:, 0, 0, 0], got["level"])
    assert ExampleCollector("none", 5, "attack").finish((1, 1, 1)) is None
    empty = ExampleCollector("all", 5, "clean").finish((1, 2, 2))  # clean tasks keep nothing, but say so
    assert empty is not None and empty["x"].shape == (0, 1, 2, 2)


# -- a sweep that saves its examples ---------------------------------------------------------------------------------


def test_broken_examples_exist_for_every_broken_row_and_rescore_to_pred(tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    args = tiny_overrides(tiny_checkpoint, tmp_path / "a", *FAST, "save_examples=broken")
    _sweep(args)
    table, ex = read(tmp_path / "a"), examples.load(tmp_path / "a")
    assert len(ex) and _keys(ex) == _broken(table)
    assert set(ex.keys["family"].to_pylist()) == {"attack", "corruption"}
    assert np.array_equal(_rescore(tmp_path / "a", compose_dict(args), ex), ex.keys["pred"].to_numpy())
    # the clean input beside each example is the dataset's
    data = Resources(CPU).dataset(compose_dict(args)["dataset"])
    position = {int(s): i for i, s in enumerate(data.sample_ids.tolist())}
    rows = torch.as_tensor([position[s] for s in ex.keys["sample_id"].to_pylist()])
    assert torch.equal(ex.clean, data.images[rows])
    one = examples.load(tmp_path / "a", perturbation="pgd_l2")
    assert len(one) and set(one.keys["perturbation"].to_pylist()) == {"pgd_l2"}


def test_a_resumed_sweep_saves_the_same_set_and_damaged_examples_are_recomputed(
        tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    _sweep(tiny_overrides(tiny_checkpoint, full, *FAST, "save_examples=broken", "shard_size=10"))
    args = tiny_overrides(tiny_checkpoint, cut, *FAST, "save_examples=broken", "shard_size=10")
    _sweep(args)
    files = sorted((cut / "examples").glob("*.safetensors"))
    files[0].unlink()  # killed between its rows and its examples
    files[1].write_bytes(files[1].read_bytes()[:-7] + b"garbage")  # damaged
    (cut / "results" / f"{files[2].stem}.parquet").unlink()  # killed before its rows
    with caplog.at_level(logging.WARNING):
        outcome = _sweep(args)
    assert outcome.evaluated == 3
    text = caplog.text
    assert "recomputed to save their examples: no examples file" in text
    assert "recomputed to save their examples: " in text and ("altered" in text or "unreadable" in text)
    a, b = examples.load(full), examples.load(cut)
    assert a.keys.equals(b.keys) and torch.equal(a.x, b.x) and torch.equal(a.clean, b.clean)


def test_changing_save_examples_between_runs(tiny_checkpoint: Path, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """none → broken recomputes (the rows come out the same); broken → all recomputes; → none keeps the files."""
    out = tmp_path / "o"
    base = tiny_overrides(tiny_checkpoint, out, *FAST)
    _sweep(base)
    rows = read(out)
    assert not (out / "examples").exists()
    with caplog.at_level(logging.WARNING):
        assert _sweep([*base, "save_examples=broken"]).evaluated == 4
    assert "4 task(s) recomputed to save their examples: no examples file" in caplog.text
    assert read(out).sort_by("task_id").equals(rows.sort_by("task_id"))
    broken = examples.load(out)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _sweep([*base, "save_examples=all", "save_examples_cap=5"]).evaluated == 4
    assert "saved with save_examples=broken, cap 2000" in caplog.text
    capped = examples.load(out)
    per_task = pc.value_counts(capped.keys["task_id"]).field("counts").to_pylist()
    assert per_task and max(per_task) == 5
    assert _sweep([*base, "save_examples=all", "save_examples_cap=5"]).evaluated == 0
    assert _sweep(base).evaluated == 0  # none: nothing to recompute; the saved files stay readable
    assert len(examples.load(out)) == len(capped) and len(broken) > 0
    with pytest.raises(ConfigError, match="save_examples='some'"):
        _sweep([*base, "save_examples=some"])
    with pytest.raises(ConfigError, match="save_examples_cap=0"):
        _sweep([*base, "save_examples=all", "save_examples_cap=0"])


def test_the_loader_skips_files_that_do_not_verify(tiny_checkpoint: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "o"
    _sweep(tiny_overrides(tiny_checkpoint, out, *FAST, "save_examples=broken"))
    before = len(examples.load(out))
    victim = max((out / "examples").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    n = int(examples.read_file(victim)[0]["gauntlet.count"])
    other = next(p for p in (out / "examples").glob("*.safetensors")
                 if p != victim and int(examples.read_file(p)[0]["gauntlet.count"]) > 1)
    shutil.copy(victim, other.with_name("0" * 20 + ".safetensors"))  # named like another task
    victim.write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING):
        after = examples.load(out)
    assert len(after) == before - n and "unreadable" in caplog.text and "no verified rows" in caplog.text
    # a hostile file whose digests were recomputed: inconsistent tensors, or keys its task's rows do not have
    meta, tensors = examples.read_file(other)
    for name, bad in (("short", {**tensors, "level": tensors["level"][:1]}),
                      ("stray", {**tensors, "sample_id": tensors["sample_id"] + 10_000})):
        forged = {**meta, "gauntlet.tensors_sha256": examples.tensors_digest(bad)}
        save_file({k: np.ascontiguousarray(v) for k, v in bad.items()}, str(other), metadata=forged)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert len(examples.load(out)) == len(after) - int(meta["gauntlet.count"]), name
        assert ("inconsistent" if name == "short" else "rows do not have") in caplog.text
    with pytest.raises(GauntletError, match="not a Gauntlet run folder"):
        examples.load(tmp_path / "typo")


# -- Ray: examples travel in the TaskResult, the driver writes them ---------------------------------------------------


@pytest.mark.timeout(240)
def test_runner_ray_saves_the_same_examples(ray_instance: Any, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.planning.plan import make_plan
    from engine.runners.ray import RayRunner
    from engine.sweep import _execute

    args = tiny_overrides(tiny_checkpoint, tmp_path / "ray", *FAST, "save_examples=broken", "quantize=uint8",
                          "shard_size=10")
    store = ResultStore(tmp_path / "ray")
    plan = make_plan(compose_dict(args), store.has, progress=False)
    assert _execute(plan.todo, RayRunner(threads=1), CPU, Resources(CPU), store, False) == len(plan.todo)
    _sweep(tiny_overrides(tiny_checkpoint, tmp_path / "local", *FAST, "save_examples=broken", "quantize=uint8",
                          "shard_size=10"))
    a, b = examples.load(tmp_path / "ray"), examples.load(tmp_path / "local")
    assert len(a) and a.keys.equals(b.keys) and torch.equal(a.x, b.x)


# -- quantize: the rows score the rounded examples --------------------------------------------------------------------


def _check_quantized(out: Path, cfg: dict[str, Any], quantize: str) -> None:
    """Every saved attack example on the grid and inside ε; re-scoring them gives the rows (so the reported robust
    accuracy is the rounded examples'); float_correct is set on attack rows only."""
    m = GRIDS[quantize]
    table, ex = read(out), examples.load(out)
    attack = ex.keys.filter(pc.equal(ex.keys["family"], "attack"))
    assert attack.num_rows and attack.num_rows == table.filter(pc.equal(table["family"], "attack")).num_rows
    assert np.array_equal(_rescore(out, cfg, ex), ex.keys["pred"].to_numpy())
    assert np.array_equal(np.equal(ex.keys["pred"].to_numpy(), ex.keys["label"].to_numpy()),
                          ex.keys["correct"].to_numpy(zero_copy_only=False))
    for norm in set(attack["norm"].to_pylist()):
        for level in set(attack.filter(pc.equal(attack["norm"], norm))["level"].to_pylist()):
            sel = np.flatnonzero(pc.and_(pc.equal(ex.keys["norm"], norm),
                                         pc.equal(ex.keys["level"], level)).to_numpy(zero_copy_only=False))
            x, clean = ex.x[sel], ex.clean[sel]
            if off_grid(clean, quantize) and level == 0:
                continue  # nothing within ε = 0 of an off-grid input is on the grid: the clean input stays
            _inside(clean, x, level, norm, m)
    assert table.filter(pc.equal(table["family"], "attack"))["float_correct"].null_count == 0
    assert table.filter(pc.not_equal(table["family"], "attack"))["float_correct"].null_count == \
        table.filter(pc.not_equal(table["family"], "attack")).num_rows


def test_quantize_uint8_on_the_tiny_digits_sweep_and_its_task_ids(tiny_checkpoint: Path, tmp_path: Path) -> None:
    args = tiny_overrides(tiny_checkpoint, tmp_path / "q", *FAST, "save_examples=all", "quantize=uint8")
    _sweep(args)
    _check_quantized(tmp_path / "q", compose_dict(args), "uint8")
    # the rows of a float sweep are other tasks for attacks, the same tasks for the rest
    plain = _sweep(tiny_overrides(tiny_checkpoint, tmp_path / "q", *FAST))
    assert plain.evaluated == 2  # fgsm_linf, pgd_l2
    with pytest.raises(ConfigError, match="quantize='int4'"):
        _sweep([*args, "quantize=int4"])


def _layout_sweep(tmp: Path, layout: str, quantize: str) -> tuple[Path, dict[str, Any]]:
    images, labels = fx.smooth_images(12, size=16, seed=3), np.arange(12) % 10
    if layout in ("cifar", "cifar_bin"):
        images = fx.smooth_images(12, size=32, seed=3)
        (fx.write_cifar_python if layout == "cifar" else fx.write_cifar_binary)(tmp / "data", images, labels)
        data = ["dataset=cifar10", f"dataset.root={tmp / 'data'}"]
    elif layout == "npz_float":  # float pixels, on no grid
        noise = np.random.default_rng(1).uniform(-0.4, 0.4, images.shape)
        fx.write_npz(tmp / "x.npz", ((images + noise) / 255).clip(0, 1).astype(np.float32), labels)
        data = ["dataset=npz", f"dataset.path={tmp / 'x.npz'}", "dataset.layout=nhwc"]
    else:
        if layout == "folder16":  # true 16-bit samples, off the 8-bit grid
            low = np.random.default_rng(0).integers(0, 256, images.shape)
            images = (images.astype(np.uint16) * 256 + low).astype(np.uint16)
        fx.write_image_folder(tmp / "data", images, labels, [f"c{i}" for i in range(10)],
                              bits=16 if layout == "folder16" else 8)
        data = ["dataset=image_folder", f"dataset.root={tmp / 'data'}", "dataset.name=fixture"]
    size = 32 if layout.startswith("cifar") else 16
    torch.manual_seed(0)
    ckpt = tmp / "cnn.safetensors"
    save_checkpoint(SmallCNN(in_channels=3, image_size=size, width=4).state_dict(), ckpt, {})
    args = ["model=[digits_cnn]", f"model.digits_cnn.checkpoint={ckpt}", "model.digits_cnn.train=null",
            "model.digits_cnn.arch.in_channels=3", f"+model.digits_cnn.arch.image_size={size}",
            "model.digits_cnn.arch.width=4", "model.digits_cnn.mean=[0.5,0.5,0.5]",
            "model.digits_cnn.std=[0.25,0.25,0.25]", *data, "n_examples=12", "batch_size=6", "progress=false",
            "device=cpu", f"out_dir={tmp / 'out'}", "perturbation=[fgsm_linf,square_l2]",
            "perturbation.fgsm_linf.eps=[0.0,0.02,0.1]", "perturbation.square_l2.eps=[0.3,1.0]",
            "perturbation.square_l2.attacks.0.n_queries=20", "save_examples=all", f"quantize={quantize}",
            "wandb=disabled"]
    return tmp / "out", compose_dict(args)


@pytest.mark.parametrize("layout,quantize", [("cifar", "uint8"), ("cifar_bin", "uint8"), ("folder8", "uint8"),
                                             ("folder16", "uint16"), ("folder16", "uint8"), ("npz_float", "uint8")])
def test_quantize_on_other_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str,
                                   quantize: str) -> None:
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    out, cfg = _layout_sweep(tmp_path, layout, quantize)
    run_sweep(cfg)
    _check_quantized(out, cfg, quantize)
    ex = examples.load(out)
    assert off_grid(ex.clean, quantize) == 0 or layout in ("folder16", "npz_float")
    if layout == "folder16":  # 16-bit data is on its own grid, not on the 8-bit one
        assert off_grid(ex.clean, "uint16") == 0 and off_grid(ex.clean, "uint8") > 0
    moved = torch.as_tensor(ex.keys["level"].to_numpy() > 0)
    assert off_grid(ex.x[moved], quantize) == 0
    if off_grid(ex.clean, quantize):  # at ε = 0 no grid image is within reach: the clean one stays
        assert off_grid(ex.x[~moved], "uint8") > 0 and torch.equal(ex.x[~moved], ex.clean[~moved])
        return
    assert ex.x_uint is not None and int(ex.x_uint.max()) <= GRIDS[quantize]
    assert torch.equal(ex.x_uint.float() / GRIDS[quantize], ex.x)


# -- the Parquet schema: version 2 files still read ------------------------------------------------------------------


def test_version_2_task_files_still_verify_and_compact(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.store.compact import compact

    out = tmp_path / "o"
    _sweep(tiny_overrides(tiny_checkpoint, out, "perturbation=[clean,gaussian_noise]", "wandb=disabled"))
    rows = read(out)
    for path in (out / "results").glob("*.parquet"):  # rewrite as this Gauntlet's previous version wrote them
        t = pq.read_table(path)
        old = t.drop_columns(["float_correct"])
        meta = dict(t.schema.metadata)
        meta[b"gauntlet.schema_version"] = b"2"
        meta[b"gauntlet.content_sha256"] = content_digest(t, "2").encode()
        pq.write_table(old.replace_schema_metadata(meta), path)
    assert [f.name for f in DIGEST_FIELDS["2"]] == [f.name for f in SCHEMA][:-1]
    assert read(out).sort_by("task_id").equals(rows.sort_by("task_id"))
    assert _sweep(tiny_overrides(tiny_checkpoint, out, "perturbation=[clean,gaussian_noise]",
                                 "wandb=disabled")).evaluated == 0
    assert compact(out) == (2, 1)
    assert read(out).sort_by("task_id").equals(rows.sort_by("task_id"))


# -- the report's gallery ---------------------------------------------------------------------------------------------


def test_the_report_shows_a_small_capped_gallery(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import re

    from engine.sinks import gallery
    from engine.sinks.report import write_report

    out = tmp_path / "o"
    _sweep(tiny_overrides(tiny_checkpoint, out, *FAST, "save_examples=all"))
    page = write_report(out).html.read_text()
    ex = examples.load(out)
    cells = {(p, lv) for p, lv in zip(ex.keys["perturbation"].to_pylist(), ex.keys["level"].to_pylist(), strict=True)}
    assert page.count("<div class='gal'>") == len(cells) == 3 + 2 + 1  # fgsm_linf 3 levels, pgd_l2 2, noise 1
    for block in re.findall(r"<div class='gal'>(.*?)</div>", page):
        assert 1 <= block.count("<figure") <= gallery.PER_CELL
        assert block.count("<img") == 3 * block.count("<figure")
    assert "true " in page and "pred " in page and len(page) < 400_000
    plain = tmp_path / "plain"
    _sweep(tiny_overrides(tiny_checkpoint, plain, *FAST))
    assert "<h2>Examples</h2>" not in write_report(plain).html.read_text()
    diff, factor = gallery.amplified(np.full((1, 2, 2), 0.6), np.full((1, 2, 2), 0.5))
    assert np.allclose(diff, 1.0) and factor == pytest.approx(5.0)


# -- verify reports float and grid robust accuracy ----------------------------------------------------------------


def test_verify_with_quantize_reports_both_accuracies(embedded_checkpoints: dict[str, str], tmp_path: Path) -> None:
    from engine.claims.quantized import grid_text
    from tests.test_claims import _verify

    _, doc, text = _verify(tmp_path, "digits_cnn", [(0.1, 0.99)], "quantize=uint8", n=16)
    (v,) = doc["claims"]
    q = v["quantized"]
    rows = read(tmp_path / "out")
    base = rows.filter(pc.and_(pc.equal(rows["perturbation"], q["perturbation"]), pc.equal(rows["level"], 0.1)))
    assert q["grid"] == "uint8" and q["n"] == 16 and base["float_correct"].null_count == 0
    per_sample: dict[int, tuple[bool, bool]] = {}
    for r in base.to_pylist():
        g, f = per_sample.get(r["sample_id"], (True, True))
        per_sample[r["sample_id"]] = (g and r["correct"], f and r["float_correct"])
    assert q["grid_accuracy"] == sum(g for g, _ in per_sample.values()) / 16
    assert q["float_accuracy"] == sum(f for _, f in per_sample.values()) / 16
    if all(e["status"] == "skipped" for e in v["escalations"]):  # nothing but the base suite: the reported number
        assert v["measured_accuracy"] == q["grid_accuracy"]
    assert (q["float_accuracy"] != q["grid_accuracy"]) == ("grid: robust accuracy" in text)
    differ = {**q, "float_accuracy": 0.25, "grid_accuracy": 0.5, "float_broken": 12, "survived_rounding": 8}
    (line,) = grid_text(differ)
    assert "50.0% on the rounded examples (reported) vs 25.0% on the float ones" in line and "8 of 12" in line


# -- the acceptance on the embedded digits models ------------------------------------------------------------------


def test_default_sweep_broken_examples_rescore_exactly(embedded_checkpoints: dict[str, str], tmp_path: Path) -> None:
    """The default sweep (both digits models, every default perturbation) on 40 samples; scripts/bench_examples.py
    checks the same on the full 200 (docs/BENCHMARKS.md)."""
    args = [f"out_dir={tmp_path / 'd'}", "n_examples=40", "progress=false", "wandb=disabled", "save_examples=broken"]
    _sweep(args)
    table, ex = read(tmp_path / "d"), examples.load(tmp_path / "d")
    assert set(ex.keys["model"].to_pylist()) == {"digits_cnn", "digits_cnn_at"}
    assert _keys(ex) == _broken(table) and len(ex) > 100
    assert np.array_equal(_rescore(tmp_path / "d", compose_dict(args), ex), ex.keys["pred"].to_numpy())


def test_quantize_uint8_on_both_digits_models(embedded_checkpoints: dict[str, str], tmp_path: Path) -> None:
    from engine.stats.aggregate import accuracy_table

    args = [f"out_dir={tmp_path / 'q'}", "n_examples=40", "progress=false", "wandb=disabled", "save_examples=all",
            "perturbation=[clean,fgsm_linf,pgd_linf,pgd_l2]", "quantize=uint8"]
    _sweep(args)
    cfg = compose_dict(args)
    _check_quantized(tmp_path / "q", cfg, "uint8")
    ex = examples.load(tmp_path / "q")
    rescored = _rescore(tmp_path / "q", cfg, ex) == ex.keys["label"].to_numpy()
    for row in accuracy_table(read(tmp_path / "q")):  # the reported accuracy is the rounded examples'
        if row.perturbation == "clean":
            continue
        sel = np.flatnonzero(pc.and_(pc.and_(pc.equal(ex.keys["model"], row.model),
                                             pc.equal(ex.keys["perturbation"], row.perturbation)),
                                     pc.equal(ex.keys["level"], row.level)).to_numpy(zero_copy_only=False))
        assert len(sel) == 40 and row.accuracy == pytest.approx(rescored[sel].mean(), abs=1e-12)
    survived = read(tmp_path / "q").filter(pc.equal(read(tmp_path / "q")["family"], "attack"))
    float_broken = pc.sum(pc.invert(survived["float_correct"])).as_py()
    assert float_broken > 0  # the digits models are broken at large ε, so rounding had examples to keep or lose


def test_compacted_tasks_keep_their_rows_and_say_why_no_examples(tiny_checkpoint: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from engine.store.compact import compact

    out = tmp_path / "o"
    base = tiny_overrides(tiny_checkpoint, out, "perturbation=[clean,gaussian_noise]", "wandb=disabled")
    _sweep(base)
    rows = read(out)
    assert compact(out) == (2, 1)
    with caplog.at_level(logging.WARNING):
        assert _sweep([*base, "save_examples=broken"]).evaluated == 0
    assert "2 compacted task(s) (gauntlet compact) have no examples saved as asked (no examples file)" in caplog.text
    assert read(out).sort_by("task_id").equals(rows.sort_by("task_id")) and not (out / "quarantine").exists()
