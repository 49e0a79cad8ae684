"""The experiments' --smoke modes run end to end (seconds each) and write their result files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
from _data import CorpusMissing, default_corpus_dir, load_corpus  # noqa: E402


def _corpus_or_repo_docs() -> list[str]:
    # the Vim help files when installed (apt-get install vim-runtime), else this repository's own docs
    return [] if default_corpus_dir() else ["--data", os.path.join(ROOT, "docs")]


def test_corpus_is_split_by_file_and_explains_a_missing_corpus(tmp_path):
    for i in range(6):
        (tmp_path / f"f{i}.txt").write_text(f"file {i} " * 50)
    c = load_corpus(str(tmp_path), valid_fraction=0.3)
    assert c.files_train + c.files_valid == 6 and c.files_valid >= 1
    assert c.train.numel() > 0 and c.valid.numel() > 0
    with pytest.raises(CorpusMissing, match="apt-get install vim-runtime"):
        load_corpus(str(tmp_path / "nowhere"))


def _smoke(name, tmp_path):
    script = os.path.join(ROOT, "experiments", name, "run.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, script, "--smoke", "--out", str(tmp_path), *_corpus_or_repo_docs()],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (tmp_path / "results.md").exists()
    with open(tmp_path / "results.json") as f:
        return json.load(f)


def test_length_extrapolation_smoke(tmp_path):
    res = _smoke("length_extrapolation", tmp_path)
    assert set(res["methods"]) >= {"softmax", "lssa", "lssar15", "lssar3", "lssa+rw15"}
    for r in res["methods"].values():
        assert all(math.isfinite(v[0]) and v[0] > 0 for v in r["mean"].values())
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_pararnn_lm_smoke(tmp_path):
    res = _smoke("pararnn_lm", tmp_path)
    for cell in ("gru", "lstm"):
        r = res["cells"][cell]
        assert len(r["loss_newton"]) == len(r["loss_sequential"]) == res["config"]["steps"]
        assert r["max_abs_loss_difference"] < 1e-3  # same weights, same batches: Newton tracks the exact pass
        assert sum(r["iteration_histogram"].values()) == res["config"]["steps"] * res["config"]["layers"]
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_analog_lm_smoke(tmp_path):
    res = _smoke("analog_lm", tmp_path)
    assert set(res["analog"]) == {"5", "3"} and math.isfinite(res["digital_bpc"])
    for r in res["analog"].values():
        assert len(r["noise"]["runs"]) == res["config"]["programmings"] and math.isfinite(r["hwa"]["mean"])
    assert (tmp_path / "bpc.png").stat().st_size > 1000
