"""Audio Flamingo 3 (nvidia/audio-flamingo-3-hf): AF-Whisper encoder -> 2-layer MLP projector -> Qwen2.5-7B.

Module layout in transformers 5.23 (`AudioFlamingo3ForConditionalGeneration`):
  model.audio_tower            AudioFlamingo3Encoder (Whisper-style: conv1/conv2, layers.N.self_attn.
                               {q,k,v,out}_proj, fc1/fc2, then 2x average pooling and a LayerNorm)
  model.multi_modal_projector  linear_1 -> GELU -> linear_2 (encoder width -> LLM hidden)
  model.language_model         Qwen2Model (layers.N.self_attn.{q,k,v,o}_proj, layers.N.mlp.{gate,up,down}_proj)
  lm_head                      untied
Audio: 16 kHz, 128 mel bins, 30 s windows: every window is padded to 3,000 frames (the encoder adds
its 1,500 position embeddings to the full window). The processor cuts a longer clip into windows
(up to 600 s), so `input_features` has one row per window, not per clip; we keep one window per
clip (`max_audio_seconds` = the window), so the rows are the clips. One `<sound>` placeholder per
clip becomes 25 tokens per second: L = ceil(n / 160) valid frames, ((L - 1) // 2 + 1 - 2) // 2 + 1.
The model checks that the placeholder count equals its audio features (a mismatch raises).

The processor's `output_labels=True` masks only audio and padding, not the prompt; labels come from
models.inputs (assistant turn only), never from the processor.

Chat template: the checkpoint's processor template (ChatML; "You are a helpful assistant." when a
conversation has no system message; the `<sound>` placeholder goes before the message's text,
whatever the block order). `CHAT_TEMPLATE` renders the same layout for processors that have none,
with one `<sound>` per audio block (the hub template writes one per message, which cannot match a
message with two clips).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import _common, _qwen

NAME = "audio_flamingo3"
MODEL_CLASS = "AudioFlamingo3ForConditionalGeneration"
MODEL_TYPES = ("audioflamingo3",)
HUB_ID_PATTERN = r"audio[-_]?flamingo[-_]?3"
# AF3 has no model-specific system prompt: its template falls back to the ChatML default.
SYSTEM_PROMPT = "You are a helpful assistant."
SAMPLING_RATE = 16000
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<sound>"  # expanded to one token per encoder frame (25 per second)
AUDIO_FEATURE_KEYS = ("input_features", "input_features_mask")
# PEFT full-matches this against module names; `language_model` keeps it off the audio encoder,
# whose attention also has q_proj/k_proj/v_proj.
_LLM_LINEARS = r".*\.language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
LORA_TARGET = {"target_modules": _LLM_LINEARS}
AUDIO_ENCODER = "model.audio_tower"
PROJECTOR = "model.multi_modal_projector"
LLM = "model.language_model"
FROZEN: tuple[str, ...] = ()

# Qwen2.5's added tokens (ids 151643..151664, in order). The real AF3 tokenizer has seven more
# (151665..151671) with `<sound>` at 151669; the four before it are unused here, so tiny tokenizers
# fill them with reserved names to keep `<sound>` at its real id.
QWEN2_5_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
TINY_SPECIALS = QWEN2_5_SPECIALS + [f"<|reserved_{i}|>" for i in range(4)] + [AUDIO_PLACEHOLDER]

# ChatML as the checkpoint's processor template renders it (see the module docstring).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages if message['content'] is not none %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}<sound>{% endif %}"
    "{% endfor %}{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_WINDOW_SECONDS = 30  # the real window: the encoder's positions cover exactly one window
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY_AUDIO = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """vLLM serves AF3 checkpoints as we save them; on CPU the head size must be one it supports."""
    return _common.vllm_llm_problems(name_or_path, cpu=cpu)


def load_model(
    name_or_path: str, *, dtype: Any, attn_implementation: str | None = None, trust_remote_code: bool = False
) -> Any:
    """Load AudioFlamingo3ForConditionalGeneration from a hub id or a local folder (safetensors only)."""
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if config.model_type not in MODEL_TYPES:
        raise ValueError(
            f"{name_or_path}: model_type {config.model_type!r} is not an Audio Flamingo 3 checkpoint"
        )
    kwargs = _common.from_pretrained_kwargs(dtype, attn_implementation, trust_remote_code)
    return AudioFlamingo3ForConditionalGeneration.from_pretrained(name_or_path, config=config, **kwargs)


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """The checkpoint's AudioFlamingo3Processor (WhisperFeatureExtractor + Qwen2 tokenizer)."""
    from transformers import AudioFlamingo3Processor

    processor = AudioFlamingo3Processor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if not getattr(processor, "chat_template", None):
        processor.chat_template = CHAT_TEMPLATE
    return processor


def max_audio_seconds(processor: Any) -> float:
    """One encoder window (30 s for the real model): longer clips are cut, so one feature row per clip."""
    return float(processor.feature_extractor.chunk_length)


def num_audio_tokens(processor: Any, n_samples: int) -> int:
    """`<sound>` tokens for one clip of at most one window (25 per second)."""
    return _common.pooled_whisper_tokens(processor.feature_extractor, n_samples)


def generation_config(tokenizer: Any) -> Any:
    """Greedy; stops on <|im_end|> (the turn end) and <|endoftext|>."""
    return _qwen.generation_config_for(tokenizer)


def render(processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Prompt text in AF3's ChatML layout: `<sound>` then the message's text."""
    return _common.render_chat(
        processor, messages, add_generation_prompt=add_generation_prompt, default_template=CHAT_TEMPLATE
    )


def encode(
    processor: Any, texts: list[str], audios: list[Any] | None, *, padding_side: str
) -> dict[str, Any]:
    """Tokenize + extract features; returns input_ids, attention_mask and, with audio,
    input_features (clips, 128, 3000) and input_features_mask (clips, 3000).

    Samples without a clip (text-only) may sit in the same batch as samples with one."""
    with_clip = [i for i, text in enumerate(texts) if AUDIO_PLACEHOLDER in text]
    if audios and len(with_clip) < len(texts):
        return _encode_mixed(processor, texts, list(audios), with_clip, padding_side)
    return _encode_paired(processor, texts, audios, padding_side)


def _encode_paired(
    processor: Any, texts: list[str], audios: list[Any] | None, padding_side: str
) -> dict[str, Any]:
    # No top-level `padding`: it would reach the feature extractor too, which must pad every clip to
    # the full window (the processor pads the text by default).
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding_side": padding_side}
    if audios:
        if len(audios) != len(texts):
            # AudioFlamingo3Processor pairs texts and clips one to one.
            raise ValueError(
                f"{NAME}: the processor takes exactly one clip per sample; got {len(texts)} samples "
                f"and {len(audios)} clips"
            )
        kwargs["audio"] = list(audios)
        kwargs["sampling_rate"] = SAMPLING_RATE
    out = dict(processor(**kwargs))
    out.pop("num_audio_tokens", None)  # bookkeeping output the forward does not take
    return out


def _encode_mixed(
    processor: Any, texts: list[str], audios: list[Any], with_clip: list[int], padding_side: str
) -> dict[str, Any]:
    """A batch where some samples have a clip and some have none. The processor pairs texts and clips
    one to one, so the two kinds are encoded apart, then their unpadded token rows are padded
    together again in the batch's order (the clips' features keep theirs)."""
    without = [i for i in range(len(texts)) if i not in with_clip]
    encoded = {
        "clip": _encode_paired(processor, [texts[i] for i in with_clip], audios, padding_side),
        "text": _encode_paired(processor, [texts[i] for i in without], None, padding_side),
    }
    rows: dict[int, list[int]] = {}
    for kind, indices in (("clip", with_clip), ("text", without)):
        ids, mask = encoded[kind]["input_ids"], encoded[kind]["attention_mask"].bool()
        rows.update({i: ids[r][mask[r]].tolist() for r, i in enumerate(indices)})
    padded = processor.tokenizer.pad(
        {"input_ids": [rows[i] for i in range(len(texts))]},
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )
    features = {k: v for k, v in encoded["clip"].items() if k not in ("input_ids", "attention_mask")}
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"], **features}


def _tiny_processor(out_dir: Path, tokenizer_source: str, window_seconds: int) -> Any:
    from transformers import AudioFlamingo3Processor, WhisperFeatureExtractor

    tokenizer = _qwen.build_qwen2_tokenizer(out_dir / "_tokenizer_src", TINY_SPECIALS, {}, tokenizer_source)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=window_seconds,
        padding_value=0.0,
        return_attention_mask=True,
    )
    return AudioFlamingo3Processor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        audio_token=AUDIO_PLACEHOLDER,
    )


def tiny_config(
    tokenizer: Any, window_seconds: int = TINY_WINDOW_SECONDS, head_dim: int | None = None
) -> Any:
    """A 2-layer, 64-wide AF3 config whose special-token ids come from `tokenizer`."""
    from transformers import AudioFlamingo3Config

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    text = {
        "model_type": "qwen2",
        "vocab_size": _qwen.padded_vocab_size(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "bos_token_id": eot,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": eot,
        "tie_word_embeddings": False,
        **_common.with_head_dim(TINY_TEXT, head_dim),
    }
    # The encoder's positions must cover one window exactly: 100 frames/s, halved by conv2.
    audio = {
        "model_type": "audioflamingo3_encoder",
        "num_mel_bins": 128,
        "max_source_positions": window_seconds * 50,
        **TINY_AUDIO,
    }
    return AudioFlamingo3Config(audio_config=audio, text_config=text, audio_token_id=ids(AUDIO_PLACEHOLDER))


def published_config() -> Any:
    """nvidia/audio-flamingo-3-hf's sizes (the default encoder is AF3's; the LLM is Qwen2.5-7B with
    AF3's 151,672-row vocabulary), for parameter and memory estimates without downloading."""
    from transformers import AudioFlamingo3Config

    text = {
        "model_type": "qwen2",
        "vocab_size": 151672,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": False,
    }
    return AudioFlamingo3Config(text_config=text, audio_token_id=151669)


def make_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    tokenizer: str = "auto",
    window_seconds: int | None = None,
    head_dim: int | None = None,
) -> None:
    """Save a randomly initialised tiny AF3 + processor to `out_dir`, then reload it through
    `load_model`/`load_processor` as a check.

    `window_seconds` (default TINY_WINDOW_SECONDS) is the longest clip the tiny model hears;
    `head_dim` (default 16) the width of its LLM's attention heads."""
    import sys

    from transformers import AudioFlamingo3ForConditionalGeneration

    window = window_seconds or TINY_WINDOW_SECONDS
    _common.save_tiny(
        out_dir,
        seed=seed,
        family=sys.modules[__name__],
        build_processor=lambda folder: _tiny_processor(folder, tokenizer, window),
        build_model=lambda processor: AudioFlamingo3ForConditionalGeneration(
            tiny_config(processor.tokenizer, window, head_dim)
        ),
    )
