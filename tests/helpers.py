"""Plain helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), where outgoing connections on a busy
    machine cannot grab it between this check and the rank binding it."""
    for _ in range(100):
        port = random.randint(20000, 29999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


def text_only_copy(row: dict, suffix: str = "#text") -> dict:
    """A sample row without its audio, as data_prep writes a text-only item: no audio block,
    `audio_path` and `audio_duration` None (the user text keeps its wording)."""
    import copy

    out = copy.deepcopy(row)
    out["id"] = f"{row['id']}{suffix}"
    out["audio_path"] = out["audio_duration"] = None
    for message in out["messages"]:
        if not isinstance(message["content"], str):
            message["content"] = [b for b in message["content"] if b.get("type") != "audio"]
    return out


def vllm_missing() -> str | None:
    """Why the tests that need real vLLM skip (its venv is absent), or None to run them. Under
    ART_REQUIRE_VLLM=1 (`make test`, after installing the venv) they run and fail instead."""
    import os

    from common import vllm_server

    if os.environ.get("ART_REQUIRE_VLLM") == "1":
        return None
    try:
        vllm_server.vllm_python()
    except vllm_server.VLLMError:
        return "vLLM venv absent (make vllm); `make test` installs it and requires these tests"
    return None


def grpo_test_config(
    model_dir=".", dataset_dir=".", out=".", *, training=None, grpo=None, lora=None, data=None
):
    """A GRPO TrainConfig for the tiny models: eager attention, LoRA r8, a constant learning rate,
    logging every step; `training`, `grpo`, `lora` and `data` add or override keys."""
    from common.config import config_from_dict
    from train.config import TrainConfig

    return config_from_dict(
        TrainConfig,
        {
            "model": {"model_name_or_path": str(model_dir), "attn_implementation": "eager"},
            "data": {"dataset_dir": str(dataset_dir), "max_length": 1024, **(data or {})},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, **(lora or {})},
            "training": {
                "output_dir": str(out),
                "method": "grpo",
                "logging_steps": 1,
                "save_steps": 1000,
                "lr_scheduler_type": "constant",
                "warmup_ratio": 0.0,
                **(training or {}),
            },
            "grpo": grpo or {},
        },
    )
