"""The audio checks run before training.

`load_audio` (decode, downmix, resample, truncate) lives in `common.audio`, shared with the model-input
code and eval; it is re-exported here. `check_audio` decodes a clip once and
rejects what would silently poison training: missing, unreadable, empty, NaN/inf, all-zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from common.audio import decode_audio, load_audio, validate_audio
from common.errors import AudioError, AudioTooLongError

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
    wave, sr = decode_audio(path)
    validate_audio(wave, path)
    duration = wave.size / sr
    if max_seconds is not None and duration > max_seconds:
        if long_audio_policy == "skip":
            raise AudioTooLongError(
                f"clip is {duration:.2f} s, longer than max_seconds={max_seconds}", where=str(path)
            )
        validate_audio(wave[: int(round(max_seconds * sr))], path)
    return duration
