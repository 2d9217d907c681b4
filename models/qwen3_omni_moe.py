"""Qwen3-Omni-30B-A3B (Instruct / Thinking / Captioner), thinker only: a mixture-of-experts LLM with
audio and vision encoders; the talker and code2wav (speech output) are never built.

Module layout in transformers 5.23 (`Qwen3OmniMoeThinkerForConditionalGeneration`):
  model.audio_tower            Qwen3OmniMoeAudioEncoder: conv2d stem, 32 layers (q/k/v/out_proj, fc1/fc2),
                               ln_post, then proj1 -> GELU -> proj2 (d_model -> LLM hidden)
  model.audio_tower.proj2      Linear(d_model -> LLM hidden): the projector we may train
  model.visual                 vision encoder (unused here; attn.qkv/proj, mlp.linear_fc1/fc2)
  model.language_model         48 decoder layers: self_attn.{q,k,v,o}_proj (+ q/k RMSNorm) and a sparse MoE
                               block: mlp.gate (router, Parameter (E, H)) and mlp.experts, whose 128
                               experts are two fused Parameters, gate_up_proj (E, 2*I, H) and down_proj (E, H, I)
  lm_head                      untied
Audio: 16 kHz, 128 mel bins, no window padding (a batch is padded to its longest clip); the encoder
works in 100-frame (1 s) chunks and gives 13 `<|audio_pad|>` tokens per second, between
`<|audio_start|>` and `<|audio_end|>`. Real checkpoints cut at 300 s (the extractor's n_samples).

LoRA (`LORA_TARGET`): attention q/k/v/o of every LLM layer, and every expert through PEFT's
`target_parameters` (`lora.ParamWrapper`: a rank-r pair per expert on the fused tensors; PEFT accepts
it only with lora_dropout 0). The router (`mlp.gate`) is never trained (`FROZEN`): a router update
changes which experts every token reaches. For this model type PEFT rewrites a regex
`target_modules` into bare leaf names, so an "LLM-only" regex also wraps the audio tower's
q/k/v_proj; the target is therefore an explicit name list with `exclude_modules` for both towers.
Router auxiliary loss: off (`output_router_logits=False`, as in the checkpoint, enforced by
`load_model`). With the router frozen, the load-balancing loss could only reach the LoRA weights
through the router's input, nudging hidden states toward balanced routing rather than toward the
task; and trl's GRPO loss never adds it, so SFT and GRPO optimise the same objective.

Loading a full Omni checkpoint (config.json `model_type: qwen3_omni_moe`, weights `thinker.*`,
`talker.*`, `code2wav.*`, experts stored one Linear per expert): `load_model` keeps `thinker_config`
and builds only the thinker; transformers' conversion for this class strips `thinker.`, moves the
text model under `model.language_model` and fuses the per-expert weights; talker/code2wav tensors
are unused keys and never materialised.

Processor: `Qwen3OmniMoeProcessor` requires an image and a video processor (torchvision).
`Qwen3OmniMoeAudioProcessor` below is that class with only a feature extractor and a tokenizer, and
one change: it pads a batch's audio to a multiple of the hop length. Unchanged, the extractor pads to
the longest clip and, when that length is not a multiple of 160 samples, drops the last mask frame,
so a clip's token count depended on the other clips of its batch (16,080 samples: 13 tokens alone,
14 next to a longer clip). Padding to the hop makes it a function of the clip alone
(`num_audio_tokens`). The model does not check the count (fewer placeholders than audio features
run silently), which is why models.inputs checks every batch against `num_audio_tokens`.

Chat template: our own ChatML rendering (`CHAT_TEMPLATE`), always, also for hub checkpoints (the
processor class has no built-in template). Qwen3-style checkpoint templates treat assistant turns
specially (they split a turn at `</think>` and re-emit or drop the reasoning), and a third-party report
says the Qwen3-Omni-Thinking template drops `<think>` content when message content is a list, as
ours always is; a training target must be rendered verbatim, so ours writes every text block as given
(tested with list content). Not verified against the hub file here (no download).

Shared with the other families: the Whisper feature extractor and encode (`models._whisper`), the
Qwen LLM and what both Omni thinkers share (`models._qwen`). Its own: the token layout, the
chunked token count, the LoRA target, the chat template and the tiny MoE config.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from models import _common, _qwen, _whisper

# Members this family shares with others, taken as they are (the family interface reads them here).
from models._qwen import TINY_TOKENIZERS, generation_config  # noqa: F401
from models._whisper import SAMPLING_RATE, encode, max_audio_seconds  # noqa: F401

# The family's declarations (models/interface.py). Qwen2.5-Omni's block has the same shape (the same
# members, its own token names): data read with the family, not logic to share (`duplicates` pairs the
# two blocks for that reason).
NAME = "qwen3_omni_moe"
MODEL_CLASS = "Qwen3OmniMoeThinkerForConditionalGeneration"
MODEL_TYPES = ("qwen3_omni_moe", "qwen3_omni_moe_thinker")  # a full Omni checkpoint, a thinker-only one
HUB_ID_PATTERN = r"qwen3[-_]?omni"
# The checkpoint's template adds no default system prompt and the model cards show none for
# audio understanding; data_prep needs one, so the plain ChatML default.
SYSTEM_PROMPT = "You are a helpful assistant."
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|audio_pad|>"  # expanded to one token per encoder frame (13 per second)
AUDIO_FEATURE_KEYS = ("input_features", "feature_attention_mask")
# Named tokens the processor reads from the tokenizer (as in the checkpoint's tokenizer_config.json).
OMNI_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
CHAT_TOKENS = (*_qwen.CHATML_TOKENS, *OMNI_TOKENS.values())
# Qwen3's added tokens after the 151,643 BPE entries, in order (ids 151643..151675): the Qwen2.5
# list, then Qwen3's tool/think tokens, then the Omni audio and TTS tokens.
ADDED_TOKENS = (
    *_qwen.QWEN2_5_TOKENS,
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
)
LORA_TARGET = {
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    # The audio tower also has q/k/v_proj; the vision tower none today, excluded all the same.
    "exclude_modules": r".*\.(?:audio_tower|visual)\..*",
    "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
}
AUDIO_ENCODER = "model.audio_tower"
# The encoder ends in proj1 -> GELU -> proj2; proj2 maps into the LLM's hidden size (like
# Qwen2.5-Omni's `proj`). Inside the encoder: unfrozen after AUDIO_ENCODER is frozen.
PROJECTOR = "model.audio_tower.proj2"
LLM = "model.language_model"
FROZEN: tuple[str, ...] = (r"language_model\.layers\.\d+\.mlp\.gate\.weight$",)

# ChatML in Qwen3-Omni's token layout; text blocks verbatim (see the module docstring).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Always this template, also for hub checkpoints (see the module docstring).
render = _common.renderer(CHAT_TEMPLATE, checkpoint_first=False)


@functools.cache
def processor_class() -> type:
    """`Qwen3OmniMoeAudioProcessor`: Qwen3OmniMoeProcessor with only a feature extractor and a
    tokenizer, padding audio to a multiple of the hop length (built on first use, so importing this
    module stays free of transformers)."""
    from transformers import Qwen3OmniMoeProcessor

    name = "Qwen3OmniMoeAudioProcessor"
    return _qwen.audio_only_omni_processor(
        Qwen3OmniMoeProcessor, name, __name__, OMNI_TOKENS, pad_to_hop=True
    )


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """Audio+text processor from the checkpoint's feature extractor and tokenizer (no torchvision),
    with this family's chat template (see the module docstring)."""
    processor = _qwen.load_omni_processor(
        processor_class(), name_or_path, trust_remote_code=trust_remote_code
    )
    processor.chat_template = CHAT_TEMPLATE
    return processor


def thinker_config(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """The thinker's config, from a full Omni checkpoint or a thinker-only one; router aux loss off."""
    config = _qwen.thinker_config(
        name_or_path, MODEL_TYPES, "Qwen3-Omni", trust_remote_code=trust_remote_code
    )
    config.text_config.output_router_logits = False  # see the module docstring
    return config


# Only the thinker is built, from a full Omni checkpoint or a thinker-only folder.
load_model = _common.model_loader(MODEL_CLASS, thinker_config)


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """Not served through vLLM here (see `models._qwen.omni_vllm_problems`)."""
    return _qwen.omni_vllm_problems("Qwen3-Omni")


def _conv_stem_tokens(frames: int) -> int:
    """Tokens of `frames` mel frames through the encoder's three stride-2 convolutions."""
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


def num_audio_tokens(processor: Any, n_samples: int) -> int:
    """`<|audio_pad|>` tokens for one clip: its L = ceil(n / hop) mel frames (our processor pads to a
    hop multiple) go through the encoder in chunks of 2 * n_window frames (100 = 1 s -> 13 tokens);
    the last, partial chunk through the same three stride-2 convolutions. No cap: the processor
    does not truncate (clips are cut to max_audio_seconds before)."""
    frames = -(-int(n_samples) // processor.feature_extractor.hop_length)
    chunk = 2 * processor.n_window
    full, rest = divmod(frames, chunk)
    return full * _conv_stem_tokens(chunk) + (_conv_stem_tokens(rest) if rest else 0)


TINY_WINDOW_SECONDS = 30  # max_audio_seconds of tiny models (the real extractor allows 300 s)
TINY_LLM = {
    **_qwen.TINY_LLM,
    "moe_intermediate_size": 32,
    "head_dim": 16,  # not derived from hidden/heads in this config class: give it explicitly
    "num_experts": 4,
    "num_experts_per_tok": 2,
}
TINY_AUDIO = {**_whisper.TINY_ENCODER, "downsample_hidden_size": 32}
TINY_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "deepstack_visual_indexes": [0],
    "num_position_embeddings": 64,
}
POSITION_ID_PER_SECONDS = 13  # the real thinker's value; the config class defaults to 2.5-Omni's 25


def tiny_processor(folder: Path, tokenizer: str, window_seconds: int) -> Any:
    tok = _qwen.build_tokenizer(folder, ADDED_TOKENS, OMNI_TOKENS, tokenizer)
    return processor_class()(_whisper.feature_extractor(window_seconds), tok, chat_template=CHAT_TEMPLATE)


def tiny_model(tokenizer: Any, window_seconds: int, head_dim: int | None) -> Any:
    """A 2-layer, 64-wide, 4-expert thinker whose special-token ids come from `tokenizer` (the window
    is the extractor's alone: the encoder works in chunks).

    Traps of Qwen3OmniMoeThinkerConfig: `head_dim` must be given, `vision_start_token_id` is not a
    declared field but the position code reads it, and the defaults carry Qwen2.5-Omni values
    (audio_token_id 151646, position_id_per_seconds 25).
    """
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    hidden = TINY_LLM["hidden_size"]
    rope = {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": _mrope(_common.with_head_dim(TINY_LLM, head_dim)["head_dim"]),
        "interleaved": True,
        "mrope_interleaved": True,
    }
    audio = {
        "num_mel_bins": 128,
        "n_window": 50,
        "n_window_infer": 800,
        "conv_chunksize": 500,
        "max_source_positions": 1500,
        "output_dim": hidden,
    }
    config = Qwen3OmniMoeThinkerConfig(
        audio_config={**audio, **TINY_AUDIO},
        vision_config={"out_hidden_size": hidden, **TINY_VISION},
        text_config=_qwen.tiny_llm_config(tokenizer, TINY_LLM, head_dim, rope_parameters=rope),
        **_qwen.omni_token_ids(tokenizer, OMNI_TOKENS, "_id"),
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        tie_word_embeddings=False,
    )
    return Qwen3OmniMoeThinkerForConditionalGeneration(config)


make_tiny = _common.tiny_maker(__name__, TINY_WINDOW_SECONDS, tiny_processor, tiny_model)


def published_config() -> Any:
    """The published Qwen3-Omni-30B-A3B thinker sizes (its config.json), for parameter and memory
    estimates without downloading: 31.72 B parameters, 28.99 B of them experts."""
    from transformers import Qwen3OmniMoeThinkerConfig

    text = {
        "vocab_size": 152064,
        "hidden_size": 2048,
        "intermediate_size": 768,
        "moe_intermediate_size": 768,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "max_position_embeddings": 65536,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [24, 20, 20],
            "interleaved": True,
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
    }
    audio = {
        "d_model": 1280,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "output_dim": 2048,
        "downsample_hidden_size": 480,
        "n_window": 50,
        "n_window_infer": 800,
    }
    vision = {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "deepstack_visual_indexes": [8, 16, 24],
        "num_position_embeddings": 2304,
    }
    return Qwen3OmniMoeThinkerConfig(
        text_config=text,
        audio_config=audio,
        vision_config=vision,
        audio_token_id=151675,
        image_token_id=151655,
        video_token_id=151656,
        audio_start_token_id=151669,
        audio_end_token_id=151670,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        tie_word_embeddings=False,
    )


def _mrope(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) in the real 24:20:20 proportion."""
    half = head_dim // 2
    t = half * 24 // 64
    h = (half - t) // 2
    return [t, h, half - t - h]
