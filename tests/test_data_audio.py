"""Audio loading and checks on small files the tests write: each bad clip -> its named error or a
counted, reported skip in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.audio import check_audio, load_audio, resolve_audio_path
from data_prep.prepare import run
from data_prep.schema import AudioError, AudioTooLongError, SourceFileError

REPO = Path(__file__).resolve().parent.parent


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


@pytest.fixture()
def clips(tmp_path) -> Path:
    """One good and one bad clip of every kind, under tmp/audio/."""
    a = tmp_path / "audio"
    a.mkdir()
    sf.write(a / "stereo44k.wav", tone(1.0, 44100, channels=2), 44100)
    sf.write(a / "rate8k.wav", tone(0.5, 8000), 8000)
    sf.write(a / "mono16k.flac", tone(0.25, 16000), 16000, format="FLAC")
    sf.write(a / "vorbis.ogg", tone(0.5, 22050), 22050, format="OGG", subtype="VORBIS")
    nan = tone(0.5, 16000)
    nan[100] = np.nan
    sf.write(a / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(a / "zeros.wav", np.zeros(8000, dtype=np.float32), 16000)
    (a / "empty.wav").write_bytes(b"")
    good = (a / "rate8k.wav").read_bytes()
    (a / "corrupt_header.wav").write_bytes(b"RIFX" + good[4:12] + b"garbage!" + good[20:])
    (a / "not_audio.wav").write_bytes(b"This is a text file, not audio.\n" * 20)
    long = tone(45.0, 8000)
    long[: 31 * 8000] = 0.0  # only the part beyond 31 s has sound
    sf.write(a / "long45.wav", tone(45.0, 8000), 8000)
    sf.write(a / "long45_silent_head.wav", long, 8000)
    return tmp_path


def test_load_audio_downmixes_and_resamples(clips):
    wave = load_audio(clips / "audio/stereo44k.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 2
    # Downmix averages channels (1.0 and 0.5 of one tone -> 0.75 of it).
    assert np.max(np.abs(wave)) == pytest.approx(0.3 * 0.75, rel=0.02)
    up = load_audio(clips / "audio/rate8k.wav")
    assert abs(len(up) - 8000) <= 2 and up.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(up))
    assert np.argmax(spectrum) * 16000 / len(up) == pytest.approx(440, abs=3)  # soxr keeps the pitch
    assert len(load_audio(clips / "audio/mono16k.flac")) == 4000
    assert len(load_audio(clips / "audio/vorbis.ogg", sampling_rate=22050)) == pytest.approx(11025, abs=64)
    assert len(load_audio(clips / "audio/long45.wav", max_seconds=30)) == 30 * 16000


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nan.wav", "NaN"),
        ("zeros.wav", "all zeros"),
        ("empty.wav", "0 bytes"),
        ("corrupt_header.wav", "cannot decode"),
        ("not_audio.wav", "cannot decode"),
        ("missing.wav", "not found"),
    ],
)
def test_bad_clips_raise_audio_error_naming_the_file(clips, name, message):
    path = clips / "audio" / name
    for fn in (check_audio, load_audio):
        with pytest.raises(AudioError, match=message) as info:
            fn(path)
        assert str(path) in str(info.value)


def test_long_clip_policies(clips):
    path = clips / "audio/long45.wav"
    assert check_audio(path, max_seconds=30.0, long_audio_policy="truncate") == pytest.approx(45.0)
    with pytest.raises(AudioTooLongError, match="45.00 s"):
        check_audio(path, max_seconds=30.0, long_audio_policy="skip")
    # Under truncate, the 30 s the model hears must not be silent.
    with pytest.raises(AudioError, match="all zeros"):
        check_audio(clips / "audio/long45_silent_head.wav", max_seconds=30.0, long_audio_policy="truncate")


def test_paths_escaping_the_audio_root_are_refused(tmp_path):
    root = tmp_path / "root"
    assert resolve_audio_path(root, "./audio/x.wav") == root / "audio" / "x.wav"
    for bad in ("../../etc/passwd", "/etc/passwd", "audio/../../x.wav"):
        with pytest.raises(AudioError, match="escapes the audio root"):
            resolve_audio_path(root, bad)


ITEMS = [
    "stereo44k.wav",
    "rate8k.wav",
    "mono16k.flac",
    "nan.wav",
    "zeros.wav",
    "empty.wav",
    "corrupt_header.wav",
    "not_audio.wav",
    "long45.wav",
    "missing.wav",
    "../../etc/passwd",
]
BAD = {
    "nan.wav",
    "zeros.wav",
    "empty.wav",
    "corrupt_header.wav",
    "not_audio.wav",
    "missing.wav",
    "../../etc/passwd",
}


def write_meta(folder: Path) -> Path:
    rows = []
    for i, name in enumerate(ITEMS):
        path = name if name.startswith("..") else f"audio/{name}"
        rows.append(
            {
                "id": f"item{i}",
                "audio_path": path,
                "question": "Is there a tone?",
                "choices": ["yes", "no"],
                "answer": "yes",
                "modality": "sound",
                "category": "Signal Layer",
                "thinking": "A steady tone is audible.",
                "group": f"g{i}",
            }
        )
    meta = folder / "meta.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return meta


def prepare(meta: Path, out: Path, *extra: str) -> Path:
    args = ["--config", str(REPO / "configs/data/synth_cot.yaml"), "--source.path", str(meta)]
    return run(
        [*args, "--audio_root", str(meta.parent), "--out_dir", str(out), "--split.mode", "holdout", *extra]
    )


@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_prepare_counts_and_reports_every_bad_clip(clips, tmp_path, policy):
    meta = write_meta(clips)
    dataset = prepare(meta, tmp_path / f"out-{policy}", "--long_audio_policy", policy)
    manifest = json.loads((dataset / "manifest.json").read_text())
    skipped = {s["id"]: s["reason"] for s in manifest["skipped"]}
    expected_bad = {
        f"item{i}" for i, n in enumerate(ITEMS) if n in BAD or (policy == "skip" and n == "long45.wav")
    }
    assert set(skipped) == expected_bad
    assert skipped["item9"].startswith("AudioError") and "not found" in skipped["item9"]
    assert "escapes the audio root" in skipped["item10"]
    kept = manifest["counts"]["samples"]
    assert kept + manifest["counts"]["skipped"] == manifest["counts"]["read"] == len(ITEMS)
    assert manifest["counts"]["truncated"] == (1 if policy == "truncate" else 0)
    if policy == "skip":
        assert skipped["item8"].startswith("AudioTooLongError")
    card = (dataset / "README.md").read_text()
    assert all(item_id in card for item_id in skipped)
    rows = [json.loads(x) for x in (dataset / "test.jsonl").read_text().splitlines()]
    durations = {r["id"]: r["audio_duration"] for r in rows}
    assert durations["item0"] == pytest.approx(1.0) and durations["item1"] == pytest.approx(0.5)


def test_strict_turns_a_bad_clip_into_an_error(clips, tmp_path):
    meta = write_meta(clips)
    with pytest.raises(AudioError, match="item3"):
        prepare(meta, tmp_path / "out", "--strict")


def test_missing_audio_root_needs_no_audio_check(tmp_path):
    meta = write_meta(tmp_path)
    args = ["--config", str(REPO / "configs/data/synth_cot.yaml"), "--source.path", str(meta)]
    args += ["--audio_root", str(tmp_path / "nowhere"), "--out_dir", str(tmp_path / "out")]
    with pytest.raises(SourceFileError, match="audio root not found.*--no-audio-check"):
        run(args)
    dataset = run([*args, "--no-audio-check", "--split.mode", "holdout"])
    manifest = json.loads((dataset / "manifest.json").read_text())
    # Metadata-only still refuses the path that escapes the root, and says so.
    assert [s["id"] for s in manifest["skipped"]] == ["item10"]
