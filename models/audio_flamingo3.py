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

Shared with the other families: the Whisper features (`models._whisper`: window, token count, tiny
extractor) and the Qwen LLM (`models._qwen`: tokens, tokenizer, stops, LoRA target). Its own: the
`<sound>` token, its processor's encode (one clip per text, mixed batches) and the tiny config.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from models import _common, _qwen, _whisper

# Members this family shares with others, taken as they are (the family interface reads them here).
from models._qwen import TINY_TOKENIZERS, generation_config  # noqa: F401
from models._whisper import SAMPLING_RATE, max_audio_seconds, num_audio_tokens  # noqa: F401

# The family's declarations (models/interface.py). Qwen2-Audio declares many of the same values (this
# layout, LoRA target and ChatML), and each module states them anyway: they are data, read with the
# family, not logic to share (`duplicates` pairs the two blocks for that reason).
NAME = "audio_flamingo3"
MODEL_CLASS = "AudioFlamingo3ForConditionalGeneration"
MODEL_TYPES = ("audioflamingo3",)
HUB_ID_PATTERN = r"audio[-_]?flamingo[-_]?3"
# AF3 has no model-specific system prompt: its template falls back to the ChatML default.
SYSTEM_PROMPT = "You are a helpful assistant."
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<sound>"  # one per clip, expanded to one token per encoder frame (25 per second)
AUDIO_FEATURE_KEYS = ("input_features", "input_features_mask")
CHAT_TOKENS = (*_qwen.CHATML_TOKENS, AUDIO_PLACEHOLDER)
LORA_TARGET = {"target_modules": _qwen.LLM_LINEARS}
AUDIO_ENCODER = "model.audio_tower"
PROJECTOR = "model.multi_modal_projector"
LLM = "model.language_model"
FROZEN: tuple[str, ...] = ()

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

render = _common.renderer(CHAT_TEMPLATE)
load_processor = _common.processor_loader("AudioFlamingo3Processor", CHAT_TEMPLATE)
_checked_config = functools.partial(_common.checked_config, model_types=MODEL_TYPES, label="Audio Flamingo 3")
load_model = _common.model_loader(MODEL_CLASS, _checked_config)


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """vLLM serves AF3 checkpoints as we save them; on CPU the head size must be one it supports."""
    return _common.vllm_llm_problems(name_or_path, cpu=cpu)


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


TINY_WINDOW_SECONDS = 30  # the real window: the encoder's positions cover exactly one window
# The real AF3 tokenizer has seven added tokens after Qwen2.5's 22 (151665..151671), `<sound>` at
# 151669; the four before it are unused here, so tiny tokenizers fill them with reserved names to keep
# `<sound>` at its real id.
# The tiny AF-Whisper encoder, 2 layers and 64 wide (its config names the sizes the transformers way).
TINY_AUDIO = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
TINY_ADDED_TOKENS = (*_qwen.QWEN2_5_TOKENS, *(f"<|reserved_{i}|>" for i in range(4)), AUDIO_PLACEHOLDER)


def tiny_processor(folder: Path, tokenizer: str, window_seconds: int) -> Any:
    from transformers import AudioFlamingo3Processor

    tok = _qwen.build_tokenizer(folder, TINY_ADDED_TOKENS, {}, tokenizer)
    fe = _whisper.feature_extractor(window_seconds)
    return AudioFlamingo3Processor(fe, tok, chat_template=CHAT_TEMPLATE, audio_token=AUDIO_PLACEHOLDER)


def tiny_model(tokenizer: Any, window_seconds: int, head_dim: int | None) -> Any:
    """A 2-layer, 64-wide AF3 whose special-token ids come from `tokenizer`."""
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    text = _qwen.tiny_llm_config(
        tokenizer, _qwen.TINY_LLM, head_dim, model_type="qwen2", rope_parameters=rope
    )
    # The encoder's positions must cover one window exactly: 100 frames/s, halved by conv2.
    audio = {
        "model_type": "audioflamingo3_encoder",
        "num_mel_bins": 128,
        "max_source_positions": window_seconds * 50,
        **TINY_AUDIO,
    }
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER)
    config = AudioFlamingo3Config(audio_config=audio, text_config=text, audio_token_id=audio_token_id)
    return AudioFlamingo3ForConditionalGeneration(config)


make_tiny = _common.tiny_maker(__name__, TINY_WINDOW_SECONDS, tiny_processor, tiny_model)


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
