"""Local dataset layouts: CIFAR python/binary, image folders, npz; lazy rows, subsets, clear errors, no code on load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import LazyDataset
from engine.data.cifar import load_cifar10, load_cifar100
from engine.data.digits import load_digits
from engine.data.image_folder import load_image_folder
from engine.data.npz import load_npz
from engine.errors import ConfigError
from tests import data_fixtures as fx

N = 24


@pytest.fixture()
def arrays() -> tuple[np.ndarray, np.ndarray]:
    return fx.smooth_images(N, seed=3), (np.arange(N) * 7) % 10


def _expected(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255


def test_cifar10_python_and_binary_layouts_give_the_same_rows(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    fx.write_cifar_python(tmp_path / "py", images, labels)
    fx.write_cifar_python(tmp_path / "pyb", images, labels, bytes_keys=True)
    fx.write_cifar_binary(tmp_path / "bin", images, labels)
    for root in (tmp_path / "py", tmp_path / "py" / "cifar-10-batches-py", tmp_path / "pyb", tmp_path / "bin"):
        data = load_cifar10(str(root))
        assert data.name == "cifar10" and data.num_classes == 10 and len(data) == N
        assert torch.equal(data.labels, torch.from_numpy(labels))
        assert torch.equal(data.sample_ids, torch.arange(N))
        assert torch.equal(data.slice(5, 9).images, _expected(images)[5:9])


def test_numpy1_era_pickles_load(tmp_path: Path, arrays) -> None:
    """The release's batches name numpy.core.multiarray (numpy 1); numpy 2 writes numpy._core."""
    images, labels = arrays
    path = fx.write_cifar_python(tmp_path, images, labels)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert torch.equal(load_cifar10(str(tmp_path)).slice(0, N).images, _expected(images))


def test_cifar100_fine_and_coarse_labels(tmp_path: Path, arrays) -> None:
    images, _ = arrays
    labels = np.arange(N) * 4 % 100
    fx.write_cifar_python(tmp_path, images, labels, cifar100=True)
    fine, coarse = load_cifar100(str(tmp_path)), load_cifar100(str(tmp_path), label_type="coarse")
    assert fine.num_classes == 100 and torch.equal(fine.labels, torch.from_numpy(labels))
    assert coarse.name == "cifar100_coarse" and coarse.num_classes == 20
    assert torch.equal(coarse.labels, torch.from_numpy(labels // 5))


def test_cifar_python_batch_matches_torchvisions_reader(tmp_path: Path, arrays, monkeypatch) -> None:
    """Gauntlet's restricted reader and torchvision's CIFAR10 (plain pickle) agree pixel for pixel."""
    tv = pytest.importorskip("torchvision.datasets")
    images, labels = arrays
    fx.write_cifar_python(tmp_path, images, labels)
    # the fixture's md5 is not the release's
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv.CIFAR10, "_check_integrity", lambda self: True)
    ref = tv.CIFAR10(str(tmp_path), train=False, download=False)
    ours = load_cifar10(str(tmp_path)).slice(0, N)
    assert ours.labels.tolist() == list(ref.targets)
    assert torch.equal((ours.images * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(ref.data))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_cifar_test_batch_is_refused_and_its_payload_never_runs(tmp_path: Path, arrays, protocol) -> None:
    images, labels = arrays
    path = fx.write_cifar_python(tmp_path, images, labels)
    marker = tmp_path / "pwned"
    batch = {"data": images.reshape(N, -1), "labels": labels.tolist(), "x": _Payload(marker)}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(ConfigError, match=r"test_batch: not a readable CIFAR python batch \(global \S+ is not allowed"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: None, r"holds no cifar10 test split; expected cifar-10-batches-py/test_batch"),
        (lambda root: (root / "cifar-10-batches-bin").mkdir() or (root / "cifar-10-batches-bin" / "test_batch.bin")
         .write_bytes(b"\0" * 3000), r"test_batch.bin: 3000 bytes is not a whole number of 3073-byte records"),
        (lambda root: (root / "cifar-10-batches-py").mkdir() or (root / "cifar-10-batches-py" / "test_batch")
         .write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})),
         r"test_batch: 'data' is uint8 \(2, 5\).*expected uint8 N×3072"),
        (lambda root: (root / "cifar-10-batches-py").mkdir() or (root / "cifar-10-batches-py" / "test_batch")
         .write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]})),
         r"label 12 at index 1 is outside 0…9"),
        (lambda root: (root / "cifar-10-batches-py").mkdir() or (root / "cifar-10-batches-py" / "test_batch")
         .write_bytes(b"\x80\x02}q\x00"), r"test_batch: not a readable CIFAR python batch"),
    ],
)
def test_cifar_layout_errors_name_the_file_and_the_layout(tmp_path: Path, make, match: str) -> None:
    make(tmp_path)
    with pytest.raises(ConfigError, match=match):
        load_cifar10(str(tmp_path))


def test_missing_root_and_unset_root_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.root=.*nope is not a folder; expected cifar-10-batches-py"):
        load_cifar10(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"dataset.root is not set; pass dataset.root="):
        load_cifar10("???")
    with pytest.raises(ConfigError, match=r"dataset.path is not set"):
        load_npz("???")


def test_image_folder_labels_ids_and_lazy_decoding(tmp_path: Path, arrays, monkeypatch) -> None:
    images, labels = arrays
    classes = [f"n{i:08d}" for i in range(10)]
    fx.write_image_folder(tmp_path, images, labels, classes)
    data = load_image_folder(str(tmp_path), name="mini")
    assert len(data) == N and data.image_shape == (3, 32, 32) and data.num_classes == 10
    # listing order: sorted class folders, then file names; sample_id = position in that listing
    order = sorted(range(N), key=lambda i: (classes[labels[i]], f"{i:05d}"))
    assert data.labels.tolist() == [int(labels[i]) for i in order]
    decoded: list[int] = []
    orig = LazyDataset.slice

    def counting(self, start, stop):  # type: ignore[no-untyped-def]
        decoded.append(stop - start)
        return orig(self, start, stop)

    monkeypatch.setattr(LazyDataset, "slice", counting)
    rows = data.slice(3, 7)
    assert decoded == [4] and rows.images.shape == (4, 3, 32, 32)
    assert torch.equal(rows.images, _expected(images[order[3:7]]))


def test_image_folder_resize_and_crop_match_torchvision(tmp_path: Path) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(50, 40), (37, 61)]):
        (tmp_path / f"c{i}").mkdir()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"c{i}" / "a.png")
    data = load_image_folder(str(tmp_path), name="sized", resize=36, crop=32, workers=2)
    ref = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32), transforms.PILToTensor()])
    want = torch.stack([ref(Image.open(tmp_path / f"c{i}" / "a.png").convert("RGB")) for i in range(2)])
    assert torch.equal((data.slice(0, 2).images * 255).round().byte(), want)


def test_image_folder_class_index_json_and_errors(tmp_path: Path, arrays) -> None:
    images, _ = arrays
    fx.write_image_folder(tmp_path / "val", images[:4], np.array([0, 1, 0, 1]), ["cat", "dog"])
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"0": ["zebra", "z"], "1": ["dog", "d"], "2": ["cat", "c"]}))
    data = load_image_folder(str(tmp_path / "val"), name="pets", class_index=str(index))
    assert data.num_classes == 3 and sorted(set(data.labels.tolist())) == [1, 2]
    index.write_text(json.dumps(["cat", "dog"]))
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_image_folder(str(tmp_path / "val"), name="pets", class_index=str(index))
    index.write_text(json.dumps({"cat": 0}))
    with pytest.raises(ConfigError, match=r"folder\(s\) \['dog'\] are not in dataset.class_index"):
        load_image_folder(str(tmp_path / "val"), name="pets", class_index=str(index))
    with pytest.raises(ConfigError, match=r"has no class sub-folders; expected <root>/<class name>/"):
        load_image_folder(str(tmp_path / "val" / "cat"), name="pets")


def test_corrupt_or_truncated_image_names_the_file(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    fx.write_image_folder(tmp_path, images[:6], labels[:6] % 2, ["a", "b"])
    victim = sorted((tmp_path / "b").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated PNG
    with pytest.raises(ConfigError, match=rf"image {victim} is not a readable image"):
        load_image_folder(str(tmp_path), name="broken")
    lazy = load_image_folder(str(tmp_path), name="broken", check="none")  # fails when its row is decoded
    with pytest.raises(ConfigError, match=rf"image {victim} cannot be decoded"):
        lazy.slice(0, len(lazy))


def test_image_folder_of_mixed_sizes_asks_for_a_crop(tmp_path: Path) -> None:
    from PIL import Image

    for i, size in enumerate([(32, 32), (40, 32)]):
        (tmp_path / f"c{i}").mkdir()
        Image.new("RGB", size).save(tmp_path / f"c{i}" / "x.png")
    data = load_image_folder(str(tmp_path), name="mixed")
    with pytest.raises(ConfigError, match=r"set dataset.crop"):
        data.slice(0, 2)


def test_npz_layouts_and_value_checks(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    u8 = load_npz(str(fx.write_npz(tmp_path / "u8.npz", images, labels)), name="mine")
    assert torch.equal(u8.slice(0, N).images, _expected(images)) and u8.num_classes == 10
    floats = _expected(images).numpy()
    np.savez(tmp_path / "f.npz", x=floats, y=labels)
    assert torch.equal(load_npz(str(tmp_path / "f.npz")).slice(0, N).images, _expected(images))
    np.savez(tmp_path / "bad_range.npz", x=floats * 255, y=labels)
    with pytest.raises(ConfigError, match=r"float x spans \[0, 255\]; expected pixels in \[0, 1\]"):
        load_npz(str(tmp_path / "bad_range.npz"))
    np.savez(tmp_path / "keys.npz", images=images, labels=labels)
    with pytest.raises(ConfigError, match=r"arrays \['images', 'labels'\]; expected 'x' and 'y'"):
        load_npz(str(tmp_path / "keys.npz"))
    assert len(load_npz(str(tmp_path / "keys.npz"), x_key="images", y_key="labels")) == N


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path: Path, arrays) -> None:
    images, _ = arrays
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "evil.npz", x=images, y=np.array([_Payload(marker)] * N, dtype=object))
    with pytest.raises(ConfigError, match=r"evil.npz: .*allow_pickle=False"):
        load_npz(str(tmp_path / "evil.npz"))
    assert not marker.exists()


def test_random_subset_is_seeded_keeps_full_set_ids_and_only_grows(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    fx.write_cifar_python(tmp_path, images, labels)
    a = load_cifar10(str(tmp_path), subset="random", subset_seed=7)
    b = load_cifar10(str(tmp_path), subset="random", subset_seed=7)
    c = load_cifar10(str(tmp_path), subset="random", subset_seed=8)
    assert torch.equal(a.sample_ids, b.sample_ids) and not torch.equal(a.sample_ids, c.sample_ids)
    assert sorted(a.sample_ids.tolist()) == list(range(N))  # a permutation of full-set indices
    first = a.slice(0, 5)
    ids = first.sample_ids.numpy()
    assert torch.equal(first.labels, torch.from_numpy(labels[ids]))
    assert torch.equal(first.images, _expected(images)[ids])
    with pytest.raises(ConfigError, match=r"dataset\.subset='some' is not one of first, random"):
        load_cifar10(str(tmp_path), subset="some")


def test_a_name_cannot_relabel_one_dataset_as_another(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    with pytest.raises(ConfigError, match=r"dataset.name='cifar10'.*cannot relabel"):
        load_digits(name="cifar10")
    fx.write_cifar_python(tmp_path / "c", images, labels)
    with pytest.raises(ConfigError, match=r"dataset.name='digits': this loader records its rows as 'cifar10'"):
        load_cifar10(str(tmp_path / "c"), name="digits")
    path = fx.write_npz(tmp_path / "x.npz", images, labels)
    with pytest.raises(ConfigError, match=r"dataset.name='CIFAR10' is the name of .*load_cifar10's data"):
        load_npz(str(path), name="CIFAR10")
    fx.write_image_folder(tmp_path / "f", images[:2], np.array([0, 1]), ["a", "b"])
    with pytest.raises(ConfigError, match=r"dataset.name='digits'"):
        load_image_folder(str(tmp_path / "f"), name="digits")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 4}, r"dataset\.channels=4 must be 1 \(grayscale\) or 3 \(RGB\)"),
        ({"resize": 0}, r"dataset\.resize=0 must be a positive integer or null"),
        ({"crop": "224"}, r"dataset\.crop='224' must be a positive integer"),
        ({"workers": 0}, r"dataset\.workers=0 must be an integer 1-64"),
        ({"check": "full"}, r"dataset\.check='full' is not one of header, none"),
        ({"crop": 64}, r"smaller than dataset\.crop=64; set dataset\.resize ≥ crop"),
        ({"subset": "random", "subset_seed": "x"}, r"dataset\.subset_seed='x' must be an integer"),
    ],
)
def test_image_folder_option_errors(tmp_path: Path, arrays, kwargs, match: str) -> None:
    images, _ = arrays
    fx.write_image_folder(tmp_path, images[:2], np.array([0, 1]), ["a", "b"])
    with pytest.raises(ConfigError, match=match):
        load_image_folder(str(tmp_path), name="opts", **kwargs).slice(0, 2)


def test_cifar_and_npz_option_errors(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    fx.write_cifar_python(tmp_path, images, labels)
    with pytest.raises(ConfigError, match=r"dataset\.split='val' is not one of test, train"):
        load_cifar10(str(tmp_path), split="val")
    with pytest.raises(ConfigError, match=r"dataset\.layout='hdf5' is not one of auto, python, binary"):
        load_cifar10(str(tmp_path), layout="hdf5")
    with pytest.raises(ConfigError, match=r"holds no cifar10 test split.*binary layout"):
        load_cifar10(str(tmp_path), layout="binary")
    with pytest.raises(ConfigError, match=r"dataset\.label_type='mid' is not one of fine, coarse"):
        load_cifar100(str(tmp_path), label_type="mid")
    np.savez(tmp_path / "y2d.npz", x=images, y=labels[:, None])
    with pytest.raises(ConfigError, match=r"y is int64 \(24, 1\) for 24 images; expected 24 integer labels"):
        load_npz(str(tmp_path / "y2d.npz"))
    np.savez(tmp_path / "i32.npz", x=images.astype(np.int32), y=labels)
    with pytest.raises(ConfigError, match=r"x has dtype int32; expected uint8 or float"):
        load_npz(str(tmp_path / "i32.npz"))
    np.savez(tmp_path / "chw.npz", x=images.transpose(0, 3, 1, 2).copy(), y=labels)
    with pytest.raises(ConfigError, match=r"read as NHWC has 32 channels; set dataset\.layout=nhwc or nchw"):
        load_npz(str(tmp_path / "chw.npz"))
    assert load_npz(str(tmp_path / "chw.npz"), layout="nchw").image_shape == (3, 32, 32)
    with pytest.raises(ConfigError, match=r"k\.npz \(y\): label 7 at index 1 is outside 0…4 \(5 classes\)"):
        load_npz(str(fx.write_npz(tmp_path / "k.npz", images, labels)), num_classes=5)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"bad\.npz: not a readable \.npz \(not a zip archive\)"):
        load_npz(str(tmp_path / "bad.npz"))
    marker = tmp_path / "pwned"
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ConfigError, match=r"pickle\.npz: not a readable \.npz \(a pickle \(it was not unpickled\)\)"):
        load_npz(str(tmp_path / "pickle.npz"))
    assert not marker.exists()


def test_cli_refuses_a_dataset_name_override_that_relabels(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from tests.conftest import run_cli, tiny_overrides

    proc = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, "dataset.name=cifar10", "perturbation=[clean]"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "dataset.name='cifar10'" in proc.stderr and "cannot relabel" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_header_check_runs_once_per_unchanged_listing(tmp_path: Path, arrays, monkeypatch) -> None:
    from PIL import Image

    images, _ = arrays
    fx.write_image_folder(tmp_path, images[:4], np.array([0, 1, 0, 1]), ["a", "b"])
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    load_image_folder(str(tmp_path), name="once")
    first = len(opened)
    load_image_folder(str(tmp_path), name="once")  # planner, then evaluator: headers are not re-read
    assert first == 4 + 1 and len(opened) == first + 1  # 4 headers + 1 decoded first image, then 1 decode
    victim = sorted((tmp_path / "a").iterdir())[0]
    victim.write_bytes(b"garbage")  # a changed file is checked again
    with pytest.raises(ConfigError, match=rf"image {victim} is not a readable image"):
        load_image_folder(str(tmp_path), name="once")


def test_take_decodes_only_the_asked_rows_in_both_dataset_kinds(tmp_path: Path, arrays) -> None:
    images, labels = arrays
    fx.write_cifar_python(tmp_path, images, labels)
    lazy = load_cifar10(str(tmp_path), subset="random", subset_seed=3)
    eager = lazy.slice(0, len(lazy))
    for data in (lazy, eager):
        rows = data.take([5, 0, 17])
        assert torch.equal(rows.sample_ids, eager.sample_ids[[5, 0, 17]])
        assert torch.equal(rows.images, eager.images[[5, 0, 17]]) and torch.equal(rows.labels, eager.labels[[5, 0, 17]])
    assert lazy.nbytes(10) == 10 * 3 * 32 * 32 * 4
