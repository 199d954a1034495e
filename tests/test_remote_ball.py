"""The ε ball of a remote target is drawn around the clean image as the endpoint receives it.

The embedded digits are not on the 8-bit grid (bilinear resizes of 0-16 scans), so a clean image as loaded and
as sent differ by up to half a grey level. The rows measure ``‖sent(x_adv) − sent(x)‖``; the query attacks and a
transfer to a remote target keep exactly that inside ε, and the evaluator refuses (ThreatModelViolation) any
example whose sent pixels leave the ball, instead of counting a success at ε + half a grey level.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from engine.data.digits import load_digits
from engine.errors import ThreatModelViolation
from engine.evaluation.evaluate import _batch_rows
from engine.evaluation.resources import Resources, build_perturbation
from engine.perturbations.base import BatchContext
from engine.perturbations.norms import NORMS
from engine.perturbations.square_query import SquareQuery
from engine.remote.local import LocalOracle
from engine.remote.model import RemoteModel
from tests.conftest import compose_dict

EPS = 0.1
N = 16
TASK = SimpleNamespace(quantize="none", model_name="target")  # all _batch_rows reads of a task


@pytest.fixture(scope="module")
def world(embedded_checkpoints: dict[str, str]) -> dict[str, Any]:
    cfg = compose_dict()
    net = Resources(torch.device("cpu")).model("digits_cnn", cfg["model"]["digits_cnn"])
    data = load_digits()
    x = data.images[:N]
    off = (x * 255 - (x * 255).round()).abs().amax(dim=(1, 2, 3))
    assert bool((off > 0.25).all())  # the premise: every image is well off the grid
    return {"cfg": cfg, "net": net, "x": x, "y": data.labels[:N], "ids": torch.arange(N)}


def _remote(net: torch.nn.Module, **contract: Any) -> RemoteModel:
    return RemoteModel("target", LocalOracle(net, output="probs", num_classes=10, **contract))


def _rows(model: RemoteModel, pert: Any, w: dict[str, Any], surrogates: dict[str, Any] | None = None
          ) -> dict[str, np.ndarray]:
    ctx = BatchContext(model=model, seed=0, sample_ids=w["ids"], surrogates=surrogates or {})
    ((row, _),) = _batch_rows(TASK, model, pert, ctx, w["x"], w["y"], 10, pert.name)  # type: ignore[arg-type]
    return row


def test_a_query_attack_on_a_remote_target_stays_inside_eps_of_the_image_sent(world: dict[str, Any]) -> None:
    target = _remote(world["net"])
    pert = SquareQuery(name="sq", norm="linf", eps=[EPS], budget=400, tags=("black-box",))
    row = _rows(target, pert, world)
    broken = ~row["correct"]
    assert broken.sum() >= 3  # real examples
    assert float(row["perturbation_size"].max()) <= EPS + 1e-6  # was 0.1020 with the ball around the loaded image
    # and the examples use the ball: most broken rows sit at the largest whole number of grey levels inside ε
    assert float(np.median(row["perturbation_size"][broken])) == pytest.approx(25 / 255, abs=1e-6)


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_a_transfer_to_a_remote_target_is_put_inside_the_ball_it_is_measured_in(
        world: dict[str, Any], encoding: str) -> None:
    """PGD's float examples at ‖δ‖ = ε from the loaded image: rounded, or JPEG-encoded, on their own they land
    outside ε of the clean image as sent; the transfer pulls each into the ball on the pixels sent."""
    cfg = world["cfg"]
    inner = {**cfg["perturbation"]["pgd_linf"], "name": "pgd_linf", "eps": [EPS], "steps": 10}
    pert = build_perturbation("xfer", {"_target_": "engine.perturbations.transfer.Transfer", "source": "src",
                                       "source_model": cfg["model"]["digits_cnn"], "attack": inner})
    target = _remote(world["net"], encoding=encoding, jpeg_quality=75)
    sent = target.oracle.sent
    ctx = BatchContext(model=world["net"], seed=0, sample_ids=world["ids"])
    (raw,) = list(pert.attack.run(world["x"], world["y"], ctx))  # what the source attack crafted, as floats
    raw_sizes = NORMS["linf"].measure(sent(raw.x) - sent(world["x"]))
    assert float(raw_sizes.max()) > EPS  # the premise: sent as crafted, some would leave the ball
    row = _rows(target, pert, world, {"src": world["net"]})
    assert float(row["perturbation_size"].max()) <= EPS + 1e-6
    if encoding == "png":  # on the lossless contract the examples keep their strength: PGD breaks most samples
        assert (~row["correct"]).sum() >= N // 2


def test_an_example_whose_sent_pixels_leave_the_ball_is_refused(world: dict[str, Any],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluator's own check on the pixels sent can fail: without the transfer's projection the rounded
    examples are half a grey level outside ε, and the batch is refused rather than counted."""
    import engine.perturbations.transfer as transfer_mod

    monkeypatch.setattr(transfer_mod, "grid_ball", lambda oracle, centre, cand, norm, eps: cand)
    cfg = world["cfg"]
    inner = {**cfg["perturbation"]["pgd_linf"], "name": "pgd_linf", "eps": [EPS], "steps": 3}
    pert = build_perturbation("xfer", {"_target_": "engine.perturbations.transfer.Transfer", "source": "src",
                                       "source_model": cfg["model"]["digits_cnn"], "attack": inner})
    with pytest.raises(ThreatModelViolation, match="outside the linf ball"):
        _rows(_remote(world["net"]), pert, world, {"src": world["net"]})


def test_a_local_checkpoint_keeps_the_loaded_image_as_centre(world: dict[str, Any]) -> None:
    """For a checkpoint held locally the engine measures against the image as loaded: the attack does too."""
    pert = SquareQuery(name="sq", norm="linf", eps=[EPS], budget=200, tags=("black-box",))
    ctx = BatchContext(model=world["net"], seed=0, sample_ids=world["ids"])
    (out,) = list(pert.run(world["x"], world["y"], ctx))
    assert float(NORMS["linf"].measure(out.x - world["x"]).max()) <= EPS + 1e-6


class ReencodingApp(torch.nn.Module):
    """An endpoint's own pipeline: it JPEG-re-encodes what it receives (like examples/targets/upload_app.py)."""

    def __init__(self, net: torch.nn.Module, quality: int) -> None:
        super().__init__()
        self.net, self.quality = net, quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from engine.remote.encoding import reencoded

        out: torch.Tensor = self.net(reencoded(x, self.quality))
        return out


def _fooled(row: dict[str, np.ndarray], clean: np.ndarray) -> int:
    return int((clean & ~row["correct"]).sum())


def test_declaring_the_endpoints_jpeg_re_encoding_makes_transferred_examples_survive_it(
        world: dict[str, Any]) -> None:
    """Square on the local weights (≤ 300 queries), each example sent once to an endpoint that re-encodes at q75.
    Crafted without knowing, some examples that fooled the local weights no longer fool the endpoint after its
    re-encoding; with ``reencode_jpeg: 75`` declared, the source is the weights behind the declared JPEG round trip,
    so every example it found fools the endpoint, and more samples are fooled. Sizes stay on the PNG pixels sent."""
    n = 48
    data = load_digits()
    x, y, ids = data.images[:n], data.labels[:n], torch.arange(n)
    cfg = compose_dict(["perturbation=[square_linf_remote]"])
    inner = {**cfg["perturbation"]["square_linf_remote"], "name": "square_linf_remote", "eps": [0.0, EPS],
             "budget": 300}
    pert = build_perturbation("xfer", {"_target_": "engine.perturbations.transfer.Transfer", "source": "src",
                                       "source_model": cfg["model"]["digits_cnn"], "attack": inner})
    net, app = world["net"], ReencodingApp(world["net"], 75)
    fooled, believed = {}, {}
    for declared in (None, 75):
        target = RemoteModel("target", LocalOracle(app, output="probs", num_classes=10, reencode_jpeg=declared))
        ctx = BatchContext(model=target, seed=0, sample_ids=ids, surrogates={"src": net})
        (clean, _), (attacked, x_adv) = _batch_rows(TASK, target, pert, ctx, x, y, 10, "xfer")  # type: ignore[arg-type]
        assert float(attacked["perturbation_size"].max()) <= EPS + 1e-6
        seen = target.oracle.seen if declared else target.oracle.sent  # what the crafting took the target to see
        with torch.no_grad():
            wrong_there = (net(seen(x_adv)).argmax(1) != y).numpy()
        believed[declared] = int((clean["correct"] & wrong_there).sum())
        fooled[declared] = _fooled(attacked, clean["correct"])
    assert fooled[None] < believed[None], (fooled, believed)  # the re-encoding undid some unknowing examples
    assert fooled[75] == believed[75], (fooled, believed)  # crafted through it: none lost
    assert fooled[75] > fooled[None], (fooled, believed)


def test_the_wrapper_sees_the_endpoints_pixels_and_passes_the_gradient_straight_through(
        world: dict[str, Any]) -> None:
    from engine.perturbations.transfer import ThroughEndpoint

    probe = ThroughEndpoint(world["net"], lambda x: torch.full_like(x, 0.5))
    x = world["x"][:2].clone().requires_grad_(True)
    out = probe(x)
    assert torch.equal(out.detach(), world["net"](torch.full_like(x, 0.5)).detach())
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0.0


def test_reencode_jpeg_is_checked_and_part_of_the_contract() -> None:
    from engine.errors import ConfigError
    from engine.remote.encoding import ImageContract
    from engine.remote.model import remote_identity

    for bad in (0, 101, 7.5, True, "75"):
        with pytest.raises(ConfigError, match="reencode_jpeg"):
            ImageContract("png", 95, None, bad)  # type: ignore[arg-type]
    block = {"protocol": "upload", "url": "http://127.0.0.1:9/classify", "num_classes": 10}
    assert remote_identity("m", {"remote": block}) != remote_identity("m", {"remote": {**block, "reencode_jpeg": 75}})
