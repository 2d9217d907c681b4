"""Faults and bad input never lose work: crash/resume, kill -9 of eval.run, a bad-input corpus, safe loading.

Coverage that lives elsewhere (not repeated here):
- one bad clip / one bad item at a time, with error classes: tests/test_data_audio.py,
  tests/test_data_readers.py (missing/zero-byte/corrupt/NaN/silent clips, long-clip policies, path
  escapes, missing fields, too few choices, malformed JSON lines, duplicate ids);
- eval resume from a truncated predictions file and batched == one-by-one: tests/test_eval_run.py;
Here: the whole corpus through data_prep.prepare in one run, file-level errors through the CLI,
eval.run and training killed from outside (SIGKILL of the process group, as a preempted node is).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import free_port

REPO = Path(__file__).resolve().parent.parent
CODE_DIRS = ("common", "data_prep", "train", "eval", "scripts", "bench")
SR = 16000


# -- bad input corpus ---------------------------------------------------------------------------


def _tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _write_clips(audio: Path) -> None:
    """Every clip case of the corpus (the 'missing' one is simply not written)."""
    audio.mkdir(parents=True)
    sf.write(audio / "good.wav", _tone(1.0), SR, subtype="PCM_16")
    sf.write(audio / "ünïcødé_音声.wav", _tone(1.0), SR, subtype="PCM_16")
    (audio / "zero.wav").write_bytes(b"")
    (audio / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 40)
    nan = _tone(1.0)
    nan[100:200] = np.nan
    sf.write(audio / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(audio / "silent.wav", np.zeros(SR, dtype=np.float32), SR, subtype="PCM_16")
    sf.write(audio / "stereo_44k.wav", _tone(1.0, 44100, channels=2), 44100, subtype="PCM_16")
    sf.write(audio / "rate_8k.wav", _tone(1.0, 8000), 8000, subtype="PCM_16")
    sf.write(audio / "long_45s.wav", _tone(45.0, 8000), 8000, subtype="PCM_16")
    (audio / "not_audio.wav").write_bytes(b"<html><body>this is not a wav file</body></html>\n" * 20)


def _item(item_id: str, audio_path: str = "audio/good.wav", **override) -> dict:
    item = {
        "id": item_id,
        "audio_path": audio_path,
        "question": "Which tone is higher?",
        "choices": ["the first tone", "the second tone"],
        "answer": "the first tone",
        "modality": "sound",
        "category": "Signal Layer",
        "sub-category": "Audio Difference Analysis",
        "thinking": "The first tone is clearly higher.",
        "language": "en",
    }
    item.update(override)
    return {k: v for k, v in item.items() if v is not None}


UNICODE = {
    "question": "Quelle tonalité est la plus aiguë ? 哪个音更高？ 🎵",
    "choices": ["la première — ü", "第二个音", "ça dépend ✓"],
    "answer": "第二个音",
    "modality": "sound·音",
    "category": "Signal Layer ✓",
    "sub-category": "Différence — 差异",
    "thinking": "Le deuxième est plus aigu; 第二个更高. Ω≈ω",
    "cue": ["tonalité", "音高"],
    "language": "fr/中文",
}

# id -> (item, expected: error class name for a skip, or None for a sample in the dataset)
CORPUS: dict[str, tuple[dict, str | None]] = {
    "ok_plain": (_item("ok_plain"), None),
    "missing_file": (_item("missing_file", "audio/not_there.wav"), "AudioError"),
    "zero_byte": (_item("zero_byte", "audio/zero.wav"), "AudioError"),
    "corrupt_header": (_item("corrupt_header", "audio/corrupt.wav"), "AudioError"),
    "nan_samples": (_item("nan_samples", "audio/nan.wav"), "AudioError"),
    "all_zero": (_item("all_zero", "audio/silent.wav"), "AudioError"),
    "stereo_44k": (_item("stereo_44k", "audio/stereo_44k.wav"), None),
    "rate_8k": (_item("rate_8k", "audio/rate_8k.wav"), None),
    "long_45s": (_item("long_45s", "audio/long_45s.wav"), None),  # truncate policy: kept, counted
    "not_audio": (_item("not_audio", "audio/not_audio.wav"), "AudioError"),
    "missing_answer": (_item("missing_answer", answer=None), "MissingFieldError"),
    "answer_not_in_choices": (
        _item("answer_not_in_choices", answer="a third tone"),
        "AnswerNotInChoicesError",
    ),
    "one_choice": (_item("one_choice", choices=["the first tone"]), "TooFewChoicesError"),
    "eleven_choices": (
        _item("eleven_choices", choices=[f"option {i}" for i in range(10)] + ["the first tone"]),
        "TooManyChoicesError",
    ),
    "ünïcødé_全部_🎵": (_item("ünïcødé_全部_🎵", "audio/ünïcødé_音声.wav", **UNICODE), None),
    "path_escape": (_item("path_escape", "../../etc/passwd"), "AudioError"),
}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    """An MMAR-format source with every item-level case of the corpus, and its audio folder."""
    root = tmp_path_factory.mktemp("bad-corpus")
    _write_clips(root / "audio")
    lines = [json.dumps(item, ensure_ascii=False) for item, _ in CORPUS.values()]
    (root / "meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _prepare_argv(src: Path, root: Path, out: Path) -> list[str]:
    return [
        "--config", str(REPO / "configs/data/synth_cot.yaml"), "--source.path", str(src),
        "--audio_root", str(root), "--out_dir", str(out), "--split.mode", "holdout",
    ]  # fmt: skip


def test_bad_corpus_through_prepare_reports_every_skip(bad_corpus, tmp_path):
    from common.io import read_jsonl
    from data_prep.prepare import run

    dataset = run(_prepare_argv(bad_corpus / "meta.jsonl", bad_corpus, tmp_path / "out"))
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    counts, skipped = manifest["counts"], {s["id"]: s for s in manifest["skipped"]}
    expected_skips = {k: err for k, (_, err) in CORPUS.items() if err is not None}
    expected_kept = {k for k, (_, err) in CORPUS.items() if err is None}
    # Every item is accounted for: read == written + skipped, nothing silently dropped.
    assert counts["read"] == len(CORPUS)
    assert counts["samples"] + counts["skipped"] == counts["read"]
    assert set(skipped) == set(expected_skips), set(skipped) ^ set(expected_skips)
    for item_id, err in expected_skips.items():
        assert skipped[item_id]["reason"].startswith(f"{err}:"), skipped[item_id]
        assert "Traceback" not in skipped[item_id]["reason"]
    assert sum(counts["skipped_by_reason"].values()) == counts["skipped"]
    assert "escapes the audio root" in skipped["path_escape"]["reason"]
    assert "at most 10" in skipped["eleven_choices"]["reason"]
    rows = {r["id"]: r for r in read_jsonl(dataset / "test.jsonl")}
    assert set(rows) == expected_kept
    assert counts["truncated"] == 1 and rows["long_45s"]["audio_duration"] == pytest.approx(45.0)
    assert rows["stereo_44k"]["audio_duration"] == pytest.approx(1.0)
    uni = rows["ünïcødé_全部_🎵"]
    assert uni["answer"] == "第二个音" and "🎵" in uni["question"] and "第二个更高" in uni["target"]
    # The dataset card lists every skipped item with its reason.
    card = (dataset / "README.md").read_text(encoding="utf-8")
    for item_id in expected_skips:
        assert f"| {item_id} |" in card, item_id


def _file_case(tmp: Path, case: str) -> Path:
    """A source file with a file-level problem (these abort the run with a named error)."""
    good = json.dumps(_item("a"))
    src = tmp / ("src.json" if case == "trailing_comma" else "src.jsonl")
    if case == "trailing_comma":
        src.write_text(f"[{good},\n{json.dumps(_item('b'))},\n]\n", encoding="utf-8")
    elif case == "duplicate_ids":
        src.write_text(f"{good}\n{json.dumps(_item('b'))}\n{good}\n", encoding="utf-8")
    return src  # "missing_source": never written


@pytest.mark.parametrize(
    "case, message",
    [
        ("trailing_comma", r"src\.json:3: malformed JSON"),
        (
            "duplicate_ids",
            r"src\.jsonl:3: item 'a': field 'id': duplicate id \(first seen at .*src\.jsonl:1\)",
        ),
        ("missing_source", r"src\.jsonl: field 'source\.path': source file not found"),
    ],
)
def test_file_level_errors_are_one_line_from_the_cli(bad_corpus, tmp_path, case, message):
    src = _file_case(tmp_path, case)
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.prepare", *_prepare_argv(src, bad_corpus, tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*/manifest.json"))


# -- eval.run killed midway ---------------------------------------------------------------------

EVAL_LIMIT = 16


def _eval_argv(model: Path, data: Path, out: Path) -> list[str]:
    return [
        "--model", str(model), "--data", str(data), "--split", "test", "--out", str(out),
        "--limit", str(EVAL_LIMIT), "--max_new_tokens", "12", "--batch_size", "2",
    ]  # fmt: skip


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@pytest.mark.slow
def test_eval_killed_midway_then_rerun_equals_uninterrupted(tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    from eval import run

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run.main(_eval_argv(tiny_qwen2_audio_fast, prepared_synth, straight)) == 0
    cmd = [sys.executable, "-m", "eval.run", *_eval_argv(tiny_qwen2_audio_fast, prepared_synth, killed)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    preds = killed / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while len(_lines(preds)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done_at_kill = len(_lines(preds))
    assert 4 <= done_at_kill < EVAL_LIMIT, f"kill landed after {done_at_kill} predictions"
    assert json.loads((killed / "run_info.json").read_text())["status"] == "running"
    assert run.main(_eval_argv(tiny_qwen2_audio_fast, prepared_synth, killed)) == 0
    ids = [json.loads(line)["id"] for line in _lines(preds)]
    assert len(ids) == len(set(ids)) == EVAL_LIMIT, "duplicated or lost prediction lines"

    def outputs(d: Path) -> dict[str, str]:
        return {json.loads(x)["id"]: json.loads(x)["output"] for x in _lines(d / "predictions.jsonl")}

    assert outputs(killed) == outputs(straight)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight, killed)]
    assert metrics[0] == metrics[1]


# -- training killed from outside, resumed --------------------------------------------------------


# 16 samples / (2 ranks x batch 2) = 4 steps an epoch: 12 steps are 3 epochs, and checkpoint-6 is
# in the middle of the second, so a resume from it starts inside epoch 1 and crosses into epoch 2.
STEPS, SAVE_STEPS, STEPS_PER_EPOCH = 12, 6, 4


def _train_cmd(model: Path, data: Path, out: Path, **extra: object) -> list[str]:
    flags = {
        "model_name_or_path": model, "dataset_dir": data, "output_dir": out, "max_steps": STEPS,
        "save_steps": SAVE_STEPS, "per_device_train_batch_size": 2, "max_train_samples": 16,
        "val_split": "null", "logging_steps": 1, "report_to": "none", "warmup_ratio": 0.0, "seed": 0,
        "dataloader_num_workers": 2, **extra,
    }  # fmt: skip
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), "train.py"]
    cmd += ["--config", "configs/tiny/cpu.yaml"]  # ZeRO-2 (configs/deepspeed/zero2.json), fp32
    for key, value in flags.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _env() -> dict:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _checkpoint_complete(ckpt: Path, ranks: int = 2) -> bool:
    # trainer_state.json is written last by the Trainer; each rank also writes its RNG state.
    rng = all((ckpt / f"rng_state_{r}.pth").exists() for r in range(ranks))
    return (ckpt / "trainer_state.json").exists() and rng


def _run_ok(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.mark.slow
def test_training_kill9_after_checkpoint_then_resume_equals_straight(
    tiny_qwen2_audio_fast, prepared_synth, tmp_path
):
    """2 ranks, ZeRO-2, 2 loader workers each, resumed inside an epoch and across epoch boundaries.

    Before train/loader.py this drifted (max |diff| 1.1e-3 with workers: the resumed run shuffled
    later epochs differently); the unbroken run must equal the killed-and-resumed one.
    """
    import torch
    from safetensors.torch import load_file

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _run_ok(_train_cmd(tiny_qwen2_audio_fast, prepared_synth, straight))
    cmd = _train_cmd(tiny_qwen2_audio_fast, prepared_synth, crashed)
    # Own session: SIGKILL to the group takes down the launcher, both ranks and their loader workers.
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    checkpoint = crashed / f"checkpoint-{SAVE_STEPS}"
    deadline = time.monotonic() + 600
    while not _checkpoint_complete(checkpoint) and proc.poll() is None:
        assert time.monotonic() < deadline, f"no {checkpoint.name} within 10 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (crashed / "adapter_model.safetensors").exists(), "the run finished before the kill"
    at_kill = json.loads((checkpoint / "trainer_state.json").read_text())["epoch"]
    assert at_kill == SAVE_STEPS / STEPS_PER_EPOCH  # 1.5: the resume starts inside epoch 1
    _run_ok(cmd + ["--resume_from_checkpoint", "latest"])
    a, b = (
        load_file(str(straight / "adapter_model.safetensors")),
        load_file(str(crashed / "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    info = json.loads((crashed / "run_info.json").read_text())
    assert info["global_step"] == STEPS
    assert json.loads((crashed / "trainer_state.json").read_text())["epoch"] == STEPS / STEPS_PER_EPOCH


# -- counts that survive loader workers and ranks ------------------------------------------------


def _tampered_dataset(prepared: Path, model: Path, work: Path) -> tuple[Path, int]:
    """16 training rows where the collator must drop 2 and shorten 2, and the max_length that does it.

    Rows 0-1 get a 20 s clip but keep a 0.1 s `audio_duration`: the recipe's pre-filter (which trusts
    the duration) keeps them, the collator (which decodes) finds their audio would be cut and drops
    them, inside the loader workers. Rows 2-3 get a long answer that max_length shortens.
    """
    import shutil

    from datasets import Dataset, load_from_disk

    from models import get_family
    from models.inputs import CUTS_AUDIO, length_verdict, sample_token_length

    long_clip = work / "long_20s.wav"
    sf.write(long_clip, _tone(20.0), SR, subtype="PCM_16")
    rows = load_from_disk(str(prepared / "hf" / "train")).select(range(16)).to_list()
    family = get_family("qwen2_audio")
    processor = family.load_processor(str(model))
    max_length = max(sample_token_length(family, processor, r).total for r in rows)
    for row in rows[:2]:
        row["messages"][1]["content"][0]["path"] = str(long_clip)
        row["audio_duration"] = 0.1
    for row in rows[2:4]:
        row["messages"][2]["content"][0]["text"] *= 30
    claimed = [length_verdict(sample_token_length(family, processor, r), max_length) for r in rows]
    real = [sample_token_length(family, processor, {**r, "audio_duration": None}) for r in rows]
    assert claimed == [None] * 16  # the pre-filter keeps every row
    assert [length_verdict(n, max_length) for n in real[:4]] == [CUTS_AUDIO, CUTS_AUDIO, None, None]
    assert all(n.total > max_length for n in real[2:4])  # shortened, not dropped
    out = work / "tampered"
    shutil.copytree(prepared, out, ignore=shutil.ignore_patterns("hf"))
    features = load_from_disk(str(prepared / "hf" / "train")).features
    Dataset.from_list(rows, features=features).save_to_disk(str(out / "hf" / "train"))
    return out, max_length


@pytest.mark.slow
def test_collator_drops_in_loader_workers_are_summed_over_ranks(
    tiny_qwen2_audio_fast, prepared_synth, tmp_path
):
    """2 ranks x 2 loader workers: the drops and truncations each worker's collator copy makes
    reach run_info.json and the W&B run, summed (each row is collated once, on one rank)."""
    from models.inputs import CUTS_AUDIO

    data, max_length = _tampered_dataset(prepared_synth, tiny_qwen2_audio_fast, tmp_path)
    out = tmp_path / "run"
    # batch 4 per rank: the two dropped rows can never make a whole batch; 2 steps = one epoch
    cmd = _train_cmd(tiny_qwen2_audio_fast, data, out, max_steps=2, per_device_train_batch_size=4,
                     max_length=max_length, report_to="wandb", group_by_length="false")  # fmt: skip
    _run_ok(cmd)
    info = json.loads((out / "run_info.json").read_text())
    assert info["collator_dropped"] == {CUTS_AUDIO: 2}, info
    assert info["answers_truncated"] == 2
    assert info["train_split_dropped"] == {}
    blob = next((out / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    for key in (b"data/collator_dropped/truncation_would_cut_audio", b"data/answers_truncated"):
        assert key in blob, key


# -- a dead rank never hangs the job ------------------------------------------------------------

JOB_END_BOUND_S = 120  # the README's promise: a dead rank ends the job within 2 minutes


def _rank_pid(launcher_pid: int, local_rank: int, deadline_s: float = 300) -> int:
    """Pid of one rank: a direct child of DeepSpeed's per-node launcher (loader workers are its children)."""
    import psutil

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for proc in psutil.Process(launcher_pid).children(recursive=True):
            try:
                cmd = proc.cmdline()
                if "deepspeed.launcher.launch" in " ".join(cmd):
                    for rank in proc.children():
                        if f"--local_rank={local_rank}" in rank.cmdline():
                            return rank.pid
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"rank {local_rank} not found under the launcher")


def _kill_rank_and_time(proc: subprocess.Popen, pid: int) -> float:
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    try:
        proc.wait(timeout=JOB_END_BOUND_S + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the job hung after a rank died") from None
    return time.monotonic() - start


def _died_message(log: Path, rank: int, pid: int) -> bool:
    return f"rank {rank} (local rank {rank}, pid {pid}) died before finishing" in log.read_text()


@pytest.mark.slow
def test_dead_rank_mid_training_ends_the_job_then_resume_completes(
    tiny_qwen2_audio_fast, prepared_synth, tmp_path
):
    """kill -9 of rank 1 during a step: the job stops within the bound, naming rank 1; the last
    complete checkpoint loads and `--resume_from_checkpoint latest` finishes the run."""
    from safetensors.torch import load_file

    from train.components import newest_complete_checkpoint

    out, log = tmp_path / "run", tmp_path / "job.log"
    cmd = _train_cmd(tiny_qwen2_audio_fast, prepared_synth, out, max_steps=8, save_steps=2)
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        pid = _rank_pid(proc.pid, 1)
        deadline = time.monotonic() + 600
        while not _checkpoint_complete(out / "checkpoint-2") and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint-2 within 10 minutes"
            time.sleep(0.05)
        time.sleep(0.5)  # inside step 3
        elapsed = _kill_rank_and_time(proc, pid)
    assert proc.returncode != 0 and elapsed < JOB_END_BOUND_S, (proc.returncode, elapsed)
    assert _died_message(log, 1, pid), log.read_text()[-3000:]
    assert not (out / "adapter_model.safetensors").exists(), "the run finished before the kill"
    last = newest_complete_checkpoint(out)
    assert last is not None and load_file(str(Path(last) / "adapter_model.safetensors"))
    _run_ok(cmd + ["--resume_from_checkpoint", "latest"])
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_dead_rank_during_eval_at_end_ends_the_job(tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    """kill -9 of rank 0 while it runs eval_at_end: rank 1 (waiting for it) names it and the job
    ends within the bound; the adapter saved before the eval is complete and loads."""
    from peft import PeftModel

    from models import get_family

    out, log = tmp_path / "run", tmp_path / "job.log"
    extra = {"max_steps": 2, "save_steps": 2, "eval_at_end.enabled": "true", "eval_at_end.limit": 64,
             "eval_at_end.max_new_tokens": 64, "eval_at_end.batch_size": 1}  # fmt: skip
    cmd = _train_cmd(tiny_qwen2_audio_fast, prepared_synth, out, **extra)
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        pid = _rank_pid(proc.pid, 0)
        deadline = time.monotonic() + 600
        while not (out / "eval" / "test" / "run_info.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "eval_at_end did not start within 10 minutes"
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        elapsed = _kill_rank_and_time(proc, pid)
    assert proc.returncode != 0 and elapsed < JOB_END_BOUND_S, (proc.returncode, elapsed)
    assert _died_message(log, 0, pid), log.read_text()[-3000:]
    assert json.loads((out / "run_info.json").read_text())["status"] == "complete"
    family = get_family("qwen2_audio")
    base = family.load_model(str(tiny_qwen2_audio_fast), dtype="float32")
    assert PeftModel.from_pretrained(base, str(out)) is not None


def test_resume_latest_skips_a_torn_checkpoint(tmp_path):
    """A kill -9 during a save leaves checkpoint-N without trainer_state.json (written last)."""
    from train.components import resolve_resume
    from train.config import TrainingConfig

    good, torn = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    good.mkdir()
    (good / "trainer_state.json").write_text("{}")
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"")
    cfg = TrainingConfig(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    assert resolve_resume(cfg) == str(good)


# -- safe loading -------------------------------------------------------------------------------


def _code_files() -> list[Path]:
    files = [REPO / "train.py"]
    for d in CODE_DIRS:
        files += sorted((REPO / d).rglob("*.py"))
    return files


def test_no_trust_remote_code_true_anywhere():
    pattern = re.compile(r"trust_remote_code\s*[=:]\s*True")
    hits = [f"{f}:{n}" for f in _code_files() for n, line in enumerate(f.read_text().splitlines(), 1)
            if pattern.search(line)]  # fmt: skip
    assert not hits, hits
    yaml_hits = [str(p) for p in (REPO / "configs").rglob("*.yaml")
                 if re.search(r"trust_remote_code:\s*true", p.read_text(), re.IGNORECASE)]  # fmt: skip
    assert not yaml_hits, yaml_hits
    from eval.run import EvalConfig
    from train.config import ModelConfig

    assert EvalConfig().trust_remote_code is False and ModelConfig().trust_remote_code is False


def test_no_pickle_loads_of_user_files():
    hits = []
    for f in _code_files():
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
                hits.append(f"{f}:{n}: torch.load without weights_only=True")
            if re.search(r"\bpickle\.loads?\(|\bdill\.load|\bjoblib\.load", line):
                hits.append(f"{f}:{n}: pickle load")
    assert not hits, hits


def test_weights_are_safetensors_and_bin_adapters_are_refused(tiny_qwen2_audio_fast, tmp_path):
    from eval.run import EvalError, check_adapter

    assert (tiny_qwen2_audio_fast / "model.safetensors").exists()
    assert not list(tiny_qwen2_audio_fast.glob("*.bin")) and not list(tiny_qwen2_audio_fast.glob("*.pt"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_qwen2_audio_fast)})
    )
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(EvalError, match="no adapter_model.safetensors"):
        check_adapter(adapter, str(tiny_qwen2_audio_fast), allow_base_mismatch=False)


def test_epoch_order_depends_only_on_seed_and_epoch():
    """train/loader.py: the order a resumed process draws for an epoch is the unbroken run's."""
    import torch

    from train.loader import EpochSeededSampler

    lengths = [int(x) for x in np.random.default_rng(0).integers(50, 500, size=64)]
    epoch = {"now": 0.0}
    fresh = EpochSeededSampler(lengths, batch_size=4, seed=3, epoch_of=lambda: epoch["now"])
    orders = []
    for e in range(3):
        epoch["now"] = float(e)
        orders.append(list(fresh))
    assert all(sorted(o) == list(range(64)) for o in orders)  # each epoch is a permutation
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch
    # A process resumed in the middle of epoch 1 (state.epoch 1.5) draws epoch 1's order,
    # however much global randomness it consumed before.
    torch.rand(1000)  # global RNG draws (model init, dropout) must not matter
    resumed = EpochSeededSampler(lengths, batch_size=4, seed=3, epoch_of=lambda: 1.5)
    assert list(resumed) == orders[1]
    other_seed = EpochSeededSampler(lengths, batch_size=4, seed=4, epoch_of=lambda: 1.0)
    assert list(other_seed) != orders[1]
    plain = EpochSeededSampler(lengths, 4, 3, lambda: 1.0, group_by_length=False)
    assert sorted(plain) == list(range(64)) and list(plain) != orders[1]
