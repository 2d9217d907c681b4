"""Readers (MMAU-style, MuChoMusic, canonical) on fixtures written here, and every bad-input error."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from data_prep.config import SourceConfig
from data_prep.prepare import run
from data_prep.readers import get_reader, load_records
from data_prep.schema import (
    EMPTY_CHOICE_TAG,
    AnswerNotInChoicesError,
    DataError,
    DuplicateIdError,
    InvalidFieldError,
    MalformedCSVError,
    MalformedJSONError,
    MissingFieldError,
    MissingThinkingError,
    SourceFileError,
    TooFewChoicesError,
    TooManyChoicesError,
    UnknownSourceError,
)
from data_prep.templates import parse_target

REPO = Path(__file__).resolve().parent.parent


def rows_of(dataset: Path) -> list[dict]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    out = []
    for split in manifest["splits"]:
        out += [json.loads(x) for x in (dataset / f"{split}.jsonl").read_text().splitlines()]
    return out


def mmar_item(i: int, **override) -> dict:
    item = {
        "id": f"vid{i}_00-00-00_00-00-10",
        "audio_path": f"./audio/vid{i}.wav",
        "question": "What is heard?",
        "choices": ["a dog", "a cat", "a bird"],
        "answer": "a cat",
        "modality": "sound",
        "category": "Perception Layer",
        "sub-category": "Content Analysis",
        "thinking": "Meowing is heard.",
        "cue": ["meow"],
    }
    item.update(override)
    return item


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


# ---------------------------------------------------------------- MMAU-style


def write_mmau(path: Path) -> Path:
    items = []
    for i in range(12):
        items.append(
            {
                "id": f"mmau-{i}",
                "audio_id": f"./test-mini-audios/clip{i // 2}.wav",  # two questions per clip
                "question": f"Question {i}?",
                "choices": ["alpha", "beta", "gamma", "delta"],
                "answer": ["alpha", "beta", "gamma", "delta"][i % 4],
                "task": ["sound", "music", "speech"][i % 3],
                "category": ["Sound Counting", "Temporal Reasoning"]
                if i == 5
                else "Event-Based Sound Reasoning",
                "sub-category": "Counting",
                "difficulty": "easy",
                "dataset": "x",
            }
        )
    path.write_text(json.dumps(items, indent=2))
    return path


def mmau_args(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs/data/mmau_cot.yaml"),
        "--source.path", str(src),
        "--out_dir", str(out),
        "--no-audio-check",
        *extra,
    ]  # fmt: skip


def test_mmau_reader_with_direct_fallback(tmp_path):
    src = write_mmau(tmp_path / "mmau.json")
    dataset = run(mmau_args(src, tmp_path / "out"))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 12 and manifest["counts"]["thinking_fallback"] == 12
    assert list(manifest["splits"]) == ["test"]
    assert "direct-answer fallbacks (no thinking): 12" in (dataset / "README.md").read_text()
    rows = {r["id"]: r for r in rows_of(dataset)}
    r5 = rows["mmau-5"]
    assert r5["category"] == "Sound Counting|Temporal Reasoning"
    assert r5["modality"] == "speech" and r5["tags"] == ["dataset:x", "difficulty:easy"]
    assert r5["group"] == rows["mmau-4"]["group"] == "./test-mini-audios/clip2.wav"
    assert all(r["template"] == "direct_v1" and r["thinking"] is None for r in rows.values())
    assert parse_target(r5["target"]) == (None, r5["answer"])
    assert r5["choices"][r5["answer_index"]] == r5["answer"]


def test_mmau_with_cot_and_missing_thinking_fail_or_skip(tmp_path):
    src = write_mmau(tmp_path / "mmau.json")
    with pytest.raises(MissingThinkingError, match="missing_thinking: direct"):
        run(mmau_args(src, tmp_path / "out", "--missing_thinking", "fail"))
    dataset = run(mmau_args(src, tmp_path / "out", "--missing_thinking", "skip", "--split.mode", "ratio"))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 0 and manifest["counts"]["skipped"] == 12
    assert manifest["counts"]["skipped_by_reason"] == {"MissingThinkingError": 12}


# ---------------------------------------------------------------- MuChoMusic


def write_muchomusic(path: Path, n: int = 40) -> Path:
    cols = [
        "question_id", "question", "correct_answer", "distractor_1_answer", "distractor_2_answer",
        "distractor_3_answer", "dataset", "dataset_identifier", "reasoning_dimension",
    ]  # fmt: skip
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i in range(n):
            w.writerow(
                {
                    "question_id": str(i),
                    "question": f"What genre is track {i // 3}?",
                    "correct_answer": "Jazz",
                    "distractor_1_answer": "Rock",
                    "distractor_2_answer": "Pop",
                    "distractor_3_answer": "" if i == 7 else "Metal",
                    "dataset": "sdd" if i % 2 else "musiccaps",
                    "dataset_identifier": f"trk{i // 3}",
                    "reasoning_dimension": "genre" if i % 5 else "",
                }
            )
    return path


def test_muchomusic_reader_shuffles_per_item_and_records_the_order(tmp_path):
    src = write_muchomusic(tmp_path / "mcm.csv")
    args = ["--config", str(REPO / "configs/data/muchomusic_direct.yaml"), "--source.path", str(src)]
    args += ["--out_dir", str(tmp_path / "out"), "--no-audio-check", "--shuffle_options", "false"]
    dataset = run(args)
    rows = {r["id"]: r for r in rows_of(dataset)}
    assert len(rows) == 40
    for r in rows.values():
        source = json.loads(r["source_record"])
        in_csv = [source[c] for c in ("correct_answer", "distractor_1_answer", "distractor_2_answer")]
        in_csv += [source["distractor_3_answer"]] if source["distractor_3_answer"] else []
        assert r["choices"] == [in_csv[j] for j in r["permutation"]]
        assert r["answer"] == "Jazz" == r["choices"][r["answer_index"]]
        assert r["group"] == f"{source['dataset']}:{source['dataset_identifier']}"
        assert r["modality"] == "music" and r["audio_path"].endswith(f"{source['dataset_identifier']}.wav")
    assert len(rows["7"]["choices"]) == 3
    assert rows["1"]["tags"] == ["reasoning_dimension:genre"] and rows["0"]["tags"] == []
    letters = Counter(r["answer_letter"] for r in rows.values())
    assert letters["A"] < 25 and len(letters) >= 3  # shuffled even with shuffle_options false
    assert (dataset / "export" / "test.jsonl").is_file()  # the example config exports too


def test_muchomusic_missing_column_is_a_file_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question_id,question,correct_answer\n1,q,a\n")
    with pytest.raises(MalformedCSVError, match="distractor_1_answer"):
        load_records(SourceConfig(reader="muchomusic", path=str(bad)))


# ---------------------------------------------------------------- canonical


def test_canonical_reader(tmp_path):
    good = {
        "id": "c1",
        "audio_path": "a.wav",
        "question": "q?",
        "choices": ["x", "y"],
        "answer": "y",
        "modality": "sound",
        "category": "Signal Layer",
        "group": "G",
        "tags": ["mine"],
    }
    typo = {**good, "id": "c2", "anser": "y"}
    src = write_jsonl(tmp_path / "c.jsonl", [good, typo])
    records, skips = load_records(SourceConfig(reader="canonical", path=str(src)))
    assert [r.id for r in records] == ["c1"] and records[0].group == "G" and records[0].tags == ["mine"]
    assert records[0].original == good and records[0].source == "canonical"
    assert skips[0].id == "c2" and "anser" in skips[0].reason and skips[0].where.endswith("c.jsonl:2")


def test_canonical_text_only_items_have_no_audio_path_and_default_to_text_modality(tmp_path):
    base = {"question": "2 + 2?", "choices": ["3", "4"], "answer": "4", "category": "Semantic Layer"}
    items = [
        {**base, "id": "t-null", "audio_path": None},
        {**base, "id": "t-absent"},
        {**base, "id": "t-own-modality", "modality": "math"},
        {**base, "id": "t-blank", "audio_path": " "},  # a lost path, not a decision: refused
        {**base, "id": "a-no-modality", "audio_path": "a.wav"},  # audio items still need a modality
    ]
    src = write_jsonl(tmp_path / "c.jsonl", items)
    records, skips = load_records(SourceConfig(reader="canonical", path=str(src)))
    assert [(r.id, r.audio_path, r.modality, r.text_only) for r in records] == [
        ("t-null", None, "text", True),
        ("t-absent", None, "text", True),
        ("t-own-modality", None, "math", True),
    ]
    assert [(s.id, s.reason.split(":")[0]) for s in skips] == [
        ("t-blank", "InvalidFieldError"),
        ("a-no-modality", "MissingFieldError"),
    ]
    assert "field 'audio_path'" in skips[0].reason and "null" in skips[0].reason
    assert "field 'modality'" in skips[1].reason


@pytest.mark.parametrize("reader", ["mmar", "mmau", "muchomusic"])
def test_benchmark_readers_still_require_audio(tmp_path, reader):
    """Only the canonical reader makes text-only items: a benchmark item without its clip is an error
    naming the item and the field."""
    cfg = SourceConfig(reader=reader)
    if reader == "mmar":
        item = {k: v for k, v in mmar_item(0).items() if k != "audio_path"}
        cfg.path, item_id, field = str(write_jsonl(tmp_path / "m.jsonl", [item])), item["id"], "audio_path"
    elif reader == "mmau":
        items = json.loads(write_mmau(tmp_path / "mmau.json").read_text())
        del items[0]["audio_id"]
        (tmp_path / "mmau.json").write_text(json.dumps(items))
        cfg.path, item_id, field = str(tmp_path / "mmau.json"), "mmau-0", "audio_id"
    else:  # no audio_path column and a template the row cannot fill: no clip for the item
        cfg.path, item_id, field = str(write_muchomusic(tmp_path / "mcm.csv")), "0", "audio_template"
        cfg.audio_template = "{no_such_column}.wav"
    with pytest.raises(DataError) as info:
        load_records(cfg, strict=True)
    assert info.value.item_id == item_id and info.value.field == field, str(info.value)
    records, skips = load_records(cfg)
    assert item_id in {s.id for s in skips} and item_id not in {r.id for r in records}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("override", "error", "field"),
    [
        ({"answer": "a horse"}, AnswerNotInChoicesError, "answer"),
        ({"choices": ["a cat"]}, TooFewChoicesError, "choices"),
        ({"choices": ["a cat", "", " "]}, TooFewChoicesError, "choices"),
        ({"question": ""}, MissingFieldError, "question"),
        ({"choices": "a cat, a dog"}, InvalidFieldError, "choices"),
        ({"choices": [*"abcdefghij", "a cat"]}, TooManyChoicesError, "choices"),
        ({"choices": ["a cat", {"text": "a dog"}]}, InvalidFieldError, "choices"),
        ({"thinking": ["Meowing", "is heard"]}, InvalidFieldError, "thinking"),  # cot renders it
    ],
)
def test_bad_items_are_skipped_with_reason_or_raise_when_strict(tmp_path, override, error, field):
    src = write_jsonl(tmp_path / "m.jsonl", [mmar_item(0), mmar_item(1, **override), mmar_item(2)])
    cfg = SourceConfig(reader="mmar", path=str(src))
    records, skips = load_records(cfg)
    assert [r.id for r in records] == ["vid0_00-00-00_00-00-10", "vid2_00-00-00_00-00-10"]
    assert len(skips) == 1 and skips[0].id == "vid1_00-00-00_00-00-10"
    assert skips[0].reason.startswith(error.__name__) and f"field {field!r}" in skips[0].reason
    with pytest.raises(error) as info:
        load_records(cfg, strict=True)
    message = str(info.value)
    assert f"{src}:2" in message and "vid1_00-00-00_00-00-10" in message and field in message


def test_missing_field_names_file_line_item_and_field(tmp_path):
    item = mmar_item(0)
    del item["answer"]
    src = write_jsonl(tmp_path / "m.jsonl", [mmar_item(1), item])
    with pytest.raises(MissingFieldError, match=r"m\.jsonl:2: item 'vid0_00-00-00_00-00-10': field 'answer'"):
        load_records(SourceConfig(path=str(src)), strict=True)


def test_blank_trailing_choice_is_dropped_and_tagged(tmp_path):
    item = mmar_item(0, choices=["a dog", "a cat ", ""], answer="a cat ")
    src = write_jsonl(tmp_path / "m.jsonl", [item])
    (rec,), skips = load_records(SourceConfig(path=str(src)))
    assert rec.choices == ["a dog", "a cat"] and rec.answer == "a cat" and rec.tags == [EMPTY_CHOICE_TAG]
    assert rec.original["choices"] == ["a dog", "a cat ", ""] and not skips


def test_malformed_json_names_the_line(tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text(json.dumps(mmar_item(0)) + "\n\n" + '{"id": "x", "question": \n')
    with pytest.raises(MalformedJSONError, match=r"m\.jsonl:3: malformed JSON"):
        load_records(SourceConfig(path=str(src)))
    listed = tmp_path / "m.json"
    listed.write_text('[\n  {"id": "a"},\n  {"id": "b",}\n]')
    with pytest.raises(MalformedJSONError, match=r"m\.json:3"):
        load_records(SourceConfig(path=str(listed)))


def test_json_list_items_are_located_by_index(tmp_path):
    src = tmp_path / "m.json"
    src.write_text(json.dumps([mmar_item(0), mmar_item(1, answer="nope"), "not an object"]))
    records, skips = load_records(SourceConfig(path=str(src)))
    assert len(records) == 1
    assert [s.where for s in skips] == [f"{src}[1]", f"{src}[2]"]
    assert skips[1].reason.startswith("InvalidFieldError") and "expected an object" in skips[1].reason


def test_duplicate_ids_are_an_error_naming_both_lines(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [mmar_item(0), mmar_item(1), mmar_item(0, answer="a dog")])
    with pytest.raises(
        DuplicateIdError, match=r"m\.jsonl:3: item 'vid0_00-00-00_00-00-10'.*first seen at .*m\.jsonl:1"
    ):
        load_records(SourceConfig(path=str(src)))


def test_unknown_source_and_missing_file(tmp_path):
    with pytest.raises(UnknownSourceError, match="'audioset'.*mmar"):
        get_reader("audioset")
    src = write_jsonl(tmp_path / "m.jsonl", [mmar_item(0)])
    base = [
        "--config",
        str(REPO / "configs/data/mmar_cot.yaml"),
        "--out_dir",
        str(tmp_path / "o"),
        "--no-audio-check",
    ]
    with pytest.raises(UnknownSourceError):
        run([*base, "--source.path", str(src), "--source.reader", "audioset"])
    with pytest.raises(SourceFileError, match="nope.jsonl.*source file not found"):
        run([*base, "--source.path", str(tmp_path / "nope.jsonl")])


def test_unknown_config_key_fails(tmp_path):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="shuffle_option"):
        run(["--config", str(REPO / "configs/data/mmar_cot.yaml"), "--shuffle_option", "true"])


# ---------------------------------------------------------------- every item of a benchmark file


def _mmau_published(i: int, **override) -> dict:
    """One item in the layout of MMAU's published mmau-test-mini.json."""
    item = {
        "id": f"0a1b2c3d-{i:04d}-4bc8-a753-68f8f6c35652",
        "audio_id": f"./test-mini-audios/0a1b2c3d-{i:04d}.wav",
        "question": "Based on the given audio, identify the source of the speaking voice.",
        "choices": ["Man", "Woman", "Child", "Robot"],
        "answer": "Man",
        "dataset": "AudioSet",
        "task": ["sound", "music", "speech"][i % 3],
        "split": "test-mini",
        "category": "Reasoning",
        "sub-category": "Acoustic Source Inference",
        "difficulty": ["easy", "medium", "hard"][i % 3],
    }
    item.update(override)
    return item


MMAU_ODD = {
    # the answer text appears twice: either letter is correct
    "dup": {"question": "How many beats are in the bar?", "choices": ["four", "nine", "fourteen", "fourteen"],
            "answer": "nine"},
    "dup_answer": {"choices": ["fourteen", "nine", "fourteen", "four"], "answer": "fourteen"},
    "eight": {"choices": ["C", "D", "E", "F", "G", "A", "B", "C#"], "answer": "G"},  # letters A..H
    "list_subcat": {"sub-category": ["Counting", "Temporal Reasoning"]},
    "dict_difficulty": {"difficulty": {"level": "hard"}},  # unused by rendering and scoring
    "number_dataset": {"dataset": 7},
}  # fmt: skip


def write_mmau_published(path: Path) -> tuple[Path, dict[str, dict]]:
    items = [_mmau_published(i) for i in range(6)]
    odd = {name: _mmau_published(10 + k, **over) for k, (name, over) in enumerate(MMAU_ODD.items())}
    path.write_text(json.dumps(items + list(odd.values()), indent=2), encoding="utf-8")
    return path, odd


def test_mmau_published_layout_keeps_every_item(tmp_path):
    src, odd = write_mmau_published(tmp_path / "mmau-test-mini.json")
    dataset = run(mmau_args(src, tmp_path / "out"))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["counts"]["read"] == manifest["counts"]["samples"] == 12 and manifest["skipped"] == []
    assert manifest["counts"]["warnings_by_kind"] == {
        "duplicate_choice_text": 2,
        "metadata_unexpected_type:difficulty": 1,
    }
    assert {w["id"] for w in manifest["warnings"]} == {odd["dup"]["id"], odd["dup_answer"]["id"],
                                                       odd["dict_difficulty"]["id"]}  # fmt: skip
    assert "duplicate_choice_text" in (dataset / "README.md").read_text()
    rows = {r["id"]: r for r in rows_of(dataset)}
    dup = rows[odd["dup"]["id"]]
    assert sorted(dup["choices"]) == ["four", "fourteen", "fourteen", "nine"]  # both copies shown
    assert dup["choices"][dup["answer_index"]] == "nine"
    eight = rows[odd["eight"]["id"]]
    assert len(eight["choices"]) == 8 and "(H) " in eight["messages"][1]["content"][1]["text"]
    assert eight["answer_letter"] == "ABCDEFGH"[eight["choices"].index("G")]
    assert rows[odd["list_subcat"]["id"]]["sub_category"] == "Counting|Temporal Reasoning"
    assert "dataset:7" in rows[odd["number_dataset"]["id"]]["tags"]
    # The odd value is carried untouched in the source record (for the submission export).
    assert json.loads(rows[odd["dict_difficulty"]["id"]]["source_record"])["difficulty"] == {"level": "hard"}


def test_metadata_of_an_unexpected_type_never_drops_an_item(tmp_path):
    odd = mmar_item(1, language=["English", "Mandarin"], cue=3, **{"sub-category": {"x": 1}})
    src = write_jsonl(tmp_path / "m.jsonl", [mmar_item(0), odd])
    records, skips = load_records(SourceConfig(reader="mmar", path=str(src)), strict=True)
    assert not skips and len(records) == 2
    rec = records[1]
    assert rec.language == "English|Mandarin" and rec.cue == [] and rec.sub_category == ""
    assert rec.warnings == ["metadata_unexpected_type:cue", "metadata_unexpected_type:sub-category"]
    assert rec.original["cue"] == 3
