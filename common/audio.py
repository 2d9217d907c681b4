"""Decode an audio file into the waveform a model's feature extractor takes.

`load_audio` is what the model-input code (training collator, prompts for generation) and data_prep's
checks call: decode (WAV/FLAC/OGG/MP3 through libsndfile), downmix to mono, resample with soxr,
optionally truncate. Every failure is an `AudioError` naming the file and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from common.errors import AudioError


def decode_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode to float32 mono at the file's own rate; every failure is an AudioError."""
    p = Path(path)
    try:
        found = p.is_file()
        size = p.stat().st_size if found else 0
    except OSError as e:  # e.g. a name longer than the filesystem allows (ENAMETOOLONG)
        raise AudioError(f"cannot open audio file: {e.strerror or e}", where=str(p)[:300]) from None
    if not found:
        raise AudioError("audio file not found", where=str(p))
    if size == 0:
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


def validate_audio(wave: np.ndarray, path: str | os.PathLike) -> None:
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
    wave, sr = decode_audio(path)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sr))]  # cut before resampling: cheaper, same result
    validate_audio(wave, path)
    if sr != sampling_rate:
        wave = soxr.resample(wave, sr, sampling_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(wave, dtype=np.float32)
