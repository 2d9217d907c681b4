"""Helpers for the families whose LLM is a Qwen2/Qwen2.5 model (all four today): the special-token
lists in their real order, the byte-level BPE tokenizer that tiny models are built with, and the
ChatML stop tokens. Private (leading underscore): not a family.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# Qwen2's regular BPE vocabulary has 151,643 entries; the added (special) tokens follow it in this
# order. Qwen2-Audio uses the first six; Qwen2.5-Omni the full Qwen2.5 list of 22, where the
# object-ref/box slots were renamed to audio and vision tokens.
QWEN2_AUDIO_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]
QWEN2_5_OMNI_SPECIALS = QWEN2_AUDIO_SPECIALS + [
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
AUDIO_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# Text the fallback tokenizer learns its merges from (only used when ../shared has no Qwen2 files).
# Byte-level BPE can encode any string; the corpus only decides which strings get short encodings.
_FALLBACK_CORPUS = [
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


def _train_fallback_bpe(folder: Path, vocab_size: int = 1024) -> int:
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
    tok.train_from_iterator(_FALLBACK_CORPUS * 4, trainer=trainer)
    tok.model.save(str(folder))  # writes vocab.json and merges.txt
    return tok.get_vocab_size()


TOKENIZER_CHOICES = ("auto", "qwen2", "local")  # make_tiny(tokenizer=...) of every Qwen-LLM family


def build_qwen2_tokenizer(
    folder: Path, specials: list[str], named_tokens: dict[str, str], source: str = "auto"
) -> Any:
    """Write a Qwen2 tokenizer folder and load it with AutoTokenizer.

    `source`: "qwen2" = the real Qwen2 vocab/merges from `../shared/tokenizers/qwen2` (error if
    absent), "local" = a small byte-level BPE trained here (1,024 tokens: fast, and identical on
    every machine), "auto" = qwen2 when present, else local. The added tokens follow the regular vocab in the real order, so with
    the real files their ids are the real ids (151643...). transformers 5.x ignores
    `vocab_file=`/`merges_file=` passed to Qwen2TokenizerFast, hence the folder + AutoTokenizer.
    """
    from transformers import AutoTokenizer

    from common.paths import shared_qwen2_tokenizer_dir

    if source not in TOKENIZER_CHOICES:
        raise ValueError(f"tokenizer source {source!r}: use one of {TOKENIZER_CHOICES}")
    folder.mkdir(parents=True, exist_ok=True)
    shared = shared_qwen2_tokenizer_dir() if source != "local" else None
    if source == "qwen2" and shared is None:
        raise FileNotFoundError("tokenizer 'qwen2' asked for, but ../shared/tokenizers/qwen2 is absent")
    if shared is not None:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(shared / name, folder / name)
        base = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    else:
        base = _train_fallback_bpe(folder)
    added = {
        str(base + i): {
            "content": t,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
        for i, t in enumerate(specials)
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
    for i, token in enumerate(specials):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != base + i:
            raise RuntimeError(f"tokenizer built with {token}={got}, expected {base + i}")
    return tokenizer


def padded_vocab_size(tokenizer: Any, multiple: int = 64) -> int:
    """Embedding rows for a tokenizer, rounded up like the real checkpoints (156032, 152064)."""
    n = len(tokenizer)
    return (n + multiple - 1) // multiple * multiple


def generation_config_for(tokenizer: Any) -> Any:
    """Greedy by default; stop on <|im_end|> (and <|endoftext|>), pad with <|endoftext|>."""
    from transformers import GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=eot, do_sample=False)


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
