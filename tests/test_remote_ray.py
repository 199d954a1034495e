"""runner=ray on a remote target: one limiter actor holds the run's budget for every worker together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.errors import GauntletError
from engine.remote.ledger import RunLedger
from engine.sweep import run_sweep
from tests.conftest import compose_dict
from tests.remote_servers import serve

pytestmark = pytest.mark.timeout(400)


def _cfg(url: str, out: Path, *extra: str) -> dict[str, Any]:
    return compose_dict(["model=[remote_digits_cnn]", f"model.remote_digits_cnn.remote.url={url}", f"out_dir={out}",
                         "n_examples=32", "batch_size=8", "shard_size=8", "progress=false", "runner=ray",
                         "runner.threads=1", *extra])


def test_the_run_budget_holds_across_all_ray_actors(ray_instance: Any, embedded_checkpoints: dict[str, str],
                                                    tmp_path: Path) -> None:
    with serve("oip", "--models", "digits_cnn") as server:
        out = tmp_path / "run"
        full = run_sweep(_cfg(server.url, out, "perturbation=[clean]"))
        assert full.evaluated == 4
        (target,) = RunLedger(out).targets().values()
        used = server.stats()["images"]
        assert target["spent"] == used == 33  # 32 samples over 2 actors + the plan's one grey image
        # a second run in a new folder with a budget for 2 of its 4 tasks: the actors together stop at it
        capped = tmp_path / "capped"
        with pytest.raises(GauntletError, match=r"run's query budget \(17\)"):
            run_sweep(_cfg(server.url, capped, "perturbation=[clean]",
                           "model.remote_digits_cnn.remote.run_budget=17"))
        (target,) = RunLedger(capped).targets().values()
        assert target["spent"] == server.stats()["images"] - used <= 17  # never past it, whichever actor asked
