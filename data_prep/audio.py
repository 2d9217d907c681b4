"""Audio loading and the checks run before training.

`load_audio` is what the collator and eval call: decode (WAV/FLAC/OGG/MP3 through libsndfile),
downmix to mono, resample with soxr, optionally truncate. `check_audio` decodes a clip once and
rejects what would silently poison training: missing, unreadable, empty, NaN/inf, all-zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from data_prep.schema import AudioError, AudioTooLongError

__all__ = ["AudioError", "AudioTooLongError", "check_audio", "load_audio", "resolve_audio_path"]


def resolve_audio_path(audio_root: str | os.PathLike, rel: str) -> Path:
    """Absolute path of `rel` under `audio_root`; a path that leaves the root is an AudioError.

    The check is lexical (normpath), not `resolve()`, so a root that is itself a symlink farm
    still works, while `../../etc/passwd` or an absolute path elsewhere is refused.
    """
    root = os.path.normpath(os.path.abspath(audio_root))
    full = os.path.normpath(os.path.join(root, rel))
    if os.path.commonpath([root, full]) != root:
        raise AudioError(f"audio path escapes the audio root {root}", where=rel, field="audio_path")
    return Path(full)


def _decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode to float32 mono at the file's own rate; every failure is an AudioError."""
    p = Path(path)
    if not p.is_file():
        raise AudioError("audio file not found", where=str(p))
    if p.stat().st_size == 0:
        raise AudioError("audio file is empty (0 bytes)", where=str(p))
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot decode audio: {e}", where=str(p)) from None
    if sr <= 0:
        raise AudioError(f"invalid sampling rate {sr}", where=str(p))
    # Averaging channels keeps the level comparable to a mono recording of the same scene.
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def _validate(wave: np.ndarray, path: str | os.PathLike) -> None:
    if wave.size == 0:
        raise AudioError("audio has no samples", where=str(path))
    if not np.isfinite(wave).all():
        raise AudioError("audio contains NaN or infinite samples", where=str(path))
    if not np.any(wave):
        raise AudioError("audio is all zeros (silent)", where=str(path))


def load_audio(
    path: str | os.PathLike, sampling_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Decode `path` to a float32 mono waveform at `sampling_rate`, truncated to `max_seconds`.

    Raises AudioError naming the file when it is missing, undecodable, empty, non-finite or silent.
    """
    wave, sr = _decode(path)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sr))]  # cut before resampling: cheaper, same result
    _validate(wave, path)
    if sr != sampling_rate:
        wave = soxr.resample(wave, sr, sampling_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(wave, dtype=np.float32)


def check_audio(
    path: str | os.PathLike,
    *,
    max_seconds: float | None = None,
    long_audio_policy: Literal["truncate", "skip"] = "truncate",
) -> float:
    """Decode and check a clip; return its full measured duration in seconds.

    A clip longer than `max_seconds` raises AudioTooLongError under the `skip` policy; under
    `truncate` the part the model will actually hear must itself be non-silent.
    """
    wave, sr = _decode(path)
    _validate(wave, path)
    duration = wave.size / sr
    if max_seconds is not None and duration > max_seconds:
        if long_audio_policy == "skip":
            raise AudioTooLongError(
                f"clip is {duration:.2f} s, longer than max_seconds={max_seconds}", where=str(path)
            )
        _validate(wave[: int(round(max_seconds * sr))], path)
    return duration
