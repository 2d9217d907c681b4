"""The data-prep config: one dataclass tree, read from `configs/data/*.yaml` plus CLI overrides.

Every leaf can be overridden as `--section.key value` or, where the leaf name is unique, `--key
value` (e.g. `--source.path x.jsonl --template direct_v1 --seed 1 --no-audio-check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_prep.splits import DEFAULT_STRATA


@dataclass
class SourceConfig:
    reader: str = field(default="mmar", metadata={"help": "mmar | mmau | muchomusic | canonical"})
    path: str = field(default="data/synth/meta.jsonl", metadata={"help": "source metadata file"})
    audio_template: str = field(
        default="{dataset}/{dataset_identifier}.wav",
        metadata={"help": "muchomusic only: audio path under audio_root, formatted with the CSV row"},
    )


@dataclass
class SplitConfig:
    mode: Literal["ratio", "holdout"] = field(
        default="ratio",
        metadata={"help": "ratio: grouped stratified split; holdout: whole source is one split"},
    )
    train: float = field(default=0.8, metadata={"help": "fraction of items for train"})
    val: float = field(default=0.05, metadata={"help": "fraction of items for val"})
    test: float = field(default=0.15, metadata={"help": "fraction of items for test"})
    holdout_split: Literal["train", "val", "test"] = field(
        default="test", metadata={"help": "holdout mode: the split that receives every item"}
    )
    stratify_by: list[str] = field(
        default_factory=lambda: list(DEFAULT_STRATA),
        metadata={
            "help": "ratio mode: sample fields whose values form the strata; add question,answer to "
            "balance each question's answers in every split (a fixed-choice guesser is then at chance)"
        },
    )


@dataclass
class AudioConfig:
    sampling_rate: int = field(default=16000, metadata={"help": "target rate of load_audio"})
    max_seconds: float = field(default=30.0, metadata={"help": "model window (Qwen2-Audio: 30 s)"})
    long_audio_policy: Literal["truncate", "skip"] = field(
        default="truncate", metadata={"help": "clips longer than max_seconds: truncate at load, or skip"}
    )


@dataclass
class DataConfig:
    name: str = field(default="dataset", metadata={"help": "prefix of the output directory name"})
    source: SourceConfig = field(default_factory=SourceConfig)
    audio_root: str | None = field(
        default=None, metadata={"help": "folder that audio paths are relative to (default: source's folder)"}
    )
    out_dir: str = field(default="data/prepared", metadata={"help": "parent of <name>-<hash12>/"})
    family: str = field(default="qwen2_audio", metadata={"help": "model family (system prompt)"})
    system_prompt: str | None = field(default=None, metadata={"help": "override the family's system prompt"})
    template: str = field(default="cot_v1", metadata={"help": "cot_v1 | direct_v1"})
    shuffle_options: bool = field(default=True, metadata={"help": "seeded per-item option shuffle"})
    fold_cue: bool = field(default=False, metadata={"help": "cot: prepend the item's cues to the thinking"})
    missing_thinking: Literal["fail", "direct", "skip"] = field(
        default="fail", metadata={"help": "cot item without thinking: error, direct-answer fallback, or skip"}
    )
    seed: int = field(default=0, metadata={"help": "seed of option shuffles and splits"})
    strict: bool = field(default=False, metadata={"help": "turn item-level skips into errors"})
    no_audio_check: bool = field(
        default=False, metadata={"help": "metadata-only: do not open audio files (audio root may be absent)"}
    )
    export: Literal["none", "llamafactory"] = field(
        default="none", metadata={"help": "also write export/ in the LLaMA-Factory / ms-swift layout"}
    )
    split: SplitConfig = field(default_factory=SplitConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
