"""data_prep.audio_contribution: the weak / strong audio-contribution split (AudioMCQ), run on the tiny
model as a user runs it, and its rules on hand-made answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.io import read_jsonl
from data_prep.audio_contribution import ContributionError, classify, subset_counts, subset_manifest

REPO = Path(__file__).resolve().parent.parent


def _rows(n: int) -> list[dict]:
    return [{"id": f"q{i}", "modality": "sound" if i % 2 else "music", "category": "Signal", "group": f"g{i}",
             "audio_path": f"/a/{i}.wav"} for i in range(n)]  # fmt: skip


def test_weak_items_are_those_answered_without_audio():
    rows = _rows(4)
    without = {"q0": True, "q1": False, "q2": False, "q3": True}
    with_audio = {"q0": True, "q1": True, "q2": False, "q3": False}
    subsets = classify(rows, with_audio, without, "m", "train")
    assert [r["id"] for r in subsets["weak"]] == ["q0", "q3"]
    assert [r["id"] for r in subsets["strong"]] == ["q1", "q2"]
    counts = subset_counts(subsets, with_audio)
    assert counts["strong"]["items"] == 2 and counts["strong"]["correct_with_audio"] == 1
    assert counts["weak"]["by_modality"] == {"music": {"items": 1, "correct_with_audio": 1},
                                              "sound": {"items": 1, "correct_with_audio": 0}}  # fmt: skip


def test_a_model_that_answers_nothing_without_audio_gives_an_empty_weak_subset(caplog):
    rows = _rows(3)
    subsets = classify(
        rows, dict.fromkeys(["q0", "q1", "q2"], True), dict.fromkeys(["q0", "q1", "q2"], False), "m", "train"
    )
    assert subsets["weak"] == [] and len(subsets["strong"]) == 3
    assert "answers none of the 3 items of split 'train' without the audio" in caplog.text


def test_a_model_that_answers_everything_without_audio_is_an_error_naming_it():
    rows = _rows(3)
    everything = dict.fromkeys(["q0", "q1", "q2"], True)
    with pytest.raises(
        ContributionError, match=r"model 'org/blind-model' answers all 3 items of split 'train'"
    ):
        classify(rows, everything, everything, "org/blind-model", "train")


def test_subset_manifest_recounts_and_rehashes():
    rows = _rows(4)
    manifest = {"name": "synth", "hash": "h0", "splits": {}, "counts": {"samples": 4, "text_only": 0}}
    out = subset_manifest(
        manifest, {"train": rows[:1], "test": rows[1:]}, "weak", {"source": "d", "rule": "r"}
    )
    assert out["name"] == "synth-weak-audio" and out["hash"] != "h0"
    assert out["splits"]["train"]["ids"] == ["q0"] and out["counts"]["per_split"] == {"train": 1, "test": 3}
    assert manifest["name"] == "synth"  # the source manifest is untouched


def test_split_runs_on_the_tiny_model_as_a_user_runs_it(tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    """Two eval.run subprocesses on the train split (real audio, then none), two prepared datasets
    out; the other splits copied whole; counts in the manifests and cards add up."""
    out = tmp_path / "contribution"
    cmd = [sys.executable, "-m", "data_prep.audio_contribution", "--model", str(tiny_qwen2_audio_fast),
           "--data", str(prepared_synth), "--out", str(out), "--max_new_tokens", "4", "--batch_size", "64"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    # A random model answers (next to) nothing, with or without audio: the weak subset may be empty,
    # the strong one cannot be.
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = json.loads((prepared_synth / "manifest.json").read_text())
    weak, strong = (json.loads((out / name / "manifest.json").read_text()) for name in ("weak", "strong"))
    train_ids = set(source["splits"]["train"]["ids"])
    weak_ids = set(weak["splits"].get("train", {}).get("ids", []))  # an empty split is not written
    assert weak_ids | set(strong["splits"]["train"]["ids"]) == train_ids
    assert not weak_ids & set(strong["splits"]["train"]["ids"])
    assert strong["splits"]["train"]["count"] > 0
    for subset in (weak, strong):
        assert subset["splits"]["test"] == source["splits"]["test"]  # held-out items stay whole
        counts = subset["audio_contribution"]["counts"]["train"]
        assert counts["weak"]["items"] + counts["strong"]["items"] == len(train_ids)
        assert sum(c["items"] for c in counts["strong"]["by_category"].values()) == counts["strong"]["items"]
    assert strong["audio_contribution"]["model"] == str(tiny_qwen2_audio_fast)
    card = (out / "strong" / "README.md").read_text()
    assert "## Audio contribution" in card and "strong" in card
    rows = read_jsonl(out / "strong" / "train.jsonl")
    assert [r["id"] for r in rows] == strong["splits"]["train"]["ids"]
    runs = sorted(p.name for p in (tmp_path / "contribution-evals").iterdir())
    assert runs == ["train-none", "train-real"]
    none_run = json.loads((tmp_path / "contribution-evals" / "train-none" / "run_info.json").read_text())
    assert none_run["audio_mode"] == "none" and none_run["status"] == "complete"


def test_a_failing_eval_run_is_an_error_naming_the_command(prepared_synth, tmp_path):
    """eval.run's own message stays on the terminal; the split ends with an error naming the run."""
    missing = tmp_path / "no-such-model"
    cmd = [sys.executable, "-m", "data_prep.audio_contribution", "--model", str(missing),
           "--data", str(prepared_synth), "--out", str(tmp_path / "contribution")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: eval.run exited" in proc.stderr and str(missing) in proc.stderr
    assert not (tmp_path / "contribution").exists()  # nothing half-written
