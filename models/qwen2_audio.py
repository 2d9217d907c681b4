"""Qwen2-Audio (Qwen/Qwen2-Audio-7B-Instruct): Whisper-style encoder -> linear projector -> Qwen2 LLM.

Module layout in transformers 5.23 (`Qwen2AudioForConditionalGeneration`):
  model.audio_tower            Qwen2AudioEncoder (its attention has q/k/v/out_proj: not LoRA targets)
  model.multi_modal_projector  one Linear(d_model -> hidden)
  model.language_model         Qwen2Model (layers.N.self_attn.{q,k,v,o}_proj, layers.N.mlp.{gate,up,down}_proj)
  lm_head                      untied output head
Audio: 16 kHz, 128 mel bins, a fixed 30 s window (the encoder requires mel length ==
2 x max_source_positions, so every clip is padded to the window); 25 `<|AUDIO|>` tokens per second.

Shared with the other families: the Whisper features (`models._whisper`: window, token count,
encode) and the Qwen LLM (`models._qwen`: tokens, tokenizer, stops, LoRA target). Its own: the
chat template, the loss normalisation of `load_model`, vLLM's window limit and the tiny config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import _common, _qwen, _whisper

# Members this family shares with others, taken as they are (the family interface reads them here).
from models._qwen import TINY_TOKENIZERS, generation_config  # noqa: F401
from models._whisper import SAMPLING_RATE, encode, max_audio_seconds, num_audio_tokens  # noqa: F401

# The family's declarations (models/interface.py). Audio Flamingo 3 declares many of the same values
# (its layout, LoRA target and ChatML are Qwen2-Audio's), and each module states them anyway: they are
# data, read with the family, not logic to share (`duplicates` pairs the two blocks for that reason).
NAME = "qwen2_audio"
MODEL_CLASS = "Qwen2AudioForConditionalGeneration"
MODEL_TYPES = ("qwen2_audio",)  # config.json `model_type` values this family loads
HUB_ID_PATTERN = r"qwen2[-_]?audio"  # how family_of() recognises a hub id with no local config
SYSTEM_PROMPT = "You are a helpful assistant."
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|AUDIO|>"  # expanded to one token per encoder frame (25 per second)
AUDIO_FEATURE_KEYS = ("input_features", "feature_attention_mask")
CHAT_TOKENS = _qwen.QWEN2_AUDIO_TOKENS
LORA_TARGET = {"target_modules": _qwen.LLM_LINEARS}
AUDIO_ENCODER = "model.audio_tower"
PROJECTOR = "model.multi_modal_projector"
LLM = "model.language_model"
FROZEN: tuple[str, ...] = ()

# The model's own template (as in Qwen2-Audio-7B-Instruct's chat_template.json), plus a
# `content['type'] == 'audio'` test like transformers' default. Used when a processor has none.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

render = _common.renderer(CHAT_TEMPLATE)
load_processor = _common.processor_loader("AutoProcessor", CHAT_TEMPLATE)


_load_checkpoint = _common.model_loader(MODEL_CLASS)


def load_model(
    name_or_path: str, *, dtype: Any, attn_implementation: str | None = None, trust_remote_code: bool = False
) -> Any:
    """Load Qwen2AudioForConditionalGeneration from a hub id or a local folder (safetensors only)."""
    model = _load_checkpoint(
        name_or_path,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    # Its forward takes **kwargs but computes its own mean loss; without this the HF Trainer passes
    # num_items_in_batch, assumes the model normalised by it, and the loss comes out multiplied by
    # the world size (and not divided by gradient accumulation).
    model.accepts_loss_kwargs = False
    return model


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """vLLM's Qwen2-Audio (0.32) takes 30 s windows only (3,000 mel frames, "input_features dim[2]
    expected 3000" otherwise), and on CPU a head size its attention supports."""
    problems = _common.vllm_llm_problems(name_or_path, cpu=cpu)
    window = max_audio_seconds(processor)
    if window != 30:
        problems.append(
            f"vLLM's Qwen2-Audio takes 30 s audio windows only; this checkpoint's is {window:g} s "
            "(tiny models: `--window_seconds 30`)"
        )
    return problems


# Tiny model: real architecture, toy sizes. A 10 s window keeps the mandatory full-window encoder
# pass cheap on CPU (chunk_length=10 -> 1000 mel frames == 2 x max_source_positions).
TINY_WINDOW_SECONDS = 10


def tiny_processor(folder: Path, tokenizer: str, window_seconds: int) -> Any:
    from transformers import Qwen2AudioProcessor

    tok = _qwen.build_tokenizer(folder, _qwen.QWEN2_AUDIO_TOKENS, _qwen.AUDIO_TOKENS, tokenizer)
    return Qwen2AudioProcessor(_whisper.feature_extractor(window_seconds), tok, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: Any, window_seconds: int, head_dim: int | None) -> Any:
    """A 2-layer, 64-wide Qwen2AudioConfig whose special-token ids come from `tokenizer`."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    text = Qwen2Config(**_qwen.tiny_llm_config(tokenizer, _qwen.TINY_LLM, head_dim))
    # 100 mel frames/s; conv2 halves them, so the position table covers window*50 frames.
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=128, max_source_positions=window_seconds * 50, **_whisper.TINY_ENCODER
    )
    return Qwen2AudioConfig(
        audio_config=audio.to_dict(),
        text_config=text.to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def tiny_model(tokenizer: Any, window_seconds: int, head_dim: int | None) -> Any:
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration(tiny_config(tokenizer, window_seconds, head_dim))


make_tiny = _common.tiny_maker(__name__, TINY_WINDOW_SECONDS, tiny_processor, tiny_model)

# Qwen/Qwen2-Audio-7B-Instruct's config.json (sizes the file leaves out are Qwen2Config's defaults:
# hidden 4096, 32 layers, 32 heads).
PUBLISHED_CONFIG = {
    "audio_config": {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": 128,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "d_model": 1280,
        "activation_function": "gelu",
        "scale_embedding": False,
        "max_source_positions": 1500,
    },
    "audio_token_index": 151646,
    "text_config": {
        "model_type": "qwen2",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "intermediate_size": 11008,
        "max_position_embeddings": 8192,
        "rope_theta": 10000,
        "rms_norm_eps": 1e-5,
        "sliding_window": 32768,
        "use_mrope": False,
        "vocab_size": 156032,
    },
    "vocab_size": 156032,
}


def published_config() -> Any:
    """Qwen2-Audio-7B-Instruct's architecture config (8.40 B parameters)."""
    from transformers import Qwen2AudioConfig

    return Qwen2AudioConfig(**PUBLISHED_CONFIG)
