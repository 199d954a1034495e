"""A remote model: the ``remote:`` block of a model config, built into an nn.Module whose forward asks the oracle.

``forward`` returns the contract's scores (probabilities, logits, or top-k probabilities with the others 0; for a
label-only endpoint a one-hot row), so ``clean``, every corruption and the query-based attacks run unchanged; it
has no gradient (a perturbation needing one is refused at plan time). Rows a forward pass sends are charged to the
run only (``RUN_ONLY``); query-based attacks charge samples through ``model.oracle`` in their own scopes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import torch
from torch import nn

from engine.errors import ConfigError
from engine.remote.accounting import RUN_ONLY, Limiter, LocalLimiter
from engine.remote.api import RemoteError
from engine.remote.encoding import ImageContract
from engine.remote.http import HttpSettings, OIPOracle, UploadOracle
from engine.remote.oracle import BaseOracle
from engine.seeding import stable_hash

PROTOCOLS = ("oip", "upload")
KEYS = {"protocol", "url", "model_name", "output", "top_k", "round_digits", "num_classes", "encoding",
        "jpeg_quality", "reencode_jpeg", "size", "tensor", "input_name", "output_name", "max_batch", "auth",
        "timeout_s", "retries", "throttle_retries", "backoff_s", "binary", "rate_limit", "concurrency",
        "budget_per_sample", "run_budget", "on_error", "cache", "cache_size", "upload"}
UPLOAD_KEYS = {"mode", "field", "label_path", "scores_path"}
AUTH_KEYS = {"env", "header", "scheme"}

# One limiter per remote target per process, installed by the driver (or, under Ray, a proxy to one shared actor)
# so that every model built for the same target shares the run's budget, rate and concurrency.
_LIMITERS: dict[str, Limiter] = {}
_LOCK = threading.Lock()


def is_remote(model_cfg: Mapping[str, Any] | None) -> bool:
    return bool(model_cfg) and model_cfg.get("remote") is not None  # type: ignore[union-attr]


def _check_keys(where: str, block: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(block) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; valid keys: {', '.join(sorted(allowed))}")


SECRET_WORDS = ("key", "token", "secret", "sig", "password", "passwd", "auth", "credential")


def _check_url(where: str, url: str) -> None:
    """The URL is written to the run folder with the config: credentials in it would be too, so they are refused."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(f"{where}.url holds a user name or password; the URL is written to the run folder. Put "
                          "the secret in an environment variable and name it in auth: {env: VAR}")
    secret = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)
              if any(w in k.lower() for w in SECRET_WORDS)]
    if secret:
        raise ConfigError(f"{where}.url has query parameter(s) {secret} that look like credentials; the URL is "
                          "written to the run folder. Send them as a header from an environment variable "
                          "(auth: {env: VAR, header: X-Api-Key, scheme: ''})")


def remote_settings(name: str, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The checked ``remote:`` block as a plain dict (raises ConfigError naming the key)."""
    block = dict(model_cfg.get("remote") or {})
    where = f"model.{name}.remote"
    _check_keys(where, block, KEYS)
    for key in ("protocol", "url", "num_classes"):
        if block.get(key) in (None, ""):
            raise ConfigError(f"{where}.{key} is required (docs/remote-targets.md)")
    if block["protocol"] not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}, got {block['protocol']!r}")
    if block["protocol"] == "oip" and not block.get("model_name"):
        raise ConfigError(f"{where}.model_name is required for the Open Inference Protocol (/v2/models/NAME/infer)")
    _check_url(where, str(block["url"]))
    if block.get("on_error", "fail") not in ("fail", "skip"):
        raise ConfigError(f"{where}.on_error must be 'fail' or 'skip', got {block['on_error']!r}")
    _check_keys(f"{where}.upload", dict(block.get("upload") or {}), UPLOAD_KEYS)
    _check_keys(f"{where}.auth", dict(block.get("auth") or {}), AUTH_KEYS)
    return block


def target_key(name: str, model_cfg: Mapping[str, Any]) -> str:
    """Which limiter a remote model uses: its name and endpoint (the run ledger is keyed by it too)."""
    block = remote_settings(name, model_cfg)
    return f"{name}:{stable_hash([block.get('url'), block.get('model_name')], 8)}"


# Keys that change no answer (how fast, how often, with which credentials, how much in total): left out of task ids,
# so a resumed sweep with a lower rate limit or a longer timeout reuses its finished tasks instead of paying again.
OPERATIONAL = {"auth", "timeout_s", "retries", "throttle_retries", "backoff_s", "rate_limit", "concurrency",
               "max_batch", "binary", "run_budget", "cache", "cache_size"}


def remote_identity(name: str, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the contract that decides the rows: endpoint, what it answers, how images are sent, budgets."""
    block = remote_settings(name, model_cfg)
    # a key that declares nothing (reencode_jpeg: null) is the contract without it: same task ids
    return {k: v for k, v in block.items() if k not in OPERATIONAL and not (k == "reencode_jpeg" and v is None)}


def contract_digest(name: str, model_cfg: Mapping[str, Any]) -> str:
    """Stands in for a checkpoint's sha256 in task ids: what the remote contract says (never a secret)."""
    return "remote-" + stable_hash(remote_identity(name, model_cfg), 24)


def install_limiter(key: str, limiter: Limiter) -> None:
    with _LOCK:
        _LIMITERS[key] = limiter


def installed_limiter(key: str) -> Limiter | None:
    with _LOCK:
        return _LIMITERS.get(key)


def clear_limiters() -> None:
    with _LOCK:
        _LIMITERS.clear()


def _limiter(key: str, block: Mapping[str, Any]) -> Limiter:
    with _LOCK:
        if key not in _LIMITERS:
            _LIMITERS[key] = LocalLimiter(block.get("run_budget"), block.get("rate_limit"),
                                          int(block.get("concurrency") or 4))
        return _LIMITERS[key]


def build_oracle(name: str, model_cfg: Mapping[str, Any], limiter: Limiter | None = None) -> BaseOracle:
    """The oracle a ``remote:`` block declares."""
    block = remote_settings(name, model_cfg)
    auth = dict(block.get("auth") or {})
    http = HttpSettings(timeout_s=float(block.get("timeout_s", 10.0)), retries=int(block.get("retries", 3)),
                        throttle_retries=int(block.get("throttle_retries", 50)),
                        backoff_s=float(block.get("backoff_s", 0.25)), auth_env=auth.get("env"),
                        auth_header=auth.get("header", "Authorization"), auth_scheme=auth.get("scheme", "Bearer"))
    size = block.get("size")
    image = ImageContract(block.get("encoding", "png"), int(block.get("jpeg_quality", 95)),
                          tuple(size) if size else None, block.get("reencode_jpeg"))
    common: dict[str, Any] = {
        "output": block.get("output", "probs"), "num_classes": int(block["num_classes"]),
        "budget_per_sample": block.get("budget_per_sample"), "image": image, "top_k": block.get("top_k"),
        "round_digits": block.get("round_digits"), "cache": bool(block.get("cache", True)),
        "cache_size": int(block.get("cache_size", 100_000)),
        "limiter": limiter or _limiter(target_key(name, model_cfg), block), "http": http}
    if block["protocol"] == "oip":
        return OIPOracle(block["url"], block["model_name"], input_name=block.get("input_name", "input-0"),
                         output_name=block.get("output_name"), tensor=block.get("tensor", "fp32"),
                         max_batch=int(block.get("max_batch", 64)), binary=bool(block.get("binary", False)),
                         **common)
    up = dict(block.get("upload") or {})
    return UploadOracle(block["url"], mode=up.get("mode", "multipart"), field=up.get("field", "file"),
                        label_path=up.get("label_path", "label"), scores_path=up.get("scores_path"), **common)


class RemoteModel(nn.Module):
    """An nn.Module-like target reached only through ``self.oracle``; forward returns scores, never gradients."""

    def __init__(self, name: str, oracle: BaseOracle, on_error: str = "fail") -> None:
        super().__init__()
        self.name = name
        self.oracle = oracle
        self.on_error = on_error
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)  # where inputs and outputs live

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.full((x.shape[0],), RUN_ONLY, dtype=torch.int64)
        answer = self.oracle.query(x.detach(), ids)
        if answer.scores is None:  # label only: a one-hot row, so argmax is the endpoint's label
            scores = torch.nn.functional.one_hot(answer.labels, self.oracle.num_classes).float()
        else:
            scores = answer.scores.float()
        return scores.to(x.device)


def build_remote_model(name: str, model_cfg: Mapping[str, Any], device: torch.device) -> RemoteModel:
    block = remote_settings(name, model_cfg)
    return RemoteModel(name, build_oracle(name, model_cfg), block.get("on_error", "fail")).to(device)


__all__ = ["RemoteError", "RemoteModel", "build_oracle", "build_remote_model", "contract_digest", "is_remote"]
