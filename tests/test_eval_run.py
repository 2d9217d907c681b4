"""eval.run end to end on the tiny Qwen2-Audio: files, resume, batching, ablation, guards."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.io import read_jsonl
from eval import compare, export, run

LIMIT, NEW_TOKENS = 12, 24


def _argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--data", str(data), "--split", "test", "--out", str(out),
        "--limit", str(LIMIT), "--max_new_tokens", str(NEW_TOKENS), "--batch_size", "4", *extra,
    ]  # fmt: skip


def _outputs(run_dir: Path) -> dict[str, str]:
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert len(rows) == len({r["id"] for r in rows}), "duplicated prediction lines"
    return {r["id"]: r["output"] for r in rows}


@pytest.fixture(scope="module")
def base_run(tiny_qwen2_audio_fast, prepared_synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "base"
    # --wandb too: conftest keeps W&B offline, so this checks the logging path without network.
    assert run.main(_argv(tiny_qwen2_audio_fast, prepared_synth, out, "--wandb")) == 0
    return out


def test_run_writes_predictions_metrics_run_info(base_run, prepared_synth):
    preds = read_jsonl(base_run / "predictions.jsonl")
    assert len(preds) == LIMIT
    test_ids = [r["id"] for r in read_jsonl(prepared_synth / "test.jsonl")][:LIMIT]
    assert {p["id"] for p in preds} == set(test_ids)
    p = preds[0]
    for key in ("output", "pred_index", "pred_letter", "method", "answer_prediction", "choice_correct",
                "mmar_correct", "category", "modality", "source_record", "n_new_tokens"):  # fmt: skip
        assert key in p
    assert all(p["n_new_tokens"] <= NEW_TOKENS for p in preds)
    metrics = json.loads((base_run / "metrics.json").read_text())
    for key in ("mmar_acc", "choice_acc"):
        assert metrics[key]["overall"]["total"] == LIMIT
        assert set(metrics[key]) >= {"overall", "modality", "category", "sub-category"}
    assert metrics["audio_mode"] == "real" and "ablation" not in metrics
    info = json.loads((base_run / "run_info.json").read_text())
    assert info["status"] == "complete" and info["split"] == "test" and info["audio_mode"] == "real"
    manifest = json.loads((prepared_synth / "manifest.json").read_text())
    assert info["data_manifest_hash"] == manifest["hash"] and info["template"] == manifest["template"]
    assert info["decoding"]["max_new_tokens"] == NEW_TOKENS and "git_sha" in info
    assert list((base_run / "wandb").glob("offline-run-*"))  # eval/acc/<layer> logged offline


def test_resume_after_deleting_half(base_run, tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(base_run, out)
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # Half the lines, plus a torn line as a kill -9 mid-write leaves it.
    (out / "predictions.jsonl").write_text(
        "".join(lines[: LIMIT // 2]) + lines[LIMIT // 2][:40], encoding="utf-8"
    )
    assert run.main(_argv(tiny_qwen2_audio_fast, prepared_synth, out)) == 0
    assert _outputs(out) == _outputs(base_run)
    assert (out / "metrics.json").read_text() == (base_run / "metrics.json").read_text()


def test_resume_with_other_settings_is_refused(base_run, tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(base_run, out)
    with pytest.raises(run.EvalError, match="max_new_tokens: 24 -> 8"):
        run.run(
            run.parse_config(
                run.EvalConfig, _argv(tiny_qwen2_audio_fast, prepared_synth, out, "--max_new_tokens", "8")
            )
        )


@dataclass
class _TrainEvalCfg:  # the shape of train/'s eval-at-end section: no `audio`, no `seed`
    batch_size: int
    max_new_tokens: int = NEW_TOKENS


def test_batched_equals_one_by_one(base_run, tiny_qwen2_audio_fast, prepared_synth):
    from models import get_family

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(tiny_qwen2_audio_fast))
    model = family.load_model(str(tiny_qwen2_audio_fast), dtype="float32")
    rows = read_jsonl(prepared_synth / "test.jsonl")[:LIMIT]
    one = run.evaluate(model, processor, family, rows, _TrainEvalCfg(batch_size=1), progress=False)
    batched = run.evaluate(
        model, processor, "qwen2_audio", rows, _TrainEvalCfg(batch_size=LIMIT), progress=False
    )
    assert [r["id"] for r in one] == [r["id"] for r in rows]
    assert [r["output"] for r in one] == [r["output"] for r in batched]
    assert {r["id"]: r["output"] for r in one} == _outputs(base_run)  # eval.run used batches of 4
    # Noise ablation: the noise is seeded per item, so batching does not change it either.
    noise_one = run.evaluate(
        model,
        processor,
        family,
        rows[:4],
        run.EvalConfig(batch_size=1, audio="noise", max_new_tokens=NEW_TOKENS),
        progress=False,
    )
    noise_all = run.evaluate(
        model,
        processor,
        family,
        rows[:4],
        run.EvalConfig(batch_size=4, audio="noise", max_new_tokens=NEW_TOKENS),
        progress=False,
    )
    assert [r["output"] for r in noise_one] == [r["output"] for r in noise_all]
    assert all(r["audio_mode"] == "noise" for r in noise_all)


def test_audio_none_then_compare_and_export(
    base_run, tiny_qwen2_audio_fast, prepared_synth, tmp_path, capsys
):
    ablated = tmp_path / "noaudio"
    assert run.main(_argv(tiny_qwen2_audio_fast, prepared_synth, ablated, "--audio", "none")) == 0
    metrics = json.loads((ablated / "metrics.json").read_text())
    assert metrics["audio_mode"] == "none" and metrics["ablation"]["audio"] == "none"
    assert "without the audio" in metrics["ablation"]["note"]
    assert all(p["audio_mode"] == "none" for p in read_jsonl(ablated / "predictions.jsonl"))
    # No audio tokens: each prompt is shorter than its real-audio twin by >= 25 tokens (1 s of audio).
    with_audio = {p["id"]: p["n_prompt_tokens"] for p in read_jsonl(base_run / "predictions.jsonl")}
    assert all(
        p["n_prompt_tokens"] <= with_audio[p["id"]] - 25 for p in read_jsonl(ablated / "predictions.jsonl")
    )
    out = tmp_path / "cmp"
    assert compare.main([str(base_run), str(ablated), "--out", str(out)]) == 0
    for name in ("comparison.md", "comparison.csv", "comparison.json", "accuracy_by_layer.png"):
        assert (out / name).exists()
    summary = json.loads((out / "comparison.json").read_text())
    assert [s["audio_mode"] for s in summary["systems"]] == ["real", "none"]
    assert "| all | noaudio |" in capsys.readouterr().out
    sub = tmp_path / "submission.jsonl"
    assert export.main(["--run", str(base_run), "--out", str(sub)]) == 0
    lines = read_jsonl(sub)
    assert len(lines) == LIMIT and all(
        {"answer_prediction", "thinking_prediction", "sub-category"} <= set(x) for x in lines
    )


def _make_adapter(model_dir: Path, out: Path, train_groups: list[str], r: int = 4) -> Path:
    from peft import LoraConfig, get_peft_model

    from models import get_family

    family = get_family("qwen2_audio")
    model = family.load_model(str(model_dir), dtype="float32")
    peft_model = get_peft_model(model, LoraConfig(r=r, **family.LORA_TARGET))
    peft_model.save_pretrained(out)
    (out / "run_info.json").write_text(
        json.dumps({"base_model": str(model_dir), "train_groups": train_groups})
    )
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_qwen2_audio_fast, prepared_synth, tmp_path_factory) -> Path:
    test_groups = [r["group"] for r in read_jsonl(prepared_synth / "test.jsonl")][:2]
    return _make_adapter(
        tiny_qwen2_audio_fast, tmp_path_factory.mktemp("adapter"), ["train-only-group", *test_groups]
    )


def test_leakage_guard_refuses_then_allows(adapter_dir, tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    out = tmp_path / "leaky"
    with pytest.raises(run.EvalError, match=r"shares 2 group\(s\) with the adapter's training split"):
        run.run(
            run.parse_config(
                run.EvalConfig,
                _argv(tiny_qwen2_audio_fast, prepared_synth, out, "--adapter", str(adapter_dir)),
            )
        )
    assert not (out / "predictions.jsonl").exists()
    argv = _argv(
        tiny_qwen2_audio_fast,
        prepared_synth,
        out,
        "--adapter",
        str(adapter_dir),
        "--allow_overlap",
        "--limit",
        "2",
    )
    assert run.main(argv) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["leakage"] == {"checked": True, "overlap_groups": 2, "allowed": True}
    assert info["adapter_base_model"] == str(tiny_qwen2_audio_fast)


def test_adapter_for_another_base_is_refused(adapter_dir, tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    other = tmp_path / "adapter"
    shutil.copytree(adapter_dir, other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "Qwen/Qwen2.5-Omni-7B"})
    )
    argv = _argv(
        tiny_qwen2_audio_fast, prepared_synth, tmp_path / "x", "--adapter", str(other), "--allow_overlap"
    )
    with pytest.raises(run.EvalError, match="was trained on base model 'Qwen/Qwen2.5-Omni-7B'"):
        run.run(run.parse_config(run.EvalConfig, argv))
    # Same name but other shapes (rank 8 config over rank 4 weights): a clear error, not a traceback.
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(run.EvalError, match="does not fit base model"):
        run.run(run.parse_config(run.EvalConfig, argv))
    assert run.main(argv) == 2


def test_not_a_dataset_dir(tiny_qwen2_audio_fast, tmp_path):
    with pytest.raises(run.EvalError, match="not a prepared dataset dir"):
        run.run(run.parse_config(run.EvalConfig, _argv(tiny_qwen2_audio_fast, tmp_path, tmp_path / "o")))


def test_option_orders_resume_metrics_and_compare(base_run, tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    out = tmp_path / "orders"
    shutil.copytree(base_run, out)  # rotation 0 is already there: only rotations 1 and 2 are generated
    assert run.main(_argv(tiny_qwen2_audio_fast, prepared_synth, out, "--option_orders", "3")) == 0
    rotated = read_jsonl(out / "predictions_orders.jsonl")
    assert sorted((p["id"], p["rotation"]) for p in rotated) == sorted(
        (i, r) for i in _outputs(base_run) for r in (1, 2)
    )
    assert _outputs(out) == _outputs(base_run)
    base_rows = {r["id"]: r for r in read_jsonl(prepared_synth / "test.jsonl")}
    for p in rotated:  # the prompt showed the options rotated, and the row records them so
        n = len(base_rows[p["id"]]["choices"])
        assert p["choices"] == [base_rows[p["id"]]["choices"][(i + p["rotation"]) % n] for i in range(n)]
    metrics = json.loads((out / "metrics.json").read_text())
    orders = metrics["option_orders"]
    assert orders["orders"] == 3 and orders["n_items"] == LIMIT
    assert orders["per_order_accuracy"][0] == metrics["choice_acc"]["overall"]["accuracy"]
    assert orders["min_accuracy"] <= orders["mean_accuracy"] <= orders["max_accuracy"]
    before = (out / "predictions_orders.jsonl").read_text()
    assert run.main(_argv(tiny_qwen2_audio_fast, prepared_synth, out, "--option_orders", "3")) == 0
    assert (out / "predictions_orders.jsonl").read_text() == before  # a rerun generates nothing
    summary = compare.compare([str(base_run), str(out)], tmp_path / "cmp")
    assert summary["option_orders"]["orders"]["orders"] == 3
    assert "Option-order robustness" in (tmp_path / "cmp" / "comparison.md").read_text()
