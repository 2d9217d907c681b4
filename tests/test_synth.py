"""The synthetic benchmark: schema, determinism, grouping, and every answer re-derived from the audio.

The measurements below are deliberately independent of data_prep/synth.py: they look only at the
WAV samples (FFT peaks, envelopes, RMS, spans, instantaneous frequency, spectral flatness), never
at the generator's parameters.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import find_peaks, hilbert

from data_prep.synth import SCENES, TASK_NAMES, TASKS, generate, main

SR = 16000
MMAR_FIELDS = {
    "id", "audio_path", "question", "choices", "answer", "modality", "category", "sub-category",
    "language", "source", "url", "timestamp", "thinking", "cue", "rubric",
}  # fmt: skip
COUNT_WORDS = ["one", "two", "three", "four", "five"]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]


def _task(row: dict) -> str:
    return row["id"].split("-")[2]


def _load(out: Path, row: dict) -> np.ndarray:
    audio, sr = sf.read(out / row["audio_path"], dtype="float64")
    assert sr == SR
    return audio


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# --- independent measurements -----------------------------------------------------------------


def _segments(x: np.ndarray, frame: int = 160) -> list[tuple[int, int]]:
    """Sample spans of the sounding parts: 10 ms frames with energy above -45 dB of the loudest."""
    n = len(x) // frame
    energy = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    active = energy > energy.max() * 10 ** (-4.5)
    spans, start = [], None
    for i, on in enumerate(np.append(active, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append((start * frame, i * frame))
            start = None
    return spans


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=4 * len(x)))
    return float(np.argmax(spec) * SR / (4 * len(x)))


def _count_envelope_peaks(x: np.ndarray) -> int:
    window = np.hanning(int(0.04 * SR))
    env = np.convolve(x**2, window / window.sum(), mode="same")
    peaks, _ = find_peaks(env, prominence=0.3 * env.max())
    return len(peaks)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def _pitch_slope(x: np.ndarray) -> float:
    """Slope of a line fitted to the instantaneous frequency (Hz per second) of the sounding part."""
    (start, end), *_ = _segments(x)
    trim = (end - start) // 10  # fade ramps make the phase derivative noisy at the edges
    phase = np.unwrap(np.angle(hilbert(x[start + trim : end - trim])))
    inst_hz = np.diff(phase) * SR / (2 * np.pi)
    return float(np.polyfit(np.arange(len(inst_hz)) / SR, inst_hz, 1)[0])


def _noise_before_tone(x: np.ndarray, frame: int = 512) -> bool:
    """Spectral flatness per sounding frame: noise frames are flat (~0.5), tone frames peaky (~0)."""
    n = len(x) // frame
    frames = x[: n * frame].reshape(n, frame) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-20
    flatness = np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)
    energy = power.sum(axis=1)
    sounding = energy > energy.max() * 1e-2
    noise = np.flatnonzero(sounding & (flatness > 0.2))
    tone = np.flatnonzero(sounding & (flatness < 0.05))
    assert len(noise) >= 3 and len(tone) >= 3
    assert noise.max() < tone.min() or tone.max() < noise.min(), "noise and tone overlap"
    return noise.mean() < tone.mean()


def _third_semitones(x: np.ndarray) -> tuple[int, int]:
    """Semitones from the lowest FFT peak (the root) to the next two (third, fifth)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=4 * len(x)))
    hz_per_bin = SR / (4 * len(x))
    peaks, _ = find_peaks(spec, height=0.3 * spec.max(), distance=int(20 / hz_per_bin))
    root, third, fifth = peaks[:3] * hz_per_bin
    return round(12 * np.log2(third / root)), round(12 * np.log2(fifth / root))


def _measured_answer(task: str, x: np.ndarray) -> str:
    """The correct option text, decided from the audio alone."""
    if task == "beep_count":
        return COUNT_WORDS[_count_envelope_peaks(x) - 1]
    if task == "pitch_sweep":
        return "rising" if _pitch_slope(x) > 0 else "falling"
    if task == "noise_order":
        return "before the tone" if _noise_before_tone(x) else "after the tone"
    if task == "triad":
        third, fifth = _third_semitones(x)
        assert fifth == 7 and third in (3, 4)
        return "major" if third == 4 else "minor"
    spans = _segments(x)
    assert len(spans) == 2, f"{task}: expected two sounds, found {len(spans)}"
    a, b = (x[s:e] for s, e in spans)
    if task == "higher_tone":
        fa, fb = _peak_hz(a), _peak_hz(b)
        assert max(fa, fb) / min(fa, fb) >= 2.0, "tones should be an octave or more apart"
        return "the first tone" if fa > fb else "the second tone"
    if task == "louder":
        ra, rb = _rms(a), _rms(b)
        assert abs(20 * np.log10(ra / rb)) >= 12.0, "levels should differ by 12 dB or more"
        return "the first sound" if ra > rb else "the second sound"
    if task == "longer":
        la, lb = len(a), len(b)
        assert max(la, lb) / min(la, lb) >= 2.0, "durations should differ by 2x or more"
        return "the first sound" if la > lb else "the second sound"
    raise AssertionError(f"no measurement for task {task}")


# --- tests ------------------------------------------------------------------------------------


def test_schema(synth_dir: Path) -> None:
    rows = _rows(synth_dir)
    assert len(rows) == 120 and len({r["id"] for r in rows}) == 120
    for r in rows:
        assert MMAR_FIELDS | {"group"} == set(r), r["id"]
        assert 2 <= len(r["choices"]) <= 4 and len(set(r["choices"])) == len(r["choices"])
        assert r["answer"] in r["choices"]
        assert r["category"] in {"Signal Layer", "Perception Layer"}
        assert r["modality"] in {"sound", "music"}
        assert r["language"] == "en" and r["source"] == "synthetic"
        assert r["url"] is None and r["timestamp"] is None
        assert r["audio_path"] == f"audio/{r['id']}.wav"
        assert r["thinking"] and len(r["thinking"].split()) <= 25 and r["cue"] and r["rubric"]
        info = sf.info(synth_dir / r["audio_path"])
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV")
        assert 1.0 <= info.duration <= 5.0


def test_every_task_present_and_balanced(synth_dir: Path) -> None:
    rows = _rows(synth_dir)
    assert {_task(r) for r in rows} == set(TASK_NAMES)
    assert {r["modality"] for r in rows} == {"sound", "music"}
    # One fixed option vocabulary per task, so the model can learn a mapping.
    for task in TASK_NAMES:
        answers = [r["answer"] for r in rows if _task(r) == task and r["id"].endswith("-a")]
        counts = np.unique(answers, return_counts=True)[1]
        assert counts.max() - counts.min() <= 2, (task, answers)


def test_groups_keep_scene_variants_together(synth_dir: Path) -> None:
    rows = _rows(synth_dir)
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    assert any(len(items) == 2 for items in by_group.values()), "no scene was asked twice"
    for group, items in by_group.items():
        assert len({_task(r) for r in items}) == 1 and len({r["answer"] for r in items}) == 1
        assert len({r["question"] for r in items}) == len(items)  # variants are worded differently
        audio = {(synth_dir / r["audio_path"]).read_bytes() for r in items}
        assert len(audio) == 1, f"{group}: variants of one scene must carry the same audio"
    # The scene id is the group: no audio content appears under two groups.
    digests = {}
    for r in rows:
        digest = hash((synth_dir / r["audio_path"]).read_bytes())
        assert digests.setdefault(digest, r["group"]) == r["group"]


def test_answers_verified_from_audio(synth_dir: Path) -> None:
    rows = _rows(synth_dir)
    checked = defaultdict(int)
    for r in rows:
        task = _task(r)
        assert _measured_answer(task, _load(synth_dir, r)) == r["answer"], r["id"]
        checked[task] += 1
    assert set(checked) == set(TASK_NAMES) and min(checked.values()) >= 10


@pytest.fixture(scope="module")
def big_synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth2000")
    generate(out, n=2000, seed=0, variant_rate=0.0)  # one item per scene: no clip counted twice
    return out


def _answer_index(task: str, answer: str) -> int:
    """The answer's class in the task's fixed option order (beep_count: the number of beeps - 1)."""
    return TASKS[task].primary.pool.index(answer)


def test_duration_and_loudness_say_nothing_about_the_answer(big_synth: Path) -> None:
    """Per task, neither the clip length nor its peak level correlates with the answer class.

    Under independence r is about N(0, 1/sqrt(n)) with n ~ 285 items per task (sd 0.06); 0.15 is
    2.5 sd. Clips as long as their content would give beep_count r = +0.94 between duration and the
    number of beeps.
    """
    by_task: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for r in _rows(big_synth):
        x = _load(big_synth, r)
        by_task[_task(r)].append((_answer_index(_task(r), r["answer"]), len(x) / SR, float(np.abs(x).max())))
    assert set(by_task) == set(TASK_NAMES)
    for task, values in by_task.items():
        label, seconds, peak = (np.array(v) for v in zip(*values))
        assert len(label) >= 250 and len(set(label.tolist())) == SCENES[task][1], task
        for name, prop in (("duration", seconds), ("peak level", peak)):
            r = np.corrcoef(label, prop)[0, 1]
            assert abs(r) < 0.15, f"{task}: {name} correlates with the answer (r={r:+.2f})"
        # A coarser check than r, for a non-linear link: the mean duration per answer class.
        means = [seconds[label == k].mean() for k in range(SCENES[task][1])]
        assert max(means) - min(means) < 0.1, f"{task}: mean duration per answer {means}"


def test_deterministic_by_seed(tmp_path: Path) -> None:
    generate(tmp_path / "a", n=24, seed=3)
    generate(tmp_path / "b", n=24, seed=3)
    generate(tmp_path / "c", n=24, seed=4)
    a, b, c = (_tree_bytes(tmp_path / d) for d in "abc")
    assert a == b
    assert a["meta.jsonl"] != c["meta.jsonl"]
    shared_wavs = [k for k in a.keys() & c.keys() if k.endswith(".wav")]
    assert shared_wavs and all(a[k] != c[k] for k in shared_wavs)


def test_cli_task_mix(tmp_path: Path) -> None:
    meta = main(["--out", str(tmp_path), "--n", "10", "--seed", "1", "--tasks", "triad,beep_count"])
    rows = _rows(meta.parent)
    assert len(rows) == 10 and {_task(r) for r in rows} == {"triad", "beep_count"}
    for r in rows:
        assert _measured_answer(_task(r), _load(tmp_path, r)) == r["answer"], r["id"]
    with pytest.raises(ValueError, match="unknown"):
        generate(tmp_path, n=5, tasks="triad,kazoo")


def test_rerun_replaces_meta(tmp_path: Path) -> None:
    generate(tmp_path, n=12, seed=0)
    generate(tmp_path, n=5, seed=0)
    assert len(_rows(tmp_path)) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
