"""Padding efficiency of training batches: random vs the trainer's length-grouped batching.

    python -m bench.padding [--quick]

Samples: the real MMAR questions, options and thinking (`common.paths.shared_mmar_meta()`), rendered
with the cot_v1 template exactly as data_prep does, each with its real clip length taken from the
item's `timestamp` (end - start, clamped to 1-30 s: the model hears at most its 30 s window).
Without ../shared, synthetic items with seeded 1-30 s durations stand in. Token lengths come from
`models.inputs.sample_token_length` (the tokenizer of the tiny model, whose vocabulary is the real
Qwen2 one, plus the 25-per-second audio-token count of Qwen2-Audio's 30 s window) and samples that
cannot fit `max_length` are dropped, as `train.components.load_fitting_split` does.

Batches come from the real trainer: `train.sft.build_trainer` with the 7B recipe's batch settings
(configs/qwen2_audio_7b/cot_lora.yaml, on the tiny model and CPU), and one epoch of
`trainer.get_train_dataloader()`: `group_by_length: true` gives HF's LengthGroupedSampler over the
recipe's `length` column, `false` a random sampler. The collator pads each micro-batch to its
longest sample, so efficiency = real tokens / (micro-batch size x longest sample), summed over
the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench._common import emit, parse_args, print_table, tiny_model, workdir
from common.paths import REPO_ROOT, shared_mmar_meta

RECIPE = REPO_ROOT / "configs" / "qwen2_audio_7b" / "cot_lora.yaml"
WINDOW_SECONDS = 30  # Qwen2-Audio's encoder window; the tiny model's is 10 s
MIN_SECONDS, MAX_SECONDS = 1.0, 30.0


def _seconds(hms: str) -> float:
    return sum(float(part) * mult for part, mult in zip(reversed(hms.strip().split(":")), (1, 60, 3600)))


def clip_seconds(original: dict) -> float | None:
    """Clip length from MMAR's `timestamp` ("HH:MM:SS,HH:MM:SS"), clamped to 1-30 s; None if absent."""
    try:
        start, end = str(original["timestamp"]).split(",")
        return float(np.clip(_seconds(end) - _seconds(start), MIN_SECONDS, MAX_SECONDS))
    except (KeyError, ValueError):
        return None


def mmar_like_records(work: Path, quick: bool, seed: int) -> tuple[list, list[float], str]:
    """(records, clip seconds, source name): real MMAR when present, else synthetic items."""
    from data_prep.config import SourceConfig
    from data_prep.readers import load_records

    rng = np.random.default_rng(seed)
    meta = shared_mmar_meta()
    if meta is None:
        from data_prep.synth import generate

        meta, source = generate(work / "synth-padding", n=120 if quick else 600, seed=seed), "synthetic"
    else:
        source = "MMAR-meta.jsonl"
    records, _ = load_records(SourceConfig(reader="mmar", path=str(meta)))
    if quick:
        records = records[:200]
    known = [s for s in (clip_seconds(r.original) for r in records) if s is not None]
    # Items without a timestamp draw from the known lengths (or uniformly when none is known).
    fill = (lambda: float(rng.choice(known))) if known else (lambda: float(rng.uniform(1, 30)))
    seconds = [clip_seconds(r.original) or fill() for r in records]
    return records, seconds, source


def window_processor(model_dir: Path) -> tuple[ModuleType, Any]:
    """The tiny model's processor with Qwen2-Audio's real 30 s feature extractor (audio-token count)."""
    from transformers import WhisperFeatureExtractor

    from models import get_family

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(model_dir))
    fe = processor.feature_extractor
    processor.feature_extractor = WhisperFeatureExtractor(
        feature_size=fe.feature_size,
        sampling_rate=fe.sampling_rate,
        hop_length=fe.hop_length,
        n_fft=fe.n_fft,
        chunk_length=WINDOW_SECONDS,
        padding_value=0.0,
        return_attention_mask=True,
    )
    return family, processor


def sample_rows(records: list, seconds: list[float], family: ModuleType, seed: int) -> list[dict]:
    """Sample rows rendered with cot_v1 (direct fallback without thinking), as data_prep writes them."""
    from data_prep.templates import get_template, render_sample

    template = get_template("cot_v1")
    return [
        render_sample(
            rec,
            template=template,
            system_prompt=family.SYSTEM_PROMPT,
            audio_path=f"/audio/{rec.id}.wav",  # never opened: the length comes from audio_duration
            audio_duration=sec,
            seed=seed,
            shuffle=True,
            missing_thinking="direct",
        )
        for rec, sec in zip(records, seconds)
    ]


def token_lengths(family: ModuleType, processor: Any, rows: list[dict], max_length: int) -> list[int]:
    """Expanded token length per sample, minus samples that cannot fit (train.components.load_fitting_split's rule)."""
    from models.inputs import length_verdict, sample_token_length

    out = []
    for row in rows:
        n = sample_token_length(family, processor, row)
        if length_verdict(n, max_length) is None:
            out.append(min(n.total, max_length))  # the collator cuts a long answer at max_length
    return out


@dataclass
class LengthsOnly:
    """A collator that returns the batch's token lengths: the bench needs the batching, not tensors."""

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        return {"length": torch.tensor([r["length"] for r in rows])}


def trainer_batches(model_dir: Path, processor: Any, lengths: list[int], grouped: bool, out: Path) -> list:
    """One epoch of micro-batch lengths from the real trainer's train dataloader."""
    from datasets import Dataset

    from models import get_family
    from train.components import LENGTH_COLUMN
    from train.config import load_config
    from train.sft import build_trainer

    cfg = load_config(
        [
            "--config", str(RECIPE),
            "--model_name_or_path", str(model_dir), "--dtype", "float32", "--attn_implementation", "eager",
            "--bf16", "false", "--gradient_checkpointing", "false", "--deepspeed", "null",
            "--dataloader_num_workers", "0", "--report_to", "none", "--output_dir", str(out),
            "--group_by_length", str(grouped).lower(),
        ]
    )  # fmt: skip
    family = get_family("qwen2_audio")
    model = family.load_model(str(model_dir), dtype="float32")
    ds = Dataset.from_dict({"id": [str(i) for i in range(len(lengths))], LENGTH_COLUMN: lengths})
    trainer = build_trainer(cfg, model, family, processor, LengthsOnly(), ds, None, [])
    batches = [b["length"].tolist() for b in trainer.get_train_dataloader()]
    return batches, cfg.training


def efficiency(batches: list[list[int]]) -> float:
    """Real tokens / padded tokens over all micro-batches."""
    real = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches)
    return real / padded


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; prints the table and the JSON line, returns the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    import torch
    from transformers import set_seed

    from train.config import load_config

    torch.set_num_threads(1)
    max_length = load_config(["--config", str(RECIPE)]).data.max_length
    with workdir(args.workdir) as work:
        model_dir = tiny_model(work, args.seed)
        family, processor = window_processor(model_dir)
        records, seconds, source = mmar_like_records(work, args.quick, args.seed)
        lengths = token_lengths(
            family, processor, sample_rows(records, seconds, family, args.seed), max_length
        )
        results = {}
        for grouped in (False, True):
            set_seed(args.seed)
            batches, t = trainer_batches(model_dir, processor, lengths, grouped, work / "trainer")
            results[grouped] = (efficiency(batches), len(batches))
    print(
        f"{len(lengths)} samples ({source}, {len(records) - len(lengths)} dropped by max_length={max_length}); "
        f"tokens min/median/max {min(lengths)}/{int(np.median(lengths))}/{max(lengths)}; "
        f"micro-batch {t.per_device_train_batch_size} x accumulation {t.gradient_accumulation_steps} "
        f"({RECIPE.relative_to(REPO_ROOT)})"
    )
    print_table(
        ["batching", "micro-batches", "real / padded tokens"],
        [
            ("random", results[False][1], results[False][0]),
            ("length-grouped", results[True][1], results[True][0]),
        ],
    )
    result = {
        "bench": "padding",
        "efficiency_random": round(results[False][0], 4),
        "efficiency_grouped": round(results[True][0], 4),
        "samples": len(lengths),
        "source": source,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": max_length,
        "clip_seconds_median": float(np.median(seconds)),
        "quick": args.quick,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
