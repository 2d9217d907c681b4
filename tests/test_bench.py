"""Smoke test of every benchmark: `python -m bench.<name> --quick` runs and its last line is its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# name -> keys its JSON must carry (besides "bench")
BENCHES = {
    "prepare": ("items_per_s",),
    "padding": ("efficiency_random", "efficiency_grouped"),
    "eval_batching": ("speedup", "identical_predictions"),
    "data_stall": ("stall_frac",),
}


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BENCHES))
def test_bench_quick_prints_json_last(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = _last_json(proc.stdout)
    assert result["bench"] == name and result["quick"] is True
    for key in BENCHES[name]:
        assert key in result, key
    if name == "padding":
        assert 0 < result["efficiency_random"] <= result["efficiency_grouped"] <= 1
    if name == "eval_batching":
        assert result["identical_predictions"] is True
    if name == "data_stall":
        assert 0 <= result["stall_frac"] < 1
    if name == "prepare":
        assert result["items_per_s"] > 0 and result["samples_written"] == result["items"]
