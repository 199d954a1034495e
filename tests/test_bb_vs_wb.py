"""scripts/bb_vs_wb.py at a tiny size: the served target's image count equals Gauntlet's, both white-box references
are read at the right radius, the table's gaps are the cells' differences and a black-box number below a white-box
one is flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, load_script

pytestmark = pytest.mark.timeout(600)


def _script() -> ModuleType:
    module: ModuleType = load_script("bb_vs_wb")
    return module


def test_the_8bit_radius_is_whole_grey_levels_inside_eps() -> None:
    bb = _script()
    assert bb.grid_eps(0.1) == 25 / 255 and bb.grid_eps(0.2) == 51 / 255 and bb.grid_eps(8 / 255) == 8 / 255
    assert all(bb.grid_eps(e) <= e and math.isclose(bb.grid_eps(e) * 255, round(bb.grid_eps(e) * 255))
               for e in (0.01, 0.03, 0.1, 0.3))


def test_served_run_counts_match_the_server_and_the_table_says_what_the_rows_say(
        tmp_path: Path, embedded_checkpoints: dict[str, str]) -> None:
    import os
    import subprocess
    import sys

    from engine.store.results import read

    out = tmp_path / "bb"
    proc = subprocess.run([sys.executable, str(REPO / "scripts/bb_vs_wb.py"), "--models", "digits_cnn", "--n", "3",
                           "--budget", "60", "--jobs", "1", "--served", "--attacks", "rays_linf", "--eps", "0.1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=500,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "bb_vs_wb.json").read_text())
    by = {r["perturbation"]: r for r in doc["results"]}
    assert set(by) == {"autoattack_standard_linf", "autoattack_standard_linf@8bit", "rays_linf"}
    rays = by["rays_linf"]
    assert rays["served"] and rays["server_images"] == rays["gauntlet_sent"] > 0
    assert f"images: Gauntlet {rays['gauntlet_sent']:,}, server {rays['server_images']:,}" in proc.stdout
    (gap,) = doc["gaps"]
    black = 100 * rays["levels"]["0.1"]["robust"] / 3
    assert gap["black_box"] == pytest.approx(black)
    assert gap["gap_points"] == pytest.approx(black - gap["white_box"])
    assert gap["gap_points_8bit"] == pytest.approx(black - gap["white_box_8bit"])
    assert gap["below_white_box"] == (black < min(gap["white_box"], gap["white_box_8bit"]))
    eight = read(out / "digits_cnn__autoattack_standard_linf_8bit").to_pylist()
    assert {r["level"] for r in eight} == {25 / 255} and len(eight) == 3  # the 8-bit reference at 25 grey levels
    assert "| digits_cnn | 0.1 |" in (out / "bb_vs_wb.md").read_text()


def test_a_black_box_number_below_the_white_box_one_is_flagged() -> None:
    bb = _script()

    def res(p: str, robust: int) -> dict[str, object]:
        return {"model": "m", "perturbation": p, "levels": {0.1: {"n": 10, "robust": robust, "mean_queries": 1.0,
                                                                  "median_queries_to_success": None}}}

    text, gaps = bb._table([res(bb.WHITE, 5), res(bb.WHITE8, 6), res("rays_linf", 4)], [0.1], 10, 100,
                           ["rays_linf"], True)
    assert gaps[0]["below_white_box"] and "rays_linf BELOW white-box (float)" in text
    assert "rays_linf BELOW white-box (8-bit)" in text
