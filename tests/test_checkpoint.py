"""Checkpoints: sha256 manifests, corrupt/missing files, and loading that never executes code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import CheckpointError, ConfigError
from engine.models.checkpoint import load_state, manifest_path, save_checkpoint, sha256_of, verify_file
from engine.models.cnn import SmallCNN
from engine.models.loader import build_model, ensure_checkpoint

ARCH = {"_target_": "engine.models.cnn.SmallCNN", "in_channels": 1, "num_classes": 10}


def _cfg(path: Path, **kw: object) -> dict[str, object]:
    return {"arch": ARCH, "mean": [0.3], "std": [0.3], "checkpoint": str(path), "sha256": None, "train": None, **kw}


def test_roundtrip_records_sha256_in_manifest(tiny_checkpoint: Path) -> None:
    import json

    man = json.loads(manifest_path(tiny_checkpoint).read_text())
    assert man["sha256"] == sha256_of(tiny_checkpoint)
    model = build_model("tiny", _cfg(tiny_checkpoint), torch.device("cpu"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_checkpoint_without_recipe_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist; set model\.mine\.checkpoint="):
        ensure_checkpoint("mine", _cfg(tmp_path / "nope.safetensors"))


def test_truncated_checkpoint_is_caught_by_its_manifest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    manifest_path(bad).write_text(manifest_path(tiny_checkpoint).read_text())
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        verify_file(bad, None, "bad")


def test_truncated_checkpoint_without_manifest_fails_to_load_clearly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_state(bad, "bad")


def test_configured_sha256_overrides_the_manifest(tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="expected 000000000000"):
        verify_file(tiny_checkpoint, "0" * 64, "tiny")
    assert verify_file(tiny_checkpoint, sha256_of(tiny_checkpoint), "tiny") == sha256_of(tiny_checkpoint)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    save_checkpoint(SmallCNN(num_classes=7).state_dict(), path, {})
    with pytest.raises(CheckpointError, match=r"does not fit model\.w\.arch"):
        build_model("w", _cfg(path), torch.device("cpu"))


class _Evil:
    """Unpickling this would create a marker file: the load must refuse instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickle_payload_in_a_pt_file_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r"is a pickle that needs code to load .*convert-checkpoint"):
        load_state(path, "evil")
    assert not marker.exists()


def test_weights_only_pt_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"state_dict": SmallCNN().state_dict()}, path)
    build_model("ok", _cfg(path), torch.device("cpu"))


def test_unknown_suffix_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="suffix"):
        load_state(path, "m")


def test_channels_last_memory_format_gives_the_same_logits_and_input_gradients(tiny_checkpoint: Path) -> None:
    plain = build_model("tiny", _cfg(tiny_checkpoint), torch.device("cpu"))
    fast = build_model("tiny", {**_cfg(tiny_checkpoint), "memory_format": "channels_last"}, torch.device("cpu"))
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain, fast):
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        (g,) = torch.autograd.grad(out.max(1).values.sum(), [xg])
        assert g.is_contiguous()  # attacks keep seeing ordinary images
        grads.append((out.detach(), g))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)


def test_unknown_memory_format_names_the_choices(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"memory_format.*channels_last"):
        build_model("tiny", {**_cfg(tiny_checkpoint), "memory_format": "nhwc"}, torch.device("cpu"))
