"""Pixels are read exactly (8- and 16-bit PNG/TIFF/PGM, refused modes named) and bad data gets one clear message."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data.cifar import load_cifar10
from engine.data.image_folder import load_image_folder
from engine.data.npz import load_npz
from engine.errors import ConfigError
from tests import data_fixtures as fx

N = 6
LABELS = np.arange(N) % 2
EXACT = 1e-6  # float32 rounding of v/255 against v·257/65535: the same number


def _load(root: Path, **kw: object) -> torch.Tensor:
    data = load_image_folder(str(root), name="px", **kw)  # type: ignore[arg-type]
    return data.slice(0, len(data)).images


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_same_image_in_8_and_16_bits_gives_the_same_floats(tmp_path: Path, suffix: str, channels: int) -> None:
    images = fx.smooth_images(N, seed=4, channels=channels)
    fx.write_image_folder(tmp_path / "8", images, LABELS, ["a", "b"])
    fx.write_image_folder(tmp_path / "16", images, LABELS, ["a", "b"], suffix=suffix, bits=16)
    for out in (1, 3):  # gray → RGB repeats, RGB → gray uses Pillow's weights: within one 8-bit rounding
        a, b = _load(tmp_path / "8", channels=out), _load(tmp_path / "16", channels=out)
        tol = EXACT if out == channels or channels == 1 else 0.5 / 255 + EXACT
        assert a.shape == b.shape and float((a - b).abs().max()) <= tol
    want = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255
    order = sorted(range(N), key=lambda i: (LABELS[i], i))
    assert float((_load(tmp_path / "16", channels=channels) - want[order]).abs().max()) <= EXACT


def test_16_bit_samples_are_divided_by_65535_not_clipped_or_truncated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    gray = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    for name, arr, channels in [("rgb48", rgb, 3), ("gray16", gray, 1)]:
        for suffix in (".png", ".tif"):
            root = tmp_path / f"{name}{suffix}"
            (root / "a").mkdir(parents=True)
            fx.write16(root / "a" / f"x{suffix}", arr)
            got = _load(root, channels=channels)[0].numpy().transpose(1, 2, 0)
            want = (arr.reshape(9, 7, channels).astype(np.float32) / np.float32(65535))
            assert np.array_equal(got, want), (name, suffix)  # every sample, bit for bit, low byte included


@pytest.mark.parametrize("kind", ["rgba64", "la32"])
def test_16_bit_alpha_is_dropped_like_torchvisions_convert(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 65536, (5, 4, 3 if kind == "rgba64" else 1), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (5, 4, 1), dtype=np.uint16)
    (tmp_path / "a").mkdir()
    fx.write_png(tmp_path / "a" / "x.png", np.concatenate([colour, alpha], axis=2))
    got = _load(tmp_path, channels=colour.shape[2])[0].numpy().transpose(1, 2, 0)
    assert np.array_equal(got, colour.astype(np.float32) / np.float32(65535))


def test_a_16_bit_decode_that_disagrees_with_pillow_is_refused(tmp_path: Path, monkeypatch) -> None:
    """OpenCV's samples are checked against Pillow's high bytes: a misread layout is refused, never used."""
    import cv2

    (tmp_path / "a").mkdir()
    fx.write_png(tmp_path / "a" / "x.png", np.random.default_rng(2).integers(0, 65536, (4, 4, 3), dtype=np.uint16))
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: real(buf, flags).byteswap())  # a wrong byte order
    with pytest.raises(ConfigError, match=r"x\.png: OpenCV and Pillow disagree on its 16-bit samples"):
        _load(tmp_path)


def test_16_bit_pgm_is_scaled_by_its_maxval(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    values = np.array([[0, 1, 512, 1023]], dtype=">u2")
    (tmp_path / "a" / "x.pgm").write_bytes(b"P5\n4 1\n1023\n" + values.tobytes())
    got = _load(tmp_path, channels=1)[0, 0, 0].numpy()
    assert np.abs(got - values[0].astype(np.float64) / 1023).max() <= 0.5 / 65535 + EXACT


def test_resize_and_crop_of_16_bit_images_match_the_8_bit_pipeline(tmp_path: Path) -> None:
    images = fx.smooth_images(N, size=40, seed=5)
    fx.write_image_folder(tmp_path / "8", images, LABELS, ["a", "b"])
    fx.write_image_folder(tmp_path / "16", images, LABELS, ["a", "b"], bits=16)
    a, b = _load(tmp_path / "8", resize=36, crop=32), _load(tmp_path / "16", resize=36, crop=32)
    assert a.shape == b.shape == (N, 3, 32, 32)
    # Pillow's 8-bit bilinear rounds after each of its two passes; the 16-bit path filters in float
    assert float((a - b).abs().max()) <= 1 / 255 + EXACT and float(b.min()) >= 0 and float(b.max()) <= 1




def _float_tiff(folder: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(folder / "f.tif")
    return folder / "f.tif"


def _int32_tiff(folder: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(folder / "i.tif")
    return folder / "i.tif"


def _cmyk_jpeg(folder: Path) -> Path:
    from PIL import Image

    Image.new("CMYK", (4, 4), (10, 20, 30, 40)).save(folder / "c.jpg")
    return folder / "c.jpg"


def _colour_ppm16(folder: Path) -> Path:
    (folder / "p.ppm").write_bytes(b"P6\n2 1\n65535\n" + np.arange(6, dtype=">u2").tobytes())
    return folder / "p.ppm"


def _signed_tiff(folder: Path) -> Path:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(folder / "s.tif", np.full((4, 4), -3, np.int16))
    return folder / "s.tif"


def _planar_tiff16(folder: Path) -> Path:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(folder / "p.tif", np.arange(48, dtype=np.uint16).reshape(3, 4, 4), photometric="rgb",
                     planarconfig="separate")
    return folder / "p.tif"


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (_float_tiff, r"Pillow mode F \(32-bit float samples"),
        (_planar_tiff16, r"a planar 16-bit colour TIFF"),
        (_int32_tiff, r"Pillow mode I \(32-bit integer samples"),
        (_cmyk_jpeg, r"Pillow mode CMYK \(CMYK colour, which needs the file's colour profile"),
        (_colour_ppm16, r"a colour PPM of more than 8 bits"),
        (_signed_tiff, r"signed"),
    ],
)
def test_a_mode_without_an_exact_map_is_refused_naming_the_file(tmp_path: Path, write, match: str) -> None:
    fx.write_image_folder(tmp_path, fx.smooth_images(1), np.array([0]), ["a", "b"])
    path = write(tmp_path / "b")
    with pytest.raises(ConfigError, match=rf"image {re.escape(str(path))} .*{match}.*save it as an 8- or 16-bit"):
        load_image_folder(str(tmp_path), name="modes")  # at load: the header check
    lazy = load_image_folder(str(tmp_path), name="modes", check="none")
    with pytest.raises(ConfigError, match=rf"image {re.escape(str(path))} .*{match}"):
        lazy.slice(0, len(lazy))  # and when its row is decoded, without the check


def test_palette_bilevel_and_low_bit_images_are_exact(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    grey = Image.fromarray(np.array([[0, 85, 170, 255]], np.uint8), "L")
    grey.save(tmp_path / "a" / "g2.png", bits=2)  # 2-bit gray: Pillow scales 0-3 to 0-255
    grey.convert("1", dither=Image.Dither.NONE).save(tmp_path / "a" / "h.png")
    pal = grey.convert("P")
    pal.info["transparency"] = 0  # transparency is dropped like alpha; the palette colours are exact
    pal.save(tmp_path / "a" / "p.png")
    got = _load(tmp_path, channels=1)
    assert torch.equal(got[0, 0, 0], torch.tensor([0, 85, 170, 255.0]) / 255)
    assert torch.equal(got[1, 0, 0], torch.tensor([0, 0, 1, 1.0]))  # bilevel: threshold at 128
    assert torch.equal(got[2, 0, 0], torch.tensor([0, 85, 170, 255.0]) / 255)


def test_digits_saved_as_16_bit_pngs_score_as_8_bit(tmp_path: Path, embedded_checkpoints) -> None:
    """The issue's probe: the digits test images as 16-bit PNGs scored 45.3 % (clipped) instead of 100 %."""
    from engine.data.digits import load_digits
    from engine.models.loader import checkpoint_path
    from engine.sweep import run_sweep
    from tests.conftest import compose_dict

    ckpt = checkpoint_path(compose_dict()["model"]["digits_cnn"], "digits_cnn")
    own = [f"model.digits_cnn.checkpoint={ckpt}", f"cache_dir={tmp_path / 'cache'}"]  # fingerprints: not in ~/.cache

    digits = load_digits()
    x = (digits.images[:, 0].numpy() * 255).round().astype(np.uint8)[..., None]
    acc = {}
    for bits in (8, 16):
        root = fx.write_image_folder(tmp_path / f"d{bits}", x, digits.labels.numpy(), [str(c) for c in range(10)],
                                     bits=bits)
        out = run_sweep(compose_dict(["model=[digits_cnn]", "dataset=image_folder", f"dataset.root={root}",
                                      f"dataset.name=digits{bits}", "dataset.channels=1", "perturbation=[clean]",
                                      f"n_examples={len(x)}", "batch_size=150", f"out_dir={tmp_path / f'o{bits}'}",
                                      "progress=false", *own]))
        acc[bits] = out.accuracy[0].accuracy
    reference = run_sweep(compose_dict(["model=[digits_cnn]", "perturbation=[clean]", f"n_examples={len(x)}",
                                        "progress=false", f"out_dir={tmp_path / 'ref'}", *own])).accuracy[0].accuracy
    assert acc[16] == acc[8] and abs(acc[8] - reference) <= 0.01 and acc[8] > 0.9, (acc, reference)


# -- item 11: confusing messages --------------------------------------------------------------------------------


def _cifar_batch(tmp_path: Path, labels: object) -> Path:
    images = fx.smooth_images(4)
    path = fx.write_cifar_python(tmp_path, images, np.arange(4))
    path.write_bytes(pickle.dumps({"data": images.transpose(0, 3, 1, 2).reshape(4, -1), "labels": labels},
                                  protocol=2))
    return path


class _Huge:
    """Asks the unpickler for a 10¹²-byte array (931 GiB) with a few bytes of pickle."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (10**12,), b"b"))


class _Called:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (np.ndarray, ((10**12,),))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["cat", "dog", "cat", "dog"], r"'labels' holds 'cat' \(str\) at index 0; expected integer class indices"),
        ([0, 1.5, 2, 3], r"'labels' holds 1\.5 \(float\) at index 1.*refused, never cast"),
        (np.array([0.0, 1.0, 2.0, 3.0]), r"'labels' holds 0\.0 \(float\) at index 0"),
        ([0, 1, 2, 10**30], r"label 10{30} at index 3 of 'labels' is not a class index"),
        ([0, 1, None, 3], r"'labels' holds None \(NoneType\) at index 2"),
        (_Huge(), r"asks for an array of shape \(1000000000000,\) \(1,000,000,000,000 bytes\) but the file holds only"),
        (_Called(), r"numpy\.ndarray\(\.\.\.\) is called directly"),
    ],
)
def test_bad_cifar_labels_name_the_file_and_the_label(tmp_path: Path, labels: object, match: str) -> None:
    path = _cifar_batch(tmp_path, labels)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: .*{match}"):
        load_cifar10(str(tmp_path))


def test_a_stray_huge_npz_label_is_named_not_turned_into_a_class_count(tmp_path: Path) -> None:
    images = fx.smooth_images(4)
    for stray in (255, 10**9):
        path = fx.write_npz(tmp_path / f"s{stray}.npz", images, np.array([0, 1, stray, 2]))
        with pytest.raises(ConfigError, match=rf"label {stray} at index 2 would make {stray + 1:,} classes .* the "
                                               r"other labels are ≤ 2; a stray label\? Fix that label, or set "
                                               r"dataset\.num_classes"):
            load_npz(str(path))
        with pytest.raises(ConfigError, match=rf"label {stray} at index 2 is outside 0…9"):
            load_npz(str(path), num_classes=10)  # given a class count, the label is named against it
    ok = load_npz(str(fx.write_npz(tmp_path / "ok.npz", images, np.array([0, 1, 9, 2]))))
    assert ok.num_classes == 10  # a gap among small labels is no stray: max(y) + 1 as before


def test_empty_npz_files_say_they_are_empty(tmp_path: Path) -> None:
    (tmp_path / "zero.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"zero\.npz: the file is empty \(0 bytes\)"):
        load_npz(str(tmp_path / "zero.npz"))
    np.savez(tmp_path / "none.npz")
    with pytest.raises(ConfigError, match=r"none\.npz: an empty \.npz \(it holds no arrays\)"):
        load_npz(str(tmp_path / "none.npz"))
    fx.write_npz(tmp_path / "rows.npz", fx.smooth_images(0), np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match=r"rows\.npz: x and y hold 0 images; the dataset is empty"):
        load_npz(str(tmp_path / "rows.npz"))


def test_an_empty_class_folder_is_named_because_it_would_shift_labels(tmp_path: Path) -> None:
    root = fx.write_image_folder(tmp_path / "pets", fx.smooth_images(4), np.array([0, 0, 2, 2]), ["ant", "bee", "cat"])
    (root / "bee" / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match=r"class folder\(s\) 'bee' hold no images with suffix .*would shift the "
                                          r"labels of the folders after it"):
        load_image_folder(str(root), name="pets")
    index = tmp_path / "index.json"
    index.write_text('{"ant": 0, "bee": 1, "cat": 2}')  # with a class index nothing shifts: accepted
    data = load_image_folder(str(root), name="pets", class_index=str(index))
    assert data.num_classes == 3 and sorted(set(data.labels.tolist())) == [0, 2]
    empty = tmp_path / "empty"
    for c in ("x", "y"):
        (empty / c).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"class folder\(s\) 'x', 'y' hold no images with suffix"):
        load_image_folder(str(empty), name="pets")
