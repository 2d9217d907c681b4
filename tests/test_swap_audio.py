"""data_prep.swap_audio: every swapped sample hears a real clip of its own question from another scene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.io import read_jsonl
from data_prep.swap_audio import SwapError, donors, main, swap_dataset


def _audio_paths(sample: dict) -> list[str]:
    return [b["path"] for m in sample["messages"] for b in m["content"] if b.get("type") == "audio"]


def test_swapped_splits(prepared_synth: Path, tmp_path: Path) -> None:
    out = swap_dataset(prepared_synth, tmp_path / "swapped", seed=0)
    manifest = json.loads((out / "manifest.json").read_text())
    original = json.loads((prepared_synth / "manifest.json").read_text())
    assert manifest["audio_swap"]["source_hash"] == original["hash"] != manifest["hash"]
    assert manifest["audio_swap"]["splits"] == ["train"]
    for split in ("train",):
        before = {s["id"]: s for s in read_jsonl(prepared_synth / f"{split}.jsonl")}
        after = list(read_jsonl(out / f"{split}.jsonl"))
        record = manifest["audio_swap"]["donors"][split]
        assert [s["id"] for s in after] == list(before) and set(record) == set(before)
        for s in after:
            donor = before[record[s["id"]]]
            assert donor["question"] == s["question"] and donor["group"] != s["group"]
            assert _audio_paths(s) == _audio_paths(donor) == [donor["audio_path"]] == [s["audio_path"]]
            assert s["audio_duration"] == donor["audio_duration"]
            # Only the audio moved: the text, the answer and the target are the sample's own.
            assert (
                s["messages"][-1] == before[s["id"]]["messages"][-1]
                and s["answer"] == before[s["id"]]["answer"]
            )
        # Every clip of the split is still used exactly once.
        assert sorted(s["audio_path"] for s in after) == sorted(s["audio_path"] for s in before.values())
    for split in ("val", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (prepared_synth / f"{split}.jsonl").read_bytes()
    assert (out / "hf" / "train").is_dir() and (out / "README.md").is_file()


def test_deterministic_and_seeded(prepared_synth: Path) -> None:
    samples = list(read_jsonl(prepared_synth / "train.jsonl"))
    assert donors(samples, seed=0) == donors(samples, seed=0)
    assert donors(samples, seed=0) != donors(samples, seed=1)


def test_refuses_what_it_cannot_swap(prepared_synth: Path, tmp_path: Path) -> None:
    samples = list(read_jsonl(prepared_synth / "train.jsonl"))
    lonely = dict(samples[0], question="A question nobody else asks?")
    with pytest.raises(SwapError, match="only sample .* asks it"):
        donors([*samples, lonely], seed=0)
    twin = dict(samples[0], id="twin")  # same question and same group: no other scene to give it
    with pytest.raises(SwapError, match="share group"):
        donors([samples[0], twin], seed=0)
    with pytest.raises(SwapError, match="no split"):
        main(["--data", str(prepared_synth), "--out", str(tmp_path / "x"), "--splits", "train,dev"])
    with pytest.raises(SwapError, match="asks it"):  # the fixture's 6-item val split asks a wording once
        main(["--data", str(prepared_synth), "--out", str(tmp_path / "x"), "--splits", "train,val"])
