"""Smoke test of every benchmark: `python -m bench.<name> --quick` runs and its last line is its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import vllm_missing

REPO = Path(__file__).resolve().parent.parent

# name -> keys its JSON must carry (besides "bench")
BENCHES = {
    "prepare": ("items_per_s",),
    "padding": ("efficiency_random", "efficiency_grouped"),
    "eval_batching": ("speedup", "identical_predictions", "tokenizer", "vocab_size"),
    "data_stall": ("stall_frac",),
    "step_time": (
        "ms_per_step",
        "reference_ms_per_step",
        "ratio",
        "peak_rss_mib",
        "reference_peak_rss_mib",
        "tokenizer",
    ),
    "gpu_throughput": ("train", "generation", "forbidden_imports", "device"),
    "eval_backends": ("hf_items_per_s", "vllm_items_per_s", "speedup", "identical_frac"),
    "grpo_gain": ("seeds", "seeds_improved_p01", "recipe"),
}
NEEDS_VLLM = {"eval_backends"}


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BENCHES))
def test_bench_quick_prints_json_last(name, tmp_path):
    if name in NEEDS_VLLM and vllm_missing():
        pytest.skip(vllm_missing())
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
    if name == "step_time":
        # Same model, data and order: the label-only loss is the full-logits loss.
        assert result["first_loss_rel_diff"] < 1e-5 and result["ratio"] > 0
        assert result["trainable_params"] == result["reference_trainable_params"]
    if name == "gpu_throughput":
        assert result["forbidden_imports"] == []  # torch + transformers + peft only
        rows = {(r["attn"], r["clip_s"], r["system"]): r for r in result["train"]}
        assert {k[2] for k in rows} == {"ours", "full_logits"} and {k[1] for k in rows} == {10, 30}
        for (attn, clip, _), row in rows.items():
            assert row["tokens_per_s"] > 0 and row["model_tflops_per_step"] > 0
            ref = rows[(attn, clip, "full_logits")]["loss"]
            assert abs(row["loss"] - ref) <= 1e-4 * abs(ref)  # lr 0: both systems train the same weights
        assert all(g["tokens_per_s"] > 0 for g in result["generation"])
    if name == "prepare":
        assert result["items_per_s"] > 0 and result["samples_written"] == result["items"]
    if name == "grpo_gain":
        (seed,) = result["seeds"]
        assert {
            "start_acc",
            "grpo_acc",
            "sft_acc",
            "p_grpo_vs_start",
            "p_grpo_vs_sft",
            "reward_curve",
        } <= set(seed)
        assert seed["grpo_steps"] == 2 and seed["sft_steps"] > 0  # (b) trained while (a) did
        assert 0 <= seed["zero_variance_share_mean"] <= 1


class _FakeTrainer:
    def __init__(self) -> None:
        self.callbacks: list = []

    def get_batch_samples(self, *args):
        return [], None

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback)


def test_data_stall_raises_when_nothing_was_measured():
    from bench.data_stall import StallTimer

    trainer = _FakeTrainer()
    timer = StallTimer(trainer)
    assert trainer.callbacks == [timer]
    trainer.get_batch_samples(iter([]), 1, "cpu")  # one fetch, no step end
    with pytest.raises(RuntimeError, match="measured nothing"):
        timer.stall_frac()


def test_data_stall_window_is_the_training_steps_only():
    """Step 1 is warm-up; the window closes at the last step's end (a later save is not counted)."""
    from bench.data_stall import StallTimer

    timer = StallTimer(_FakeTrainer())
    timer.calls = [(0.0, 1.0), (10.0, 11.0), (20.0, 22.0)]  # fetches of steps 1, 2, 3
    timer.step_ends = [5.0, 15.0, 25.0]  # then a final save until t=100: outside the window
    frac, step_s = timer.stall_frac()
    assert frac == pytest.approx((1.0 + 2.0) / (25.0 - 10.0))
    assert step_s == pytest.approx((25.0 - 10.0) / 2)
