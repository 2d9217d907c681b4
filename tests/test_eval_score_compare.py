"""eval.score on crafted MMAR-style files, bad inputs, eval.compare outputs, eval.export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binomtest

from eval import compare, export, score

REPO = Path(__file__).resolve().parent.parent
ENV = ["Mountain Canyon", "Dense Forest", "Open Grassland", "City Streets"]


def _item(i: int, pred: str | None, **kw) -> dict:
    row = {
        "id": f"vid{i}_00-00-00_00-00-10",
        "audio_path": f"./audio/vid{i}.wav",
        "question": "Where was this recorded?",
        "choices": ENV,
        "answer": "Open Grassland",
        "modality": "sound" if i % 2 else "music",
        "category": "Perception Layer" if i < 4 else "Cultural Layer",
        "sub-category": "Environmental Perception and Reasoning",
        "language": None,
        "source": "youtube",
        "url": "https://example.org",
        "timestamp": "00:00:00,00:00:10",
        "thinking": "Wind and birds.",
        "cue": ["wind"],
        "rubric": [],
    }
    if pred is not None:
        row["answer_prediction"] = pred
    row.update(kw)
    return row


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


CRAFTED = [
    "Open Grassland",  # correct for both metrics
    "C",  # letter only: choice_acc right, mmar 0
    "It is not a dense forest, it is open grassland",  # CoT naming a distractor: mmar 0, choice none
    "Dense Forest",  # wrong
    None,  # no prediction: counted, wrong
    "open grassland.",  # correct
]


def test_score_cli_on_crafted_file(tmp_path):
    inp = _write_jsonl(tmp_path / "preds.jsonl", [_item(i, p) for i, p in enumerate(CRAFTED)])
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.score", "--input", str(inp), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads(out.read_text())
    assert m["mmar_acc"]["overall"] == {**m["mmar_acc"]["overall"], "correct": 2, "total": 6}
    assert m["mmar_acc"]["overall"]["accuracy"] == pytest.approx(100 * 2 / 6, abs=1e-3)
    assert m["choice_acc"]["overall"]["correct"] == 3  # + the letter "C"
    assert m["no_prediction"] == 1 and m["no_prediction_ids"] == ["vid4_00-00-00_00-00-10"]
    assert m["instruction_following"] == {
        "parsed": 4,
        "total": 6,
        "rate": pytest.approx(100 * 4 / 6, abs=1e-3),
    }
    assert m["random_baseline"] == 25.0
    for group in ("modality", "category", "sub-category"):
        cells = m["mmar_acc"][group]
        assert sum(c["total"] for c in cells.values()) == 6
        assert set(next(iter(cells.values()))) >= {"correct", "total", "accuracy", "ci95", "p_vs_random"}
    assert m["mmar_acc"]["category"]["Perception Layer"]["total"] == 4
    assert "tag" not in m["mmar_acc"]
    assert "choice_acc: 50.00%" in proc.stdout


def test_score_json_list_input_and_tags(tmp_path):
    rows = [_item(i, "Open Grassland", tags=["folk", "vocal"] if i else ["folk"]) for i in range(3)]
    inp = tmp_path / "preds.json"
    inp.write_text(json.dumps(rows))
    m = score.score_file(inp, allow_unknown=False)
    assert m["mmar_acc"]["tag"]["folk"]["total"] == 3 and m["mmar_acc"]["tag"]["vocal"]["total"] == 2


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([_item(0, "x"), {**_item(1, "x"), "id": ""}], r"preds.jsonl:2: missing or empty 'id'"),
        (
            [_item(0, "x"), _item(1, "x"), _item(0, "y")],
            r"preds.jsonl:3: duplicate id 'vid0_\S+' \(first on line 1\)",
        ),
        (
            [_item(0, "x", model_answer="B")],
            r"preds.jsonl:1 \(id 'vid0\S+'\): unknown field\(s\) \['model_answer'\]",
        ),
        ([_item(0, "x", choices=["only"])], r"field 'choices'"),
        ([{k: v for k, v in _item(0, "x").items() if k != "answer"}], r"missing field 'answer'"),
        ([_item(0, 3)], r"'answer_prediction' must be a string"),
    ],
)
def test_bad_inputs_name_line_id_and_field(tmp_path, rows, match):
    inp = _write_jsonl(tmp_path / "preds.jsonl", rows)
    with pytest.raises(score.PredictionsError, match=match):
        score.score_file(inp)


def test_bad_input_cli_exit_code(tmp_path):
    inp = tmp_path / "preds.jsonl"
    inp.write_text(json.dumps(_item(0, "x")) + "\n{not json\n")
    proc = subprocess.run(
        [sys.executable, "-m", "eval.score", "--input", str(inp), "--output", str(tmp_path / "m.json")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "preds.jsonl:2: malformed JSON" in proc.stderr
    assert not (tmp_path / "m.json").exists()


def test_reference_counts_missing_items(tmp_path):
    ref = _write_jsonl(tmp_path / "meta.jsonl", [_item(i, None) for i in range(5)])
    inp = _write_jsonl(tmp_path / "preds.jsonl", [_item(i, "Open Grassland") for i in range(3)])
    m = score.score_file(inp, reference=ref)
    assert m["mmar_acc"]["overall"]["total"] == 5 and m["mmar_acc"]["overall"]["correct"] == 3
    assert m["no_prediction"] == 2
    extra = _write_jsonl(tmp_path / "extra.jsonl", [_item(i, "Open Grassland") for i in (0, 1, 9)])
    with pytest.raises(score.PredictionsError, match="not in the reference"):
        score.score_file(extra, reference=ref)
    foreign = _write_jsonl(tmp_path / "foreign.jsonl", [_item(9, "Open Grassland")])
    with pytest.raises(score.PredictionsError, match=r"5 of the reference's 5 id\(s\) are missing.*vid0_"):
        score.score_file(foreign, reference=ref)


def _run_dir(root: Path, name: str, correct: list[bool], audio: str = "real", model: str = "m") -> Path:
    """An eval.run-style dir with predictions.jsonl and run_info.json."""
    d = root / name
    d.mkdir(parents=True)
    rows = []
    for i, ok in enumerate(correct):
        pred_index = 2 if ok else 1
        rows.append(
            {
                **{k: v for k, v in _item(i, None).items() if k not in ("sub-category",)},
                "sub_category": "Env",
                "tags": [],
                "answer_index": 2,
                "output": f"<think>hmm</think><answer>{ENV[pred_index]}</answer>",
                "pred_index": pred_index,
                "pred_letter": "ABCD"[pred_index],
                "method": "answer_tag",
                "answer_prediction": ENV[pred_index],
                "choice_correct": ok,
                "mmar_correct": ok,
                "audio_mode": audio,
                "source_record": json.dumps(_item(i, None)),
            }
        )
    _write_jsonl(d / "predictions.jsonl", rows)
    (d / "run_info.json").write_text(json.dumps({"model": model, "adapter": None, "audio_mode": audio}))
    return d


def test_compare_outputs_and_mcnemar(tmp_path, capsys):
    n = 40
    base = [i % 3 == 0 for i in range(n)]
    sft = [i % 3 == 0 or i % 2 == 0 for i in range(n)]
    grpo = [not b if i < 6 else s for i, (b, s) in enumerate(zip(base, sft))]
    dirs = [_run_dir(tmp_path, name, c) for name, c in (("base", base), ("sft", sft), ("grpo", grpo))]
    out = tmp_path / "cmp"
    assert compare.main([str(d) for d in dirs] + ["--out", str(out)]) == 0
    for name in ("comparison.md", "comparison.csv", "comparison.json", "accuracy_by_layer.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "accuracy_by_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| all | sft |" in printed and "category: Cultural Layer" in printed
    summary = json.loads((out / "comparison.json").read_text())
    assert [s["name"] for s in summary["systems"]] == ["base", "sft", "grpo"]
    row = next(
        r for r in summary["rows"] if (r["scope"], r["system"], r["metric"]) == ("all", "sft", "choice_acc")
    )
    b_only = sum(s and not b for b, s in zip(base, sft))
    a_only = sum(b and not s for b, s in zip(base, sft))
    assert (row["mcnemar_first_only"], row["mcnemar_system_only"]) == (a_only, b_only)
    assert row["mcnemar_p"] == pytest.approx(binomtest(b_only, a_only + b_only).pvalue, rel=1e-9)
    assert row["mcnemar_p_bonf"] == pytest.approx(min(1.0, 2 * row["mcnemar_p"]))
    assert row["delta_vs_first"] == pytest.approx(100 * (sum(sft) - sum(base)) / n)
    with open(out / "comparison.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(summary["rows"])


def test_compare_logs_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    dirs = [_run_dir(tmp_path, n, [i % k == 0 for i in range(12)]) for n, k in (("a", 2), ("b", 3))]
    assert compare.main([str(d) for d in dirs] + ["--out", str(tmp_path / "out"), "--wandb"]) == 0
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


def test_compare_shows_rubric_scores_and_option_orders(tmp_path, monkeypatch):
    base = _run_dir(tmp_path, "base", [i % 3 == 0 for i in range(12)])
    tuned = _run_dir(tmp_path, "tuned", [i % 2 == 0 for i in range(12)])
    rub = {"judge": {"model": "judge-7b"}, "overall": {"score": 41.5, "judged_score": 83.0},
           "category": {"Cultural Layer": {"score": 12.25}}, "modality": {}}  # fmt: skip
    orders = {"orders": 3, "metric": "choice_acc", "mean_accuracy": 47.2, "std_accuracy": 3.1,
              "min_accuracy": 44.0, "max_accuracy": 50.0, "all_orders_correct": 30.5}  # fmt: skip
    (tuned / "metrics.json").write_text(json.dumps({"rubrics": rub, "option_orders": orders}))
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = compare.compare([str(base), str(tuned)], tmp_path / "out", wandb_project="p")
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "rubric score" in md and "| all | tuned | 12 |" in md and "| 41.5 |" in md and "| 12.2 |" in md
    assert "| tuned | 3 | choice_acc | 47.2 | 3.1 | 44.0 | 50.0 | 30.5 |" in md
    assert summary["rubrics"]["tuned"]["overall"]["score"] == 41.5 and "base" not in summary["rubrics"]
    assert summary["option_orders"] == {"tuned": orders}


def test_compare_refuses_different_item_sets(tmp_path):
    a = _run_dir(tmp_path, "a", [True] * 10)
    b = _run_dir(tmp_path, "b", [True] * 8)
    with pytest.raises(compare.CompareError, match=r"cannot pair 'a' \(10 items\) with 'b' \(8 items\)"):
        compare.compare([str(a), str(b)], tmp_path / "out")
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 2


def test_compare_language_prior_note(tmp_path):
    real = _run_dir(tmp_path, "real", [i % 4 != 0 for i in range(60)])
    none = _run_dir(tmp_path, "noaudio", [i % 4 != 0 for i in range(60)], audio="none")
    summary = compare.compare([str(real), str(none)], tmp_path / "out")
    notes = " ".join(summary["notes"])
    assert "above chance without the audio" in notes and "keeps its accuracy without the audio" in notes
    assert "language priors" in (tmp_path / "out" / "comparison.md").read_text()


def test_export_submission(tmp_path):
    run = _run_dir(tmp_path, "run", [True, False, True])
    out = tmp_path / "submission.jsonl"
    assert export.main(["--run", str(run), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert set(first) == set(_item(0, None)) | {"answer_prediction", "thinking_prediction"}
    assert first["answer_prediction"] in ENV and first["thinking_prediction"] == "hmm"
    # The official rule on the exported file reproduces the run's mmar flags.
    m = score.score_file(out)
    assert m["mmar_acc"]["overall"]["correct"] == 2


def test_score_real_mmar_meta(mmar_meta, tmp_path):
    """The real MMAR file with the answers as predictions: 100% both ways, 29.33% chance level."""
    rows = [json.loads(x) for x in mmar_meta.read_text(encoding="utf-8").splitlines()]
    inp = _write_jsonl(tmp_path / "perfect.jsonl", [{**r, "answer_prediction": r["answer"]} for r in rows])
    m = score.score_file(inp)
    assert m["mmar_acc"]["overall"]["correct"] == 1000 and m["choice_acc"]["overall"]["correct"] == 1000
    assert m["random_baseline"] == pytest.approx(29.33, abs=0.01)
    assert len(m["mmar_acc"]["sub-category"]) == 16 and len(m["mmar_acc"]["modality"]) == 7
    letters = _write_jsonl(tmp_path / "letters.jsonl", [{**r, "answer_prediction": "A"} for r in rows])
    assert score.score_file(letters)["mmar_acc"]["overall"]["correct"] == 0
