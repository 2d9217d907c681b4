"""Shared fixtures: everything is built locally (tiny models, synthetic audio), nothing downloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# No network: hubs offline, W&B offline. Set before any library reads them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common.paths import shared_dir, shared_mmar_meta  # noqa: E402
from models._qwen import shared_tokenizer_dir  # noqa: E402


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mmar_meta() -> Path:
    path = shared_mmar_meta()
    if path is None:
        pytest.skip(f"real MMAR metadata not found under {shared_dir()} (set ART_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def qwen2_tokenizer_dir() -> Path:
    path = shared_tokenizer_dir()
    if path is None:
        pytest.skip(f"real Qwen2 tokenizer files not found under {shared_dir()}")
    return path


def _make_tiny(family: str, tmp_path_factory, tokenizer: str = "auto") -> Path:
    from models import get_family

    out = tmp_path_factory.mktemp(f"tiny-{family}-{tokenizer}")
    get_family(family).make_tiny(out, seed=0, tokenizer=tokenizer)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2_audio(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Qwen2-Audio saved with save_pretrained."""
    return _make_tiny("qwen2_audio", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_qwen2_audio_fast(tmp_path_factory) -> Path:
    """The same tiny Qwen2-Audio with the small local tokenizer (1k vocab instead of 151k).

    For multi-process training/eval tests, where the real vocabulary's LM head is ~99% of the
    compute; the real-tokenizer layout is covered by the family and collator tests.
    """
    return _make_tiny("qwen2_audio", tmp_path_factory, tokenizer="local")


@pytest.fixture(scope="session")
def tiny_qwen2_5_omni(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Qwen2.5-Omni thinker saved with save_pretrained."""
    return _make_tiny("qwen2_5_omni", tmp_path_factory)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic benchmark (meta.jsonl + audio/) in the MMAR schema."""
    from data_prep.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, n=120, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_synth(synth_dir, tmp_path_factory) -> Path:
    """`synth_dir` prepared with the cot template for Qwen2-Audio; returns the dataset dir."""
    from data_prep.prepare import run

    out = tmp_path_factory.mktemp("prepared")
    return run(
        [
            "--config",
            str(REPO / "configs/data/synth_cot.yaml"),
            "--source.path",
            str(synth_dir / "meta.jsonl"),
            "--audio_root",
            str(synth_dir),
            "--out_dir",
            str(out),
        ]
    )
