"""Our numbers equal the official scorers' on our export: MMAR (per modality, category,
sub-category) and MMAU (per task, difficulty, sub-category), re-implemented here from the facts of
MMAR's `code/evaluation.py` and MMAU's `evaluation.py`, independently of eval/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common.io import atomic_write_jsonl
from data_prep.config import SourceConfig
from data_prep.readers import load_records
from data_prep.templates import LETTERS, get_template, render_sample
from eval import export, score
from eval.run import metrics_from_predictions, prediction_row

# ---------------------------------------------------------------- the official rule, independently


def _words(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", str(text).lower()))


def _official_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """Every answer word present; no word that only a distractor has (a distractor with the
    answer's exact word set adds none); an empty prediction is wrong."""
    said, truth = _words(prediction), _words(answer)
    if not said:
        return False
    others: set[str] = set()
    for choice in choices:
        words = _words(choice)
        if words != truth:
            others |= words - truth
    return truth <= said and not (said & others)


def _official_breakdown(rows: list[dict], key: str, groups: tuple[str, ...]) -> dict:
    """{group: {value: [correct, total]}} plus "total"; rows without `key` are skipped, as the
    official scripts do (an empty string is scored, and wrong)."""
    out: dict = {g: {} for g in groups}
    out["total"] = [0, 0]
    for row in rows:
        if key not in row:
            continue
        ok = _official_match(row["answer"], row[key], row["choices"])
        for g in groups:
            cell = out[g].setdefault(row[g], [0, 0])
            cell[0] += ok
            cell[1] += 1
        out["total"][0] += ok
        out["total"][1] += 1
    return out


def _ours(table: dict, group: str) -> dict:
    return {v: [c["correct"], c["total"]] for v, c in table[group].items()}


# ---------------------------------------------------------------- outputs written the way models write


def _outputs(sample: dict, k: int) -> str:
    letter, answer = sample["answer_letter"], sample["answer"]
    distractor = next((c for c in sample["choices"] if c != answer), answer)
    styles = [
        f"<think>Listening closely.</think>\n<answer>{answer}</answer>",  # right both ways
        f"<think>Hmm.</think>\n<answer>{letter}</answer>",  # letter only: choice right, mmar 0
        f"It is not {distractor}. The answer is {answer}.",  # CoT naming a distractor, no tags
        f"<answer>{distractor}</answer>",  # wrong
        "",  # no output at all
        f"Final Answer: \\boxed{{{letter}}}",  # R1 style
        f"The answer is {answer}.",
    ]
    return styles[k % len(styles)]


def _gen(output: str) -> dict:
    return {"output": output, "n_prompt_tokens": 0, "n_new_tokens": 0, "truncated": False}


def _samples(path: Path, reader: str) -> list[dict]:
    records, skips = load_records(SourceConfig(reader=reader, path=str(path)), strict=True)
    assert not skips
    template = get_template("direct_v1")
    return [
        render_sample(
            r,
            template=template,
            system_prompt="s",
            audio_path=f"/a/{r.id}.wav",
            audio_duration=None,
            seed=0,
            shuffle=True,
        )  # fmt: skip
        for r in records
    ]


def _run(tmp: Path, samples: list[dict]) -> tuple[Path, dict, list[dict]]:
    preds = [prediction_row(s, _gen(_outputs(s, k)), "real") for k, s in enumerate(samples)]
    run_dir = tmp / "run"
    atomic_write_jsonl(run_dir / "predictions.jsonl", preds)
    return run_dir, metrics_from_predictions(preds), preds


def test_mmar_acc_equals_the_official_rule_on_our_export(mmar_meta, tmp_path):
    samples = _samples(mmar_meta, "mmar")
    assert len(samples) == 1000
    run_dir, metrics, preds = _run(tmp_path, samples)
    out = tmp_path / "submission.jsonl"
    assert export.export_run(run_dir, out) == 1000
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    official = _official_breakdown(rows, "answer_prediction", ("modality", "category", "sub-category"))
    mmar = metrics["mmar_acc"]
    assert (
        official["total"] == [mmar["overall"]["correct"], mmar["overall"]["total"]]
        and official["total"][1] == 1000
    )
    for group in ("modality", "category", "sub-category"):
        assert official[group] == _ours(mmar, group), group
    # What each score says about the crafted outputs.
    by_style = {k: [p for i, p in enumerate(preds) if i % 7 == k] for k in range(7)}
    assert all(p["mmar_correct"] and p["choice_correct"] for p in by_style[0])
    assert all(p["choice_correct"] and not p["mmar_correct"] for p in by_style[1])  # letter only
    # A CoT naming a distractor scores 0, unless that distractor has no word of its own (the quirk).
    named = [(p, next(c for c in p["choices"] if c != p["answer"])) for p in by_style[2]]
    assert not any(p["mmar_correct"] for p, d in named if _words(d) - _words(p["answer"]))
    assert all(p["choice_correct"] for p in by_style[5]) and not any(p["mmar_correct"] for p in by_style[5])
    assert metrics["no_prediction"] == len(by_style[4]) and metrics["extraction_methods"]["boxed"] == len(
        by_style[5]
    )
    # Items without a prediction: "" in our export is scored and wrong by the official script too;
    # a row without the key is skipped there (smaller denominator), while eval.score --reference
    # keeps it in the denominator as wrong.
    assert all(r["answer_prediction"] == "" for r in rows if r["id"] in metrics["no_prediction_ids"])
    dropped = [r for r in rows if r["id"] not in metrics["no_prediction_ids"]]
    assert (
        _official_breakdown(dropped, "answer_prediction", ())["total"][1] == 1000 - metrics["no_prediction"]
    )
    partial = tmp_path / "partial.jsonl"
    atomic_write_jsonl(partial, dropped)
    again = score.score_file(partial, reference=mmar_meta)
    assert (
        again["mmar_acc"]["overall"]["total"] == 1000 and again["no_prediction"] == metrics["no_prediction"]
    )
    assert again["mmar_acc"]["overall"]["correct"] == mmar["overall"]["correct"]


MMAU_ITEMS = [
    ("dup", ["four", "nine", "fourteen", "fourteen"], "nine"),
    ("dup_answer", ["fourteen", "nine", "fourteen", "four"], "fourteen"),
    ("eight", ["C", "D", "E", "F", "G", "A", "B", "C sharp"], "G"),
] + [
    (f"plain{i}", ["Man", "Woman", "Child", "Robot"], ["Man", "Woman", "Child", "Robot"][i % 4])
    for i in range(25)
]


def _mmau_file(path: Path) -> Path:
    items = []
    for i, (name, choices, answer) in enumerate(MMAU_ITEMS):
        items.append({
            "id": f"{name}-3fe64f3d", "audio_id": f"./test-mini-audios/{name}.wav",
            "question": f"Question about {name}?", "choices": choices, "answer": answer, "dataset": "AudioSet",
            "task": ["sound", "music", "speech"][i % 3], "split": "test-mini",
            "category": ["Reasoning", "Information Extraction"][i % 2],
            "sub-category": ["Acoustic Source Inference", "Counting", "Temporal Reasoning"][i % 3],
            "difficulty": ["easy", "medium", "hard"][(i // 3) % 3],
        })  # fmt: skip
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    return path


def test_mmau_export_scored_by_mmau_rule_and_read_back(tmp_path, mmar_meta):
    samples = _samples(_mmau_file(tmp_path / "mmau-test-mini.json"), "mmau")
    run_dir, metrics, preds = _run(tmp_path, samples)
    out = tmp_path / "mmau_submission.json"
    assert export.main(["--run", str(run_dir), "--out", str(out), "--format", "mmau"]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and len(rows) == len(MMAU_ITEMS) and "model_output" in rows[0]
    official = _official_breakdown(rows, "model_output", ("task", "difficulty", "sub-category"))
    back = score.score_file(out)  # what eval.score reports for the file
    for ours in (back["mmar_acc"], metrics["mmar_acc"]):  # ... and what the run itself reported
        assert official["total"] == [ours["overall"]["correct"], ours["overall"]["total"]]
        assert official["task"] == _ours(ours, "modality")
        assert official["difficulty"] == _ours(ours, "difficulty")
        assert official["sub-category"] == _ours(ours, "sub-category")
    lines = score.mmau_lines(back)
    assert "task-wise accuracy:" in lines and any(line.startswith("  hard: ") for line in lines)
    # The duplicate option: either letter of the repeated answer text is choice-correct.
    dup = next(s for s in samples if s["id"].startswith("dup_answer"))
    other = next(i for i, c in enumerate(dup["choices"]) if c == "fourteen" and i != dup["answer_index"])
    row = prediction_row(dup, _gen(f"<answer>{LETTERS[other]}</answer>"), "real")
    assert row["choice_correct"] and not row["mmar_correct"]  # a letter is never MMAR-correct
    row = prediction_row(dup, _gen("<answer>fourteen</answer>"), "real")
    assert row["mmar_correct"] and row["choice_correct"]
    # A prediction file from another benchmark than the run's: an error naming the missing ids.
    with pytest.raises(
        score.PredictionsError, match=r"28 of the reference's 28 id\(s\) are missing.*dup-3fe64f3d"
    ):
        score.score_file(_mmar_submission(tmp_path, mmar_meta), reference=run_dir)
    assert (
        score.main(["--input", str(out), "--output", str(tmp_path / "m.json"), "--reference", str(run_dir)])
        == 0
    )


def _mmar_submission(tmp_path: Path, mmar_meta: Path) -> Path:
    rows = [json.loads(x) for x in mmar_meta.read_text(encoding="utf-8").splitlines()[:5]]
    path = tmp_path / "mmar_sub.jsonl"
    atomic_write_jsonl(path, [{**r, "answer_prediction": r["answer"]} for r in rows])
    return path


def test_the_readme_examples():
    """The evaluation section's examples, one per score, as the code scores them."""
    env = ["Mountain Canyon", "Dense Forest", "Open Grassland", "City Streets"]
    dup = ["four", "nine", "fourteen", "fourteen"]

    def scores(choices: list[str], answer: str, output: str) -> tuple[bool, bool]:
        sample = {"id": "x", "question": "q", "choices": choices, "answer": answer,
                  "answer_index": choices.index(answer)}  # fmt: skip
        row = prediction_row(sample, _gen(output), "real")
        return row["choice_correct"], row["mmar_correct"]

    assert scores(env, "Open Grassland", "<answer>C</answer>") == (True, False)
    assert scores(env, "Open Grassland", "It is not a dense forest, so open grassland.") == (False, False)
    assert scores(env, "Open Grassland", "<answer>Open Grassland</answer>") == (True, True)
    assert scores(dup, "fourteen", "<answer>D</answer>") == (True, False)
    assert scores(dup, "fourteen", "<answer>C</answer>") == (True, False)
    assert scores(dup, "fourteen", "<answer>fourteen</answer>") == (True, True)
