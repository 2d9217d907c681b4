"""Shared plumbing for the benchmarks: CLI flags, a work folder, tiny model and data, output.

Every bench prints a readable table and, as its last line, one JSON object with its figures, so a
script (tests/test_bench.py, the README) can parse `stdout.splitlines()[-1]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.paths import REPO_ROOT

# Offline and quiet, as in tests/conftest.py: a bench never downloads anything.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

SYNTH_CONFIG = REPO_ROOT / "configs" / "data" / "synth_cot.yaml"


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """`--quick` (a smaller run for the smoke test), `--workdir` (keep the files there) and `--seed`,
    plus whatever `add_arguments` adds for one bench."""
    parser = argparse.ArgumentParser(description=description)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="smaller run (used by tests/test_bench.py)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep model/data here (default: temp)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and model")
    return parser.parse_args(argv)


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """The given folder (created, kept), or a temporary one removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="art-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def real_tokenizer_if_present() -> str:
    """ "qwen2" (the real 151,680-token vocabulary from ../shared) when present, else "local" (1k)."""
    from models._qwen import shared_tokenizer_dir

    return "qwen2" if shared_tokenizer_dir() is not None else "local"


def tiny_model(work: Path, seed: int = 0, tokenizer: str = "auto") -> Path:
    """The tiny random Qwen2-Audio built by its family module (reused when already there).

    `tokenizer="local"` (1k vocab) for speed benches: with the real 151k vocabulary the LM head of a
    64-wide model is ~99% of its compute, a profile no real checkpoint has (at 7B the transformer
    body dominates). Token-count benches keep the real tokenizer.
    """
    from models import get_family

    out = work / f"tiny-qwen2-audio-{tokenizer}"
    if not (out / "config.json").exists():
        get_family("qwen2_audio").make_tiny(out, seed=seed, tokenizer=tokenizer)
    return out


def synth_dataset(work: Path, n: int, seed: int = 0, *extra: str, out_dir: Path | None = None) -> Path:
    """`n` synthetic items (data_prep.synth) prepared by data_prep.prepare; returns the dataset dir.

    `extra` are further data_prep flags; `out_dir` defaults to `<work>/prepared`.
    """
    from data_prep.prepare import run
    from data_prep.synth import generate

    src = work / f"synth-{n}-{seed}"
    if not (src / "meta.jsonl").exists():
        generate(src, n=n, seed=seed)
    return run(
        [
            "--config", str(SYNTH_CONFIG),
            "--source.path", str(src / "meta.jsonl"),
            "--audio_root", str(src),
            "--out_dir", str(out_dir or work / "prepared"),
            "--seed", str(seed),
            *extra,
        ]
    )  # fmt: skip


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A markdown table (floats to 3 decimals), readable in a terminal and pastable into a README."""

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


def emit(result: dict) -> None:
    """The bench's figures as one JSON object on the last line of stdout."""
    print(json.dumps(result, sort_keys=False), flush=True)
