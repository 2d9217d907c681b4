"""data_prep end to end: real MMAR metadata, templates decoded back, splits, determinism, export."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.config import config_from_dict, load_yaml
from data_prep.config import DataConfig
from data_prep.prepare import resolve_system_prompt, run
from data_prep.readers.mmar import group_of
from data_prep.splits import assign_splits, check_disjoint
from data_prep.templates import LETTERS, TEMPLATES, parse_target
from models import get_family

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "test")


def split_rows(dataset: Path, split: str) -> list[dict]:
    return [
        json.loads(line) for line in (dataset / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def all_rows(dataset: Path) -> dict[str, list[dict]]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return {split: split_rows(dataset, split) for split in manifest["splits"]}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mmar_args(meta: Path, out: Path, template: str = "cot_v1", *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs/data/mmar_cot.yaml"),
        "--source.path", str(meta),
        "--out_dir", str(out),
        "--template", template,
        "--no-audio-check",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def mmar_prepared(mmar_meta, tmp_path_factory) -> dict[str, Path]:
    """The real 1,000 MMAR items prepared with both templates (metadata only: no audio here)."""
    out = tmp_path_factory.mktemp("mmar")
    return {t: run(mmar_args(mmar_meta, out, t)) for t in ("cot_v1", "direct_v1")}


def test_all_real_mmar_items_convert_with_both_templates(mmar_prepared):
    for template, dataset in mmar_prepared.items():
        manifest = json.loads((dataset / "manifest.json").read_text())
        assert manifest["counts"]["read"] == 1000
        assert manifest["counts"]["samples"] == 1000, manifest["skipped"]
        assert manifest["skipped"] == []
        assert manifest["template"] == template
        assert manifest["audio"]["checked"] is False
        rows = [r for rows in all_rows(dataset).values() for r in rows]
        assert len({r["id"] for r in rows}) == 1000
        assert all(r["template"] == template for r in rows)
        assert all(r["group"] == group_of(r["id"]) for r in rows)
        assert (dataset / "hf" / "train" / "dataset_info.json").is_file()
        assert "Samples per split x modality x layer" in (dataset / "README.md").read_text()


def test_real_mmar_splits_share_no_group_and_keep_the_mix(mmar_prepared):
    splits = all_rows(mmar_prepared["cot_v1"])
    assert set(splits) == set(SPLITS)
    groups = {s: {r["group"] for r in rows} for s, rows in splits.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not groups[a] & groups[b], (a, b)
    everything = [r for rows in splits.values() for r in rows]
    for key in ("modality", "category"):
        whole = Counter(r[key] for r in everything)
        for split, rows in splits.items():
            part = Counter(r[key] for r in rows)
            for value, n in whole.items():
                gap = abs(part[value] / len(rows) - n / len(everything))
                assert gap < 0.05, (split, key, value, gap)
    counts = {s: len(r) for s, r in splits.items()}
    assert abs(counts["test"] - 150) <= 10 and abs(counts["val"] - 50) <= 10


def test_real_mmar_output_is_byte_identical_across_runs(mmar_meta, mmar_prepared, tmp_path):
    again = run(mmar_args(mmar_meta, tmp_path, "cot_v1"))
    first = mmar_prepared["cot_v1"]
    assert again.name == first.name
    assert tree_bytes(again) == tree_bytes(first)
    other_seed = run(mmar_args(mmar_meta, tmp_path, "cot_v1", "--seed", "1"))
    assert other_seed != again
    assert all_rows(other_seed)["test"] != all_rows(again)["test"]


def _original_choices(row: dict) -> list[str]:
    return [c.strip() for c in json.loads(row["source_record"])["choices"] if c.strip()]


def test_rendered_samples_decode_back_exactly(mmar_prepared):
    for template, dataset in mmar_prepared.items():
        for row in [r for rows in all_rows(dataset).values() for r in rows]:
            original = json.loads(row["source_record"])
            thinking, answer = parse_target(row["target"])
            assert answer == original["answer"].strip() == row["answer"]
            if template == "cot_v1":
                assert thinking == original["thinking"].strip() == row["thinking"]
                assert row["target"] == f"<think>{thinking}</think>\n<answer>{answer}</answer>"
            else:
                assert thinking is None and row["target"] == f"<answer>{answer}</answer>"
            assert row["choices"] == [_original_choices(row)[j] for j in row["permutation"]]
            assert row["choices"][row["answer_index"]] == row["answer"]
            assert LETTERS[row["answer_index"]] == row["answer_letter"]
            system, user, assistant = row["messages"]
            assert assistant["content"] == [{"type": "text", "text": row["target"]}]
            assert user["content"][0] == {"type": "audio", "path": row["audio_path"]}
            text = user["content"][1]["text"]
            assert f"({row['answer_letter']}) {row['answer']}\n" in text
            assert TEMPLATES[template].instruction in text
            assert system["content"][0]["text"] == get_family("qwen2_audio").SYSTEM_PROMPT


def test_shuffle_moves_answers_off_their_source_position(mmar_prepared):
    rows = [r for rows in all_rows(mmar_prepared["cot_v1"]).values() for r in rows]
    moved = sum(r["permutation"] != sorted(r["permutation"]) for r in rows)
    assert moved > 600
    four = [r["answer_letter"] for r in rows if len(r["choices"]) == 4]
    assert max(Counter(four).values()) / len(four) < 0.32


def test_hf_copy_round_trips(mmar_prepared):
    from datasets import load_from_disk

    dataset = mmar_prepared["direct_v1"]
    hf = load_from_disk(str(dataset / "hf" / "test"))
    rows = split_rows(dataset, "test")
    assert len(hf) == len(rows)
    first = hf[0]
    assert first["id"] == rows[0]["id"] and first["target"] == rows[0]["target"]
    blocks = first["messages"][1]["content"]
    assert [b["type"] for b in blocks] == ["audio", "text"] and blocks[1]["path"] is None
    assert first["thinking"] is None and first["audio_duration"] is None


# ---------------------------------------------------------------- local MMAR-schema fixture with audio


def write_tiny_mmar(folder: Path, n_groups: int = 8, per_group: int = 3) -> Path:
    """A tiny MMAR-schema source with real 16 kHz WAVs and a `group` field (like synth writes)."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    t = np.arange(8000) / 16000
    for g in range(n_groups):
        for k in range(per_group):
            item_id = f"clip{g}x{k}_00-00-00_00-00-01"  # MMAR-style id; its video part differs from `group`
            sf.write(folder / "audio" / f"{item_id}.wav", 0.3 * np.sin(2 * np.pi * (300 + 50 * g) * t), 16000)
            item = {
                "id": item_id,
                "audio_path": f"audio/{item_id}.wav",
                "question": "Which tone is higher?",
                "choices": ["the first", "the second", "they are equal"],
                "answer": "the second",
                "modality": ["sound", "music"][g % 2],
                "category": ["Signal Layer", "Perception Layer"][(g // 2) % 2],
                "sub-category": "Pitch",
                "thinking": f"The second tone is at {400 + g} Hz.",
                "cue": ["pitch"],
                "group": f"scene{g}",
            }
            lines.append(json.dumps(item))
    meta = folder / "meta.jsonl"
    meta.write_text("\n".join(lines) + "\n")
    return meta


def synth_args(meta: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs/data/synth_cot.yaml"),
        "--source.path", str(meta),
        "--audio_root", str(meta.parent),
        "--out_dir", str(out),
        *extra,
    ]  # fmt: skip


def test_synth_config_prepares_a_local_source_with_audio(tmp_path, caplog):
    meta = write_tiny_mmar(tmp_path / "src")
    out = tmp_path / "prepared"
    dataset = run(synth_args(meta, out, "--fold_cue", "--export", "llamafactory"))
    assert dataset.name.startswith("synth_cot-") and len(dataset.name) == len("synth_cot-") + 12
    assert (out / "latest").resolve() == dataset.resolve()
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["audio"]["checked"] is True and manifest["counts"]["samples"] == 24
    rows = [r for rows in all_rows(dataset).values() for r in rows]
    assert all(r["audio_duration"] == pytest.approx(0.5) for r in rows)
    assert all(Path(r["audio_path"]).is_absolute() and Path(r["audio_path"]).is_file() for r in rows)
    # The `group` field wins over the id-derived video group.
    assert all(r["group"] == f"scene{r['id'][4]}" != group_of(r["id"]) for r in rows)
    assert all(r["target"].startswith("<think>Key cues: pitch.\nThe second tone") for r in rows)
    for split, summary in manifest["splits"].items():
        assert summary["count"] == len(split_rows(dataset, split))
        assert sorted(summary["groups"]) == sorted({r["group"] for r in split_rows(dataset, split)})
    exported = [json.loads(x) for x in (dataset / "export" / "train.jsonl").read_text().splitlines()]
    assert exported[0]["messages"][1]["content"].startswith("<audio>")
    assert exported[0]["audios"] and Path(exported[0]["audios"][0]).is_file()
    assert exported[0]["messages"][2]["content"] == split_rows(dataset, "train")[0]["target"]
    info = json.loads((dataset / "export" / "dataset_info.json").read_text())
    assert info["synth_cot_train"]["formatting"] == "sharegpt"
    with caplog.at_level(logging.INFO, logger="data_prep.prepare"):
        again = run(synth_args(meta, out, "--fold_cue", "--export", "llamafactory"))
    assert again == dataset and "no-op" in caplog.text
    changed = run(synth_args(meta, out, "--template", "direct_v1"))
    assert changed != dataset and (out / "latest").resolve() == changed.resolve()


def write_canonical_with_text_only(folder: Path, n_text: int = 12) -> Path:
    """The tiny MMAR source's 24 audio items as canonical records, plus `n_text` text-only ones
    (`audio_path` null or left out, no modality: they get "text")."""
    meta = write_tiny_mmar(folder)
    items = []
    for line in meta.read_text().splitlines():
        mmar = json.loads(line)
        items.append({k: mmar[k] for k in ("id", "audio_path", "question", "choices", "answer", "modality",
                                            "category", "thinking", "group")})  # fmt: skip
    for i in range(n_text):
        item = {"id": f"text{i}", "question": f"What is {i} + 1?", "choices": [str(i), str(i + 1)],
                "answer": str(i + 1), "category": "Semantic Layer", "thinking": f"{i} + 1 = {i + 1}."}  # fmt: skip
        items.append({**item, "audio_path": None} if i % 2 else item)
    source = folder / "canonical.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in items))
    return source


@pytest.mark.parametrize("template", ["cot_v1", "direct_v1"])
def test_canonical_text_only_items_through_prepare(tmp_path, template):
    from data_prep.export import to_llamafactory

    source = write_canonical_with_text_only(tmp_path / "src")
    args = synth_args(source, tmp_path / "out", "--source.reader", "canonical", "--template", template)
    dataset = run(args)
    manifest = json.loads((dataset / "manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["audio"]["checked"] is True and manifest["skipped"] == []
    assert counts["samples"] == 36 and counts["text_only"] == 12
    assert sum(counts["per_split_text_only"].values()) == 12 and counts["per_split_text_only"]["train"] > 0
    splits = all_rows(dataset)
    for split, rows in splits.items():
        assert sum(r["audio_path"] is None for r in rows) == counts["per_split_text_only"][split]
    rows = [r for rows in splits.values() for r in rows]
    text = [r for r in rows if r["id"].startswith("text")]
    audio = [r for r in rows if not r["id"].startswith("text")]
    instruction = TEMPLATES[template]
    for r in text:
        assert r["audio_path"] is None and r["audio_duration"] is None and r["modality"] == "text"
        user = r["messages"][1]["content"]
        assert [b["type"] for b in user] == ["text"], user  # no audio block
        assert user[0]["text"].endswith("\n" + instruction.text_only_instruction)
        assert "audio" not in user[0]["text"].lower()
        assert parse_target(r["target"])[1] == r["answer"] == r["choices"][r["answer_index"]]
        exported = to_llamafactory(r)
        assert exported["audios"] == [] and "<audio>" not in exported["messages"][1]["content"]
    for r in audio:
        assert Path(r["audio_path"]).is_file() and r["audio_duration"] == pytest.approx(0.5)
        user = r["messages"][1]["content"]
        assert [b["type"] for b in user] == ["audio", "text"]
        assert user[1]["text"].endswith(instruction.instruction)
    # Text-only items form their own stratum (modality "text") and keep to their groups.
    check_disjoint(splits)
    modalities = {key.split(" | ")[0] for mix in counts["per_split_mix"].values() for key in mix}
    assert modalities == {"sound", "music", "text"}
    card = (dataset / "README.md").read_text()
    line = next(
        x for x in card.splitlines() if x.startswith("- text-only items (no audio, so no audio check)")
    )
    assert line.startswith("- text-only items (no audio, so no audio check): 12 ("), line
    assert all(f"{k} {n}" in line for k, n in counts["per_split_text_only"].items() if n), line
    # The HF copy keeps them text-only after the datasets round trip (blocks gain every key).
    from datasets import load_from_disk

    hf = load_from_disk(str(dataset / "hf" / "train"))
    hf_text = [r for r in hf if r["id"].startswith("text")]
    assert hf_text and all(r["audio_path"] is None for r in hf_text)
    assert all(b["type"] == "text" for r in hf_text for b in r["messages"][1]["content"])


def test_export_cli_on_an_existing_dataset(tmp_path):
    from data_prep.export import main as export_main

    meta = write_tiny_mmar(tmp_path / "src")
    dataset = run(synth_args(meta, tmp_path / "prepared", "--no-audio-check"))
    target = export_main(["--dataset", str(dataset), "--out", str(tmp_path / "lf")])
    rows = [json.loads(x) for x in (target / "test.jsonl").read_text().splitlines()]
    assert rows and all(r["messages"][1]["content"].count("<audio>") == len(r["audios"]) == 1 for r in rows)


def test_holdout_mode_puts_everything_in_one_split(tmp_path):
    meta = write_tiny_mmar(tmp_path / "src")
    dataset = run(synth_args(meta, tmp_path / "out", "--split.mode", "holdout", "--no-audio-check"))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["test"] and manifest["splits"]["test"]["count"] == 24


# ---------------------------------------------------------------- splits and configs


def test_assign_splits_is_grouped_seeded_and_proportional():
    items = [
        {"id": f"i{i}", "group": f"g{i // 4}", "modality": ["sound", "music"][i % 2], "category": "Signal"}
        for i in range(400)
    ]
    ratios = {"train": 0.8, "val": 0.05, "test": 0.15}
    splits = assign_splits(items, ratios, seed=3)
    check_disjoint(splits)
    assert {k: len(v) for k, v in splits.items()} == {"train": 320, "val": 20, "test": 60}
    assert assign_splits(items, ratios, seed=3) == splits
    assert assign_splits(items, ratios, seed=4) != splits


def test_assign_splits_stratified_by_answer_balances_every_question():
    """With `stratify_by` + (question, answer), each split holds each question's answers in the
    split's share, up to one group per stratum: a guesser that always picks one option is at chance."""
    import random

    rng = random.Random(0)
    items = []
    for q in range(7):
        answers = [f"a{q}-{k}" for k in range(2 + q % 4)] * 60
        rng.shuffle(answers)
        items += [
            {"id": f"q{q}-{i}", "group": f"q{q}-{i}", "modality": "sound", "category": "Signal",
             "question": f"question {q}", "answer": a}
            for i, a in enumerate(answers)
        ]  # fmt: skip
    ratios = {"train": 0.8, "val": 0.05, "test": 0.15}
    fields = ["modality", "category", "question", "answer"]
    splits = assign_splits(items, ratios, seed=1, stratify_by=fields)
    check_disjoint(splits)
    totals = Counter((it["question"], it["answer"]) for it in items)
    for name, share in ratios.items():
        got = Counter((it["question"], it["answer"]) for it in splits[name])
        assert all(abs(got[key] - share * n) <= 1 for key, n in totals.items()), (name, got)
    with pytest.raises(ValueError, match="item 'q0-0': no field 'answer_text'"):
        assign_splits(items, ratios, seed=1, stratify_by=["answer_text"])


def test_every_data_config_parses():
    paths = sorted((REPO / "configs" / "data").glob("*.yaml"))
    names = {p.stem for p in paths}
    assert {"mmar_cot", "mmar_direct", "synth_cot", "mmau_cot", "muchomusic_direct"} <= names
    for path in paths:
        assert path.read_text().startswith("#"), path
        cfg = config_from_dict(DataConfig, load_yaml(path))
        assert cfg.name == path.stem
        assert cfg.template in TEMPLATES
    synth = config_from_dict(DataConfig, load_yaml(REPO / "configs/data/synth_cot.yaml"))
    assert (synth.source.path, synth.audio_root, synth.out_dir) == (
        "data/synth/meta.jsonl",
        "data/synth",
        "data/prepared",
    )
    assert (synth.split.train, synth.split.val, synth.split.test) == (0.8, 0.05, 0.15)


def test_system_prompt_comes_from_family_unless_overridden():
    assert resolve_system_prompt(DataConfig(system_prompt="Be terse.")) == "Be terse."
    omni = resolve_system_prompt(DataConfig(family="qwen2_5_omni"))
    assert omni.startswith("You are Qwen, a virtual human")
    assert resolve_system_prompt(DataConfig(family="qwen2_audio")) == "You are a helpful assistant."
