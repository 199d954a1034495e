"""Claim files parse strictly (engine/compose/strict_yaml.py): duplicate keys, aliases, depth, size, encoding.

A duplicate ``claims:`` key once verified only the last list (exit 0 while the dropped claim was
refuted); a 620-byte file of nested aliases took 2.5 GB before validation said a word. Each such file
is now one message naming the file and the line, exit 2 through ``gauntlet verify``, no traceback.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from engine.claims.schema import load_claim_file
from engine.compose import strict_yaml
from engine.compose.config import CONFIG_DIR, yaml_problems
from engine.errors import ConfigError
from tests.conftest import REPO, run_cli

VALID = """\
model: digits_cnn_at
dataset: digits
n_examples: 50
claims:
  - threat_model: {norm: linf, eps: 0.1}
    claimed_accuracy: 0.8
"""


def alias_bomb(levels: int = 10, width: int = 9) -> str:
    """Each level is a list of ``width`` aliases to the one before: width**levels values once expanded.

    The anchors sit inside ``title``, a valid key whose value is turned into text: a loader that
    expands aliases before validation builds all of it.
    """
    lines = ["model: digits_cnn_at", "dataset: digits", "title:",
             "  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines += ["claims:", "  - {threat_model: {norm: linf, eps: 0.1}, claimed_accuracy: 0.5}"]
    return "\n".join(lines) + "\n"


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_claim_file(path)
    msg = str(err.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_a_duplicate_claims_key_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "two_claims.yaml"
    path.write_text(VALID + "claims:\n  - threat_model: {norm: linf, eps: 0.3}\n    claimed_accuracy: 0.9\n")
    _refused(path, str(path), "key 'claims' is given twice, at line 4 and line 7")


@pytest.mark.parametrize(("text", "needle"), [
    ("model: digits_cnn_at\nmodel: digits_cnn\ndataset: digits\nclaims: []\n",
     "'model' is given twice, at line 1 and line 2"),
    (VALID.replace("{norm: linf, eps: 0.1}", "{norm: linf, eps: 0.1, eps: 0.3}"),
     "'eps' is given twice, at line 5, column 32 and line 5, column 42"),
    (VALID + "    claimed_accuracy: 0.1\n", "'claimed_accuracy' is given twice, at line 6 and line 7"),
    (VALID.replace("n_examples: 50", "n_examples: 50\n'n_examples': 60"), "'n_examples' is given twice"),
])
def test_a_duplicate_key_anywhere_is_an_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    _refused(path, needle)


def test_the_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size <= 700  # like the hostile run's 620-byte file: 9**10 values once expanded
    tracemalloc.start()
    start = time.perf_counter()
    _refused(path, "more than 64 YAML aliases")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20e6, (elapsed, peak)


def test_few_aliases_that_expand_a_lot_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_text(alias_bomb(levels=6, width=9))  # 45 aliases, 9**6 = 531,441 values
    _refused(path, "aliases would expand to more than 20000 values")


def test_recursive_aliases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("model: &m [*m]\ndataset: digits\nclaims: []\n")
    _refused(path, "an alias inside the value it names")


def test_a_few_anchors_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("model: digits_cnn_at\ndataset: digits\nn_examples: 50\nclaims:\n"
                    "  - &c {threat_model: {norm: linf, eps: 0.1}, claimed_accuracy: 0.8}\n"
                    "  - {threat_model: {norm: linf, eps: 0.2}, claimed_accuracy: 0.5}\n")
    cf = load_claim_file(path)
    assert [c.eps for c in cf.claims] == [0.1, 0.2]


@pytest.mark.parametrize(("content", "needle"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "is a binary file, not YAML text"),
    ("model: digits_cnn_at\ntitle: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 31)"),
    (VALID.encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (b"", "the claim file is empty"),
    (b"   \n\n", "the claim file is empty"),
    (b"# only a comment\n", "is empty: it holds no YAML document"),
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 32 levels (line 1)"),
    (b"a:\n" + b"".join(b"  " * i + b"b:\n" for i in range(1, 200)) + b"  " * 200 + b"c: 1\n", "nests deeper than 32"),
    (b"model: x\n---\nmodel: y\n", "holds more than one YAML document"),
    (b"model: !!python/object/apply:os.system [touch pwned]\n", "could not determine a constructor"),
    (b"model: [digits\n", "not valid YAML"),
    (b"\x01\x02model: x\n", "not valid YAML"),
    (VALID.encode() + b"#" * 300_000 + b"\n", "is more than a claim file may hold (262,144 bytes)"),
])
def test_unreadable_files_get_one_clear_message(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "claim.yaml"
    path.write_bytes(content)
    msg = _refused(path, needle)
    assert msg.count("\n") == 0


def test_a_folder_or_a_missing_file_is_not_a_claim_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_claim_file(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_claim_file(tmp_path / "gone.yaml")


def test_the_shipped_example_claim_files_still_load() -> None:
    for path in sorted((REPO / "examples" / "claims").glob("*.yaml")):
        doc = strict_yaml.load_file(path, what="claim file")
        assert isinstance(doc, dict) and "claims" in doc, path


def test_a_claim_file_cannot_set_the_target_policy(tmp_path: Path) -> None:
    for extra, needle in (("allow_any_target: true\n", "allow_any_target: a claim file cannot widen the _target_"),
                          ("target_packages: [os]\n", "target_packages: a claim file cannot widen")):
        path = tmp_path / "policy.yaml"
        path.write_text(VALID + extra)
        _refused(path, needle, "on the command line")
    path = tmp_path / "nested.yaml"
    path.write_text(VALID.replace("dataset: digits", "dataset: {_target_: engine.data.digits.load_digits, "
                                                     "allow_any_target: true}"))
    _refused(path, "dataset.allow_any_target: a claim file cannot widen")


def test_inline_blocks_interpolate_only_cache_dir(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(VALID.replace("model: digits_cnn_at", "model:\n  arch: {_target_: engine.models.cnn.SmallCNN}\n"
                                  "  checkpoint: ${oc.env:AWS_SECRET_ACCESS_KEY}"))
    _refused(path, "may interpolate only ${cache_dir}, not ${oc.env:AWS_SECRET_ACCESS_KEY}")
    path.write_text(VALID.replace("model: digits_cnn_at", "model:\n  arch: {_target_: 'engine.models.cnn.SmallCNN()'}\n"
                                  "  checkpoint: ${cache_dir}/x.safetensors"))
    _refused(path, "must be a dotted Python name")


def test_the_command_line_policy_reaches_inline_blocks(tmp_path: Path) -> None:
    """target_packages given to ``gauntlet verify`` is the user's opt-in, and it covers the claim's inline blocks."""
    from engine.claims.build import base_config

    pkg = tmp_path / "pkgs" / "vendornets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from engine.models.cnn import SmallCNN as _S\n\n"
                                     "class Net(_S):\n    pass\n")
    path = tmp_path / "vendor.yaml"
    path.write_text(VALID.replace("model: digits_cnn_at", "model:\n  arch: {_target_: vendornets.Net}\n"
                                  "  mean: [0.5]\n  std: [0.5]\n  checkpoint: x.safetensors"))
    cf = load_claim_file(path)
    import sys

    sys.path.insert(0, str(pkg.parent))
    try:
        with pytest.raises(ConfigError, match=r"vendor.yaml: model.model.arch._target_='vendornets.Net' is outside"):
            base_config(cf, [f"out_dir={tmp_path / 'out'}"], None)
        cfg = base_config(cf, [f"out_dir={tmp_path / 'out'}", "target_packages=[vendornets]"], None)
        assert cfg["model"]["model"]["arch"]["_target_"] == "vendornets.Net"
    finally:
        sys.path.remove(str(pkg.parent))
        sys.modules.pop("vendornets", None)


@pytest.mark.parametrize("case", ["duplicate", "bomb", "binary", "deep"])
def test_verify_refuses_with_exit_2_and_no_traceback(tmp_path: Path, case: str) -> None:
    content = {"duplicate": (VALID + "claims: []\n").encode(), "bomb": alias_bomb().encode(),
               "binary": bytes(range(256)) * 4, "deep": b"[" * 50_000}[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    start = time.perf_counter()
    proc = run_cli("verify", str(path), f"out_dir={tmp_path / 'out'}", timeout=120)
    assert time.perf_counter() - start < 60
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith(f"error: {path}: "), proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


# -- Hydra config files: OmegaConf refuses a duplicate key with a traceback; Gauntlet names both lines first --------


def test_shipped_configs_have_no_duplicate_keys() -> None:
    assert yaml_problems([Path(CONFIG_DIR)]) == []


def test_a_config_file_with_a_duplicate_key_is_refused_before_hydra(tmp_path: Path) -> None:
    cd = tmp_path / "cd"
    (cd / "dataset").mkdir(parents=True)
    (cd / "dataset" / "dup.yaml").write_text("_target_: engine.data.digits.load_digits\nname: a\nimage_size: 32\n"
                                             "name: b\n")
    proc = run_cli("--config-dir", str(cd), "dataset=dup", f"out_dir={tmp_path / 'out'}", "perturbation=[clean]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: {cd / 'dataset' / 'dup.yaml'}: key 'name' is given twice, at line 2 and line 4" in proc.stderr
    assert not (tmp_path / "out").exists()
