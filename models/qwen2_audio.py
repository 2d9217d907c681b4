"""Qwen2-Audio (Qwen/Qwen2-Audio-7B-Instruct): Whisper-style encoder -> linear projector -> Qwen2 LLM.

Module layout in transformers 5.23 (`Qwen2AudioForConditionalGeneration`):
  model.audio_tower            Qwen2AudioEncoder (its attention has q/k/v/out_proj: not LoRA targets)
  model.multi_modal_projector  one Linear(d_model -> hidden)
  model.language_model         Qwen2Model (layers.N.self_attn.{q,k,v,o}_proj, layers.N.mlp.{gate,up,down}_proj)
  lm_head                      untied output head
Audio: 16 kHz, 128 mel bins, a fixed 30 s window (the encoder requires mel length ==
2 x max_source_positions, so every clip is padded to the window); 25 `<|AUDIO|>` tokens per second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import _common, _qwen

NAME = "qwen2_audio"
MODEL_CLASS = "Qwen2AudioForConditionalGeneration"
MODEL_TYPES = ("qwen2_audio",)  # config.json `model_type` values this family loads
HUB_ID_PATTERN = r"qwen2[-_]?audio"  # how family_of() recognises a hub id with no local config
SYSTEM_PROMPT = "You are a helpful assistant."
SAMPLING_RATE = 16000
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|AUDIO|>"  # expanded to one token per encoder frame (25 per second)
AUDIO_FEATURE_KEYS = ("input_features", "feature_attention_mask")
# PEFT full-matches this against module names; `language_model` keeps it off the audio encoder,
# whose attention also has q_proj/k_proj/v_proj.
_LLM_LINEARS = r".*\.language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
LORA_TARGET = {"target_modules": _LLM_LINEARS}
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

# Tiny model: real architecture, toy sizes. A 10 s window keeps the mandatory full-window encoder
# pass cheap on CPU (chunk_length=10 -> 1000 mel frames == 2 x max_source_positions).
TINY_WINDOW_SECONDS = 10
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY_AUDIO = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128}


def load_model(
    name_or_path: str, *, dtype: Any, attn_implementation: str | None = None, trust_remote_code: bool = False
) -> Any:
    """Load Qwen2AudioForConditionalGeneration from a hub id or a local folder (safetensors only)."""
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(
        name_or_path, **_common.from_pretrained_kwargs(dtype, attn_implementation, trust_remote_code)
    )
    # Its forward takes **kwargs but computes its own mean loss; without this the HF Trainer passes
    # num_items_in_batch, assumes the model normalised by it, and the loss comes out multiplied by
    # the world size (and not divided by gradient accumulation).
    model.accepts_loss_kwargs = False
    return model


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """Load the checkpoint's Qwen2AudioProcessor (Whisper feature extractor + Qwen2 tokenizer)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if processor.chat_template is None:
        processor.chat_template = CHAT_TEMPLATE
    return processor


def max_audio_seconds(processor: Any) -> float:
    """The encoder window: longer clips are cut by the feature extractor (30 s for the real model)."""
    fe = processor.feature_extractor
    return fe.n_samples / fe.sampling_rate


def num_audio_tokens(processor: Any, n_samples: int) -> int:
    """`<|AUDIO|>` tokens the processor expands a clip of `n_samples` (16 kHz) into: 25 per second."""
    return _common.pooled_whisper_tokens(processor.feature_extractor, n_samples)


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


def generation_config(tokenizer: Any) -> Any:
    """Greedy; stops on <|im_end|> (and <|endoftext|>)."""
    return _qwen.generation_config_for(tokenizer)


def render(processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Prompt text in the model's ChatML layout, one `Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>` line per clip."""
    return _common.render_chat(
        processor, messages, add_generation_prompt=add_generation_prompt, default_template=CHAT_TEMPLATE
    )


def encode(
    processor: Any, texts: list[str], audios: list[Any] | None, *, padding_side: str
) -> dict[str, Any]:
    """Tokenize rendered texts and extract 16 kHz log-mel features; `<|AUDIO|>` is expanded to one
    token per encoder output frame. Returns input_ids, attention_mask and, with audio,
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
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    tokenizer = _qwen.build_qwen2_tokenizer(
        out_dir / "_tokenizer_src", _qwen.QWEN2_AUDIO_SPECIALS, dict(_qwen.AUDIO_TOKENS), tokenizer_source
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
    return Qwen2AudioProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def tiny_config(
    tokenizer: Any, window_seconds: int = TINY_WINDOW_SECONDS, head_dim: int | None = None
) -> Any:
    """A 2-layer, 64-wide Qwen2AudioConfig whose special-token ids come from `tokenizer`."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = Qwen2Config(
        vocab_size=_qwen.padded_vocab_size(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=eot,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=eot,
        tie_word_embeddings=False,
        **_common.with_head_dim(TINY_TEXT, head_dim),
    )
    # 100 mel frames/s; conv2 halves them, so the position table covers window*50 frames.
    audio = Qwen2AudioEncoderConfig(num_mel_bins=128, max_source_positions=window_seconds * 50, **TINY_AUDIO)
    return Qwen2AudioConfig(
        audio_config=audio.to_dict(),
        text_config=text.to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        pad_token_id=eot,
    )


def make_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    tokenizer: str = "auto",
    window_seconds: int | None = None,
    head_dim: int | None = None,
) -> None:
    """Save a randomly initialised tiny Qwen2-Audio + processor to `out_dir`, then reload it through
    `load_model`/`load_processor` as a check.

    `window_seconds` (default TINY_WINDOW_SECONDS) is the longest clip the tiny model hears;
    `head_dim` (default 16) the width of its LLM's attention heads."""
    import sys

    from transformers import Qwen2AudioForConditionalGeneration

    window = window_seconds or TINY_WINDOW_SECONDS
    _common.save_tiny(
        out_dir,
        seed=seed,
        family=sys.modules[__name__],
        build_processor=lambda folder: _tiny_processor(folder, tokenizer, window),
        build_model=lambda processor: Qwen2AudioForConditionalGeneration(
            tiny_config(processor.tokenizer, window, head_dim)
        ),
    )


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
