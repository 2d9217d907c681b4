"""A fifth family joins by its module alone: a throwaway family written to a temporary folder named by
ART_FAMILY_PATH is listed by `models.list_families()` and passes the conformance suite
(tests/test_family_conformance.py), with no list, regex or bench edited.

The throwaway is a copy-with-differences of Qwen2-Audio, written the way a new module in models/
would be: it takes Qwen2-Audio's members where it shares them and declares its own name, model
type (a subclass of the architecture, registered with transformers), system prompt and a 4 s window.
The suite runs without its slow tests (2 DeepSpeed ranks, GRPO, merge), which the four real families
run; what they check does not depend on the family's name or model type.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "throwaway_audio_lm"

THROWAWAY_FAMILY = '''"""A throwaway family: Qwen2-Audio's architecture under the model type `throwaway_audio_lm`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from models import _common, qwen2_audio

# What it shares with Qwen2-Audio, taken as it is.
from models.qwen2_audio import (  # noqa: F401
    AUDIO_ENCODER,
    AUDIO_FEATURE_KEYS,
    AUDIO_PLACEHOLDER,
    CHAT_TEMPLATE,
    CHAT_TOKENS,
    FROZEN,
    LLM,
    LORA_TARGET,
    PROJECTOR,
    SAMPLING_RATE,
    TINY_TOKENIZERS,
    TURN_END_TOKEN,
    encode,
    generation_config,
    max_audio_seconds,
    num_audio_tokens,
    published_config,
    render,
    tiny_processor,
    vllm_problems,
)

NAME = "throwaway_audio_lm"
MODEL_CLASS = "ThrowawayAudioLM"
MODEL_TYPES = ("throwaway_audio_lm",)
HUB_ID_PATTERN = r"throwaway[-_]?audio"
SYSTEM_PROMPT = "You are a careful listener."


@functools.cache
def model_class() -> type:
    """Qwen2-Audio's model class under this family's model type (registered with AutoConfig)."""
    from transformers import AutoConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    class ThrowawayConfig(Qwen2AudioConfig):
        model_type = "throwaway_audio_lm"

    class ThrowawayAudioLM(Qwen2AudioForConditionalGeneration):
        config_class = ThrowawayConfig

    AutoConfig.register(ThrowawayConfig.model_type, ThrowawayConfig)
    return ThrowawayAudioLM


def load_model(
    name_or_path: str, *, dtype: Any, attn_implementation: str | None = None, trust_remote_code: bool = False
) -> Any:
    kwargs = {"dtype": _common.torch_dtype(dtype), "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = model_class().from_pretrained(name_or_path, **kwargs)
    model.accepts_loss_kwargs = False  # the same forward as Qwen2-Audio's: see models/qwen2_audio.py
    return model


load_processor = _common.processor_loader("Qwen2AudioProcessor", CHAT_TEMPLATE)


def tiny_model(tokenizer: Any, window_seconds: int, head_dim: int | None) -> Any:
    cls = model_class()
    config = qwen2_audio.tiny_config(tokenizer, window_seconds, head_dim).to_dict()
    config.pop("model_type")
    return cls(cls.config_class(**config))


make_tiny = _common.tiny_maker(__name__, 4, tiny_processor, tiny_model)
'''


def test_a_family_module_in_a_folder_runs_the_conformance_suite(tmp_path):
    folder = tmp_path / "families"
    folder.mkdir()
    (folder / f"{NAME}.py").write_text(THROWAWAY_FAMILY, encoding="utf-8")
    env = {**os.environ, "ART_FAMILY_PATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}

    listed = subprocess.run(
        [sys.executable, "-c", "from models import list_families; print(' '.join(list_families()))"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert NAME in listed.stdout.split(), listed.stdout

    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_family_conformance.py",
         "-k", NAME, "-m", "not slow"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else ""
    assert suite.returncode == 0, f"{suite.stdout[-4000:]}\n{suite.stderr[-3000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 8 and "failed" not in summary and "error" not in summary, (
        summary
    )
