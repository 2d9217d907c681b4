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

Shared with the other families: the Whisper features (`models._whisper`), the Qwen LLM and what both
Omni thinkers share (`models._qwen`). Its own: the token names, the chat template (the checkpoint's
first), and the tiny thinker config.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from models import _common, _qwen, _whisper

# Members this family shares with others, taken as they are (the family interface reads them here).
from models._qwen import TINY_TOKENIZERS, generation_config  # noqa: F401
from models._whisper import SAMPLING_RATE, encode, max_audio_seconds, num_audio_tokens  # noqa: F401

# The family's declarations (models/interface.py). Qwen3-Omni's block has the same shape (the same
# members, its own token names): data read with the family, not logic to share (`duplicates` pairs the
# two blocks for that reason).
NAME = "qwen2_5_omni"
MODEL_CLASS = "Qwen2_5OmniThinkerForConditionalGeneration"
MODEL_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker")  # a full Omni checkpoint, a thinker-only one
HUB_ID_PATTERN = r"qwen2\.?5[-_]?omni"
SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
TURN_END_TOKEN = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|AUDIO|>"  # expanded to one token per encoder frame (25 per second)
AUDIO_FEATURE_KEYS = ("input_features", "feature_attention_mask")
# The processor's named tokens (Qwen2-Audio's audio tokens and the renamed vision ones).
OMNI_TOKENS = {
    **_qwen.AUDIO_TOKENS,
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
CHAT_TOKENS = (*_qwen.CHATML_TOKENS, *OMNI_TOKENS.values())
LORA_TARGET = {"target_modules": _qwen.LLM_LINEARS}
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

render = _common.renderer(CHAT_TEMPLATE)


@functools.cache
def processor_class() -> type:
    """`Qwen2_5OmniAudioProcessor`: Qwen2_5OmniProcessor with only a feature extractor and a tokenizer
    (built on first use, so importing this module stays free of transformers)."""
    from transformers import Qwen2_5OmniProcessor

    return _qwen.audio_only_omni_processor(
        Qwen2_5OmniProcessor, "Qwen2_5OmniAudioProcessor", __name__, OMNI_TOKENS
    )


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """Audio+text processor from the checkpoint's feature extractor and tokenizer (no torchvision),
    with the checkpoint's chat template when it has one."""
    processor = _qwen.load_omni_processor(
        processor_class(), name_or_path, trust_remote_code=trust_remote_code
    )
    own = getattr(processor.tokenizer, "chat_template", None)
    processor.chat_template = _read_chat_template(name_or_path) or own or CHAT_TEMPLATE
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


def thinker_config(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """The thinker's config, from either a full Omni checkpoint or a thinker-only one."""
    return _qwen.thinker_config(
        name_or_path, MODEL_TYPES, "Qwen2.5-Omni", trust_remote_code=trust_remote_code
    )


# Only the thinker is built, from a full Omni checkpoint or a thinker-only folder.
load_model = _common.model_loader(MODEL_CLASS, thinker_config)


def vllm_problems(name_or_path: str, processor: Any, *, cpu: bool) -> list[str]:
    """Not served through vLLM here (see `models._qwen.omni_vllm_problems`)."""
    return _qwen.omni_vllm_problems("Qwen2.5-Omni")


TINY_WINDOW_SECONDS = 10  # the real extractor pads to 300 s; 10 s keeps tiny batches small
TINY_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "fullatt_block_indexes": [0],
}


def tiny_processor(folder: Path, tokenizer: str, window_seconds: int) -> Any:
    tok = _qwen.build_tokenizer(folder, _qwen.QWEN2_5_OMNI_TOKENS, OMNI_TOKENS, tokenizer)
    return processor_class()(_whisper.feature_extractor(window_seconds), tok, chat_template=CHAT_TEMPLATE)


def tiny_model(tokenizer: Any, window_seconds: int, head_dim: int | None) -> Any:
    """A 2-layer, 64-wide thinker whose special-token ids come from `tokenizer` (the window is the
    extractor's alone: the encoder works in chunks)."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    hidden = _qwen.TINY_LLM["hidden_size"]
    sizes = _common.with_head_dim(_qwen.TINY_LLM, head_dim)
    rope = {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": _mrope(hidden // sizes["num_attention_heads"]),
    }
    text = _qwen.tiny_llm_config(tokenizer, _qwen.TINY_LLM, head_dim, rope_parameters=rope)
    audio = {"num_mel_bins": 128, "n_window": 100, "max_source_positions": 1500, "output_dim": hidden}
    config = Qwen2_5OmniThinkerConfig(
        audio_config={**audio, **_whisper.TINY_ENCODER},
        vision_config={"out_hidden_size": hidden, **TINY_VISION},
        text_config=text,
        **_qwen.omni_token_ids(tokenizer, OMNI_TOKENS, "_index"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(config)


make_tiny = _common.tiny_maker(__name__, TINY_WINDOW_SECONDS, tiny_processor, tiny_model)


def _mrope(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) in the real 16:24:24 proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def published_config() -> Any:
    """The Qwen2.5-Omni-7B thinker's architecture config (8.93 B parameters): transformers' defaults
    are the 7B text and audio sizes, except the vision tower and the untied head."""
    from transformers import Qwen2_5OmniThinkerConfig

    config = Qwen2_5OmniThinkerConfig()
    config.vision_config.hidden_size = 1280  # published 7B: a 1280-wide ViT (class default is 3584)
    config.vision_config.intermediate_size = 3420
    config.text_config.tie_word_embeddings = False
    return config
