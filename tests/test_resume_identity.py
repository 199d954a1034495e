"""Resume reuses a task only when its data is provably the same: the dataset's content identity is in every task id."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import engine.data.fingerprint as fp
from engine.data.digits import load_digits
from engine.errors import ConfigError
from engine.planning.plan import dataset_identity
from engine.sweep import run_sweep
from tests import data_fixtures as fx
from tests.conftest import REPO, compose_dict, run_cli, tiny_overrides

N = 12


@pytest.fixture()
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash as if 10 s had passed since the files were written (no file is 'racy'), without sleeping."""
    real = fp._now_ns
    monkeypatch.setattr(fp, "_now_ns", lambda: real() + 10_000_000_000)


def _digits_u8(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images[:n, 0].numpy() * 255).round().astype(np.uint8), d.labels[:n].numpy()


# -- every layout has an identity; a changed file changes it and is named --------------------------------------


def _layouts(tmp: Path) -> dict[str, tuple[dict[str, Any], Path]]:
    """dataset config and the one file to change, for each layout Gauntlet reads."""
    images, labels = fx.smooth_images(N, seed=2), np.arange(N) % 10
    fx.write_cifar_python(tmp / "py", images, labels)
    fx.write_cifar_binary(tmp / "bin", images, labels)
    fx.write_cifar_python(tmp / "c100", images, labels * 7, cifar100=True)
    fx.write_image_folder(tmp / "f8", images, labels % 2, ["a", "b"])
    fx.write_image_folder(tmp / "f16", images, labels % 2, ["a", "b"], bits=16)
    fx.write_npz(tmp / "x.npz", images, labels)
    return {
        "cifar10 python": ({"_target_": "engine.data.cifar.load_cifar10", "root": str(tmp / "py")},
                           tmp / "py" / "cifar-10-batches-py" / "test_batch"),
        "cifar10 binary": ({"_target_": "engine.data.cifar.load_cifar10", "root": str(tmp / "bin")},
                           tmp / "bin" / "cifar-10-batches-bin" / "test_batch.bin"),
        "cifar100 python": ({"_target_": "engine.data.cifar.load_cifar100", "root": str(tmp / "c100")},
                            tmp / "c100" / "cifar-100-python" / "test"),
        "image folder 8-bit": ({"_target_": "engine.data.image_folder.load_image_folder", "root": str(tmp / "f8"),
                                "name": "pets"}, tmp / "f8" / "b" / "00003.png"),
        "image folder 16-bit": ({"_target_": "engine.data.image_folder.load_image_folder", "root": str(tmp / "f16"),
                                 "name": "pets"}, tmp / "f16" / "b" / "00003.png"),
        "npz": ({"_target_": "engine.data.npz.load_npz", "path": str(tmp / "x.npz"), "name": "mine"}, tmp / "x.npz"),
    }


def _alter(path: Path) -> None:
    """Same size, other content, and the old modification time put back (a hostile or careless rewrite)."""
    import cv2

    st = path.stat()
    if path.suffix == ".png":  # still a valid image of the same bit depth: one sample flipped
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        arr.flat[0] ^= 0xFF
        cv2.imwrite(str(path), arr)
    elif path.suffix == ".npz":
        with np.load(path) as f:
            x, y = f["x"].copy(), f["y"].copy()
        x.flat[0] ^= 0xFF
        np.savez(path, x=x, y=y)
    elif path.suffix == ".bin":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF  # the last pixel byte of the split
        path.write_bytes(bytes(raw))
    else:  # a CIFAR python batch
        batch = pickle.loads(path.read_bytes())
        batch["data"][0, 0] ^= 0xFF
        path.write_bytes(pickle.dumps(batch, protocol=2))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("layout", ["cifar10 python", "cifar10 binary", "cifar100 python", "image folder 8-bit",
                                    "image folder 16-bit", "npz"])
def test_each_layout_has_a_stable_identity_and_a_changed_file_is_named(tmp_path: Path, layout: str) -> None:
    cfg, victim = _layouts(tmp_path / "data")[layout]
    cache = tmp_path / "cache"
    first, again = dataset_identity(cfg, cache), dataset_identity(cfg, cache)
    assert first == again and len(first["digest"]) == 64 and first["items"] >= 1
    _alter(victim)
    changed = dataset_identity(cfg, cache)
    assert changed["digest"] != first["digest"]
    rel = victim.relative_to(Path(first["source"])).as_posix()
    assert fp.describe_change(first, changed) == f"{rel}: content differs"


def test_the_embedded_digits_set_has_an_identity_of_its_tensors(tmp_path: Path) -> None:
    cfg = {"_target_": "engine.data.digits.load_digits"}
    a = dataset_identity(cfg, tmp_path)
    load_digits.cache_clear()
    b = dataset_identity(cfg, tmp_path)
    assert a == b and a["kind"] == "tensors in memory" and set(a["parts"]) == {"images", "labels", "sample_ids"}
    assert dataset_identity({**cfg, "split": "train"}, tmp_path)["digest"] != a["digest"]


def test_an_image_moved_to_another_class_changes_the_identity(tmp_path: Path) -> None:
    images = fx.smooth_images(4)
    root = fx.write_image_folder(tmp_path / "f", images, np.array([0, 0, 1, 1]), ["a", "b"])
    cfg = {"_target_": "engine.data.image_folder.load_image_folder", "root": str(root), "name": "pets"}
    before = dataset_identity(cfg, tmp_path / "cache")
    (root / "a" / "00001.png").rename(root / "b" / "00001.png")  # same bytes, other label
    after = dataset_identity(cfg, tmp_path / "cache")
    assert after["digest"] != before["digest"]
    assert fp.describe_change(before, after) == "b/00001.png: new; a/00001.png: removed"


def test_a_large_folder_names_its_changed_class_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp, "NAMED_FILES", 4)  # above this many files, parts are class folders
    root = fx.write_image_folder(tmp_path / "f", fx.smooth_images(8), np.arange(8) % 2, ["a", "b"])
    cfg = {"_target_": "engine.data.image_folder.load_image_folder", "root": str(root), "name": "pets"}
    before = dataset_identity(cfg, tmp_path / "cache")
    assert set(before["parts"]) == {"a/", "b/"}
    (root / "b" / "00003.png").unlink()
    after = dataset_identity(cfg, tmp_path / "cache")
    assert fp.describe_change(before, after) == "b/: content differs (3 files, was 4)"


# -- the digest cache ------------------------------------------------------------------------------------------


def test_the_cache_reads_each_file_once_and_trusts_only_unchanged_stat(tmp_path: Path, later: None) -> None:
    files = [tmp_path / "d" / f"{i}.bin" for i in range(5)]
    files[0].parent.mkdir()
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    cold = fp.FileDigests(tmp_path / "d", tmp_path / "cache")
    digests = cold(files)
    assert cold.hashed == 5 and digests == [fp._sha256_file(f) for f in files]
    warm = fp.FileDigests(tmp_path / "d", tmp_path / "cache")
    assert warm(files) == digests and warm.hashed == 0
    _alter(files[2])  # same size, mtime put back: ctime still moves
    again = fp.FileDigests(tmp_path / "d", tmp_path / "cache")
    new = again(files)
    assert again.hashed == 1 and new[2] != digests[2] and new[:2] == digests[:2]


def test_a_file_rewritten_within_a_timestamp_tick_is_never_trusted(tmp_path: Path) -> None:
    """Without the racy rule, a same-size rewrite in the same coarse clock tick would keep the old digest."""
    f = tmp_path / "d" / "x.bin"
    f.parent.mkdir()
    f.write_bytes(b"a" * 64)
    first = fp.FileDigests(f.parent, tmp_path / "cache")([f])
    st = f.stat()
    f.write_bytes(b"b" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = fp.FileDigests(f.parent, tmp_path / "cache")
    assert second([f]) != first and second.hashed == 1


def test_a_damaged_or_unwritable_cache_costs_time_never_a_wrong_digest(tmp_path: Path, later: None) -> None:
    f = tmp_path / "d" / "x.bin"
    f.parent.mkdir()
    f.write_bytes(b"data")
    hasher = fp.FileDigests(f.parent, tmp_path / "cache")
    right = hasher([f])
    hasher.cache_file.write_text('{"version": 1, "folder": "elsewhere", "entries": {"x.bin": [0,0,0,0,0,"bad"]}}')
    assert fp.FileDigests(f.parent, tmp_path / "cache")([f]) == right
    hasher.cache_file.write_bytes(b"\x00garbage")
    assert fp.FileDigests(f.parent, tmp_path / "cache")([f]) == right
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    assert fp.FileDigests(f.parent, blocker / "cache")([f]) == right


def test_folders_with_the_same_names_keep_separate_caches(tmp_path: Path, later: None) -> None:
    for name, content in (("one", b"1"), ("two", b"2")):
        (tmp_path / name / "a").mkdir(parents=True)
        (tmp_path / name / "a" / "x.bin").write_bytes(content)
    one = fp.FileDigests(tmp_path / "one", tmp_path / "cache")([tmp_path / "one" / "a" / "x.bin"])
    two = fp.FileDigests(tmp_path / "two", tmp_path / "cache")([tmp_path / "two" / "a" / "x.bin"])
    assert one != two and len(list((tmp_path / "cache" / "fingerprints").glob("*.json"))) == 2


def test_the_identity_is_the_same_in_another_process(tmp_path: Path) -> None:
    """Resume and Ray workers run in other processes: the digest depends on content only (no inode, no time)."""
    cfgs = [c for c, _ in _layouts(tmp_path / "data").values()] + [{"_target_": "engine.data.digits.load_digits"}]
    here = [dataset_identity(c, tmp_path / "c1")["digest"] for c in cfgs]
    code = ("import json, sys; from engine.planning.plan import dataset_identity; "
            "print(json.dumps([dataset_identity(c, sys.argv[2])['digest'] for c in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfgs), str(tmp_path / "c2")], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


# -- resume on changed data --------------------------------------------------------------------------------------


def _npz_sweep(ckpt: Path, out: Path, npz: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_sweep(compose_dict(tiny_overrides(ckpt, out, "dataset=npz", f"dataset.path={npz}",
                                                 "dataset.name=digits_npz", "dataset.num_classes=10",
                                                 "perturbation=[clean]", "n_examples=20",
                                                 f"cache_dir={out.parent / 'cache'}", *extra)))


def _changed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "recomputed" in r.getMessage()]


def test_a_regenerated_npz_is_recomputed_and_the_run_says_why(tmp_path: Path, embedded_checkpoints,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The issue's probe: the same command after the .npz was regenerated reused every row (100 % vs 0 %)."""
    from engine.models.loader import checkpoint_path

    ckpt = checkpoint_path(compose_dict()["model"]["digits_cnn"], "digits_cnn")
    x, y = _digits_u8()
    npz, out = tmp_path / "x.npz", tmp_path / "out"
    np.savez(npz, x=x, y=y)
    first = _npz_sweep(ckpt, out, npz)
    assert first.evaluated == 1 and first.accuracy[0].accuracy >= 0.9
    st = npz.stat()
    np.savez(npz, x=x, y=(y + 1) % 10)  # the same shapes: the same size; labels now all wrong
    os.utime(npz, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert npz.stat().st_size == st.st_size
    caplog.set_level(logging.WARNING, logger="engine.sweep")
    second = _npz_sweep(ckpt, out, npz)
    assert second.evaluated == 1 and second.accuracy[0].accuracy <= 0.1
    assert _changed_lines(caplog) == [
        f"dataset 'digits_npz' changed since the rows in {out} were written (x.npz: content differs): 1 task(s) "
        "recomputed (the old rows stay in results/, under the old data's task ids)"]
    fresh = _npz_sweep(ckpt, tmp_path / "fresh", npz)
    assert fresh.accuracy == second.accuracy and fresh.plan.run_id == second.plan.run_id
    caplog.clear()
    assert _npz_sweep(ckpt, out, npz).evaluated == 0 and not _changed_lines(caplog)  # unchanged: all reused


def test_unchanged_data_is_reused_and_identity_is_recorded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    x, y = _digits_u8()
    np.savez(tmp_path / "x.npz", x=x, y=y)
    first = _npz_sweep(tiny_checkpoint, tmp_path / "out", tmp_path / "x.npz", "shard_size=8")
    assert first.evaluated == 3 and _npz_sweep(tiny_checkpoint, tmp_path / "out", tmp_path / "x.npz",
                                               "shard_size=8").evaluated == 0
    meta = json.loads((tmp_path / "out" / "sweep.json").read_text())
    ident = meta["dataset_identity"]
    assert ident["name"] == "digits_npz" and ident["kind"] == "npz file" and set(ident["parts"]) == {"x.npz"}
    for f in (tmp_path / "out" / "results").glob("*.parquet"):
        task = json.loads(pq.read_schema(f).metadata[b"gauntlet.task"])
        assert task["dataset_identity"] == ident["digest"]


def test_a_killed_run_without_sweep_json_still_says_why(tiny_checkpoint: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    x, y = _digits_u8()
    npz, out = tmp_path / "x.npz", tmp_path / "out"
    np.savez(npz, x=x, y=y)
    _npz_sweep(tiny_checkpoint, out, npz)
    (out / "sweep.json").unlink()  # a killed run writes its sidecars only at the end
    for f in (out / "sweeps").glob("*/sweep.json"):
        f.unlink()
    np.savez(npz, x=x[::-1].copy(), y=y[::-1].copy())
    caplog.set_level(logging.WARNING, logger="engine.sweep")
    assert _npz_sweep(tiny_checkpoint, out, npz).evaluated == 1
    assert _changed_lines(caplog) == [
        f"dataset 'digits_npz' changed since the rows in {out} were written (content differs): 1 task(s) recomputed "
        "(the old rows stay in results/, under the old data's task ids)"]


def test_rows_from_before_task_ids_named_the_data_are_recomputed(tiny_checkpoint: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import engine.planning.plan as plan_mod

    x, y = _digits_u8()
    np.savez(tmp_path / "x.npz", x=x, y=y)
    real = plan_mod.task_id_of
    with monkeypatch.context() as m:  # the previous Gauntlet: task id without the data's digest
        m.setattr(plan_mod, "task_id_of", lambda key, digest: real(key, None))
        _npz_sweep(tiny_checkpoint, tmp_path / "out", tmp_path / "x.npz")
    caplog.set_level(logging.WARNING, logger="engine.sweep")
    assert _npz_sweep(tiny_checkpoint, tmp_path / "out", tmp_path / "x.npz").evaluated == 1
    (line,) = _changed_lines(caplog)
    assert line.startswith("1 task(s) recomputed: the rows in ") and "did not name the dataset's content" in line


def test_another_dataset_in_the_same_folder_is_not_called_a_change(tiny_checkpoint: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    x, y = _digits_u8()
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x[::-1].copy(), y=y[::-1].copy())
    _npz_sweep(tiny_checkpoint, tmp_path / "out", tmp_path / "a.npz")
    caplog.set_level(logging.WARNING, logger="engine.sweep")
    assert _npz_sweep(tiny_checkpoint, tmp_path / "out", tmp_path / "b.npz").evaluated == 1
    assert not _changed_lines(caplog)


def test_data_changed_during_the_run_sets_its_rows_aside(tiny_checkpoint: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.sweep as sweep_mod

    x, y = _digits_u8()
    npz, out = tmp_path / "x.npz", tmp_path / "out"
    np.savez(npz, x=x, y=y)
    real = sweep_mod._execute

    def execute_then_regenerate(*args: Any, **kwargs: Any) -> int:
        done = real(*args, **kwargs)
        np.savez(npz, x=x, y=(y + 3) % 10)
        return done

    with monkeypatch.context() as m:
        m.setattr(sweep_mod, "_execute", execute_then_regenerate)
        with pytest.raises(ConfigError, match=r"dataset 'digits_npz' changed while this sweep ran \(x\.npz: content "
                                              r"differs\); the 2 task file\(s\) computed in this run were moved to"):
            _npz_sweep(tiny_checkpoint, out, npz, "shard_size=10")
    assert not list((out / "results").glob("*.parquet")) and len(list((out / "quarantine").iterdir())) == 2
    assert _npz_sweep(tiny_checkpoint, out, npz, "shard_size=10").evaluated == 2


def test_the_cli_names_the_changed_dataset(tiny_checkpoint: Path, tmp_path: Path) -> None:
    root = fx.write_image_folder(tmp_path / "pets", fx.smooth_images(10, channels=1), np.arange(10),
                                 [f"c{i}" for i in range(10)])
    args = tiny_overrides(tiny_checkpoint, tmp_path / "out", "dataset=image_folder", f"dataset.root={root}",
                          "dataset.name=pets", "dataset.channels=1", "perturbation=[clean]", "n_examples=10",
                          f"cache_dir={tmp_path / 'cache'}")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    _alter(root / "c3" / "00003.png")
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (f"dataset 'pets' changed since the rows in {tmp_path / 'out'} were written (c3/00003.png: content "
            "differs): 1 task(s) recomputed") in second.stderr
