"""Building blocks both training recipes (`train.sft`, `train.grpo`) share, in the order a run uses them:
the family, processor and base model; LoRA; the prepared data; the TrainingArguments common to both;
where to resume from. The recipes read top to bottom; this module is their library.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from train.config import LoraSettings, TrainConfig, TrainDataConfig, TrainingConfig

logger = logging.getLogger(__name__)

LENGTH_COLUMN = "length"  # token length per sample, read by the trainer's length-grouped sampler


# model --------------------------------------------------------------------------------------------


def resolve_family(cfg: TrainConfig) -> ModuleType:
    """The family module named in the config, else the one matching the checkpoint's config.json."""
    from models import family_of, get_family

    name = cfg.model.family or family_of(cfg.model.model_name_or_path)
    logger.info("model %s, family %s", cfg.model.model_name_or_path, name)
    return get_family(name)


def load_model_and_processor(cfg: TrainConfig) -> tuple[ModuleType, Any, Any]:
    """The family module, its processor and the base model, through the real-checkpoint code path."""
    family = resolve_family(cfg)
    m = cfg.model
    processor = family.load_processor(m.model_name_or_path, trust_remote_code=m.trust_remote_code)
    model = family.load_model(
        m.model_name_or_path,
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code,
    )
    return family, processor, model


# LoRA ---------------------------------------------------------------------------------------------


def add_lora(model: Any, family: ModuleType, lora: LoraSettings) -> Any:
    """Wrap the model with a LoRA adapter (or continue `init_adapter`); everything else is frozen.

    Fully trained modules (projector, and the audio encoder only when asked) go through PEFT's
    `modules_to_save`, so they are saved inside the adapter and restored by PeftModel.from_pretrained.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if lora.init_adapter:
        logger.info("continuing from adapter %s", lora.init_adapter)
        model = PeftModel.from_pretrained(model, lora.init_adapter, is_trainable=True)
    else:
        modules_to_save = [family.PROJECTOR] if lora.train_projector else []
        if lora.train_audio_encoder:
            modules_to_save.append(family.AUDIO_ENCODER)
        modules_to_save += lora.modules_to_save
        config = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            use_dora=lora.use_dora,
            use_rslora=lora.use_rslora,
            modules_to_save=modules_to_save or None,
            task_type="CAUSAL_LM",
            **lora_target(family, lora),
        )
        model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)
    assert_encoder_frozen(model, family, lora)
    assert_never_trained(model, family)
    return model


def lora_target(family: ModuleType, lora: LoraSettings) -> dict[str, Any]:
    """PEFT target kwargs: the family's LORA_TARGET (LLM linears, plus fused MoE experts through
    `target_parameters` where the family has them), or the config's `target_regex` instead.

    A string `target_modules` is full-matched against module names; PEFT wraps a parameter target in
    `lora.ParamWrapper`, which refuses dropout, so that case is named here rather than deep in PEFT.
    """
    target = {"target_modules": lora.target_regex} if lora.target_regex else dict(family.LORA_TARGET)
    if target.get("target_parameters") and lora.dropout:
        raise ValueError(
            f"lora.dropout={lora.dropout}: the {family.NAME} LoRA target adapts fused expert parameters "
            f"({target['target_parameters']}), which PEFT supports only with lora.dropout: 0.0"
        )
    return target


def assert_never_trained(model: Any, family: ModuleType) -> None:
    """Parameters matching the family's FROZEN patterns (e.g. MoE routers) must not train, whatever
    the config adds (a router update changes which experts every token reaches)."""
    hit = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and any(re.search(pattern, n) for pattern in family.FROZEN)
    ]
    if hit:
        raise ValueError(f"{family.NAME}: parameters that must stay frozen are trainable: {hit[:3]} ...")


def assert_encoder_frozen(model: Any, family: ModuleType, lora: LoraSettings) -> None:
    """A LoRA target regex that also hits the encoder (e.g. a bare q_proj list) trains it silently.

    The projector may live inside the encoder (Qwen2.5-Omni: `model.audio_tower.proj`); it is allowed.
    """
    if lora.train_audio_encoder:
        return

    def under(name: str, path: str) -> bool:
        return f".{path}." in f".{name}"

    hit = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and under(n, family.AUDIO_ENCODER) and not under(n, family.PROJECTOR)
    ]
    if hit:
        raise ValueError(f"audio encoder parameters are trainable ({hit[:3]} ...): narrow lora.target_regex")


# data ---------------------------------------------------------------------------------------------


def read_manifest(data: TrainDataConfig) -> dict:
    """manifest.json of a data_prep output dir, with a pointed error when the dir is not one."""
    path = Path(data.dataset_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{data.dataset_dir} is not a prepared dataset (no manifest.json); run "
            "`python -m data_prep.prepare --config configs/data/<name>.yaml` first"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_dataset_family(manifest: dict, family: ModuleType) -> None:
    """Warn when the samples were rendered for another family (system prompt, layout)."""
    prepared_for = manifest.get("family")
    if prepared_for and prepared_for != family.NAME:
        logger.warning(
            "dataset was prepared for family %r but the model is %r: the system prompt may not be "
            "the model's own; re-run data_prep with --family %s",
            prepared_for,
            family.NAME,
            family.NAME,
        )


def load_fitting_split(
    data: TrainDataConfig, split: str, family: ModuleType, processor: Any, limit: int | None
) -> tuple[Any, list[dict]]:
    """hf/<split> as a datasets.Dataset with a `length` column, minus samples that cannot fit.

    A sample whose audio placeholder run would be cut by `max_length` would crash the model's
    "audio features and audio tokens do not match" check; it is dropped here, counted and logged.
    """
    from datasets import load_from_disk

    from models.inputs import length_verdict, sample_token_length

    path = Path(data.dataset_dir) / "hf" / split
    if not path.exists():
        raise FileNotFoundError(f"split {split!r} not found at {path}")
    ds = load_from_disk(str(path))
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    keep, lengths, skipped = [], [], []
    for i, row in enumerate(ds):
        try:
            n = sample_token_length(family, processor, row)
            reason = length_verdict(n, data.max_length)
        except ValueError as e:
            n, reason = None, str(e)
        if reason is None:
            keep.append(i)
            lengths.append(n.total)
        else:
            skipped.append({"id": row.get("id"), "reason": reason})
    if skipped:
        reasons = dict(Counter(s["reason"] for s in skipped))
        logger.warning(
            "%s: dropped %d of %d samples that cannot fit max_length=%d: %s (e.g. %s)",
            split,
            len(skipped),
            len(ds),
            data.max_length,
            reasons,
            skipped[0]["id"],
        )
    if not keep:
        raise ValueError(f"split {split!r}: no sample fits max_length={data.max_length}")
    ds = ds.select(keep).add_column(LENGTH_COLUMN, lengths)
    logger.info(
        "%s: %d samples, tokens min/mean/max %d/%.0f/%d",
        split,
        len(ds),
        min(lengths),
        sum(lengths) / len(lengths),
        max(lengths),
    )
    return ds, skipped


# trainer arguments and resume ---------------------------------------------------------------------


def shared_trainer_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """TrainingArguments fields both recipes (SFT and GRPO) set the same way from our config."""
    import torch

    t = cfg.training
    return dict(
        output_dir=t.output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        # transformers 5 has no warmup_ratio: its warmup_steps reads a value below 1 as that share of
        # the total steps, which is what our ratio is (config._validate keeps it below 1).
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        bf16=t.bf16,
        fp16=False,
        gradient_checkpointing=t.gradient_checkpointing,
        # Non-reentrant checkpointing works with a frozen embedding layer (no input grads needed).
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        deepspeed=t.deepspeed,
        dataloader_num_workers=t.dataloader_num_workers,
        ddp_timeout=t.collective_timeout_s,  # the process group's collective timeout (gloo/NCCL)
        # Workers live across epochs instead of being re-spawned (and re-importing torch) each one.
        dataloader_persistent_workers=t.dataloader_num_workers > 0,
        # Without a GPU, use_cpu makes accelerate form a gloo group of all launched ranks; left
        # False, each CPU rank silently trained alone (world size 1): no data sharding, no gathering
        # across ranks, and DeepSpeed's batch check failed. Measured with deepspeed 0.19 + gloo.
        use_cpu=not torch.cuda.is_available(),
        report_to="none",  # W&B is logged by train.tracking (rank 0, namespaced keys)
        run_name=cfg.wandb.run_name or Path(t.output_dir).name,
    )


def newest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-numbered checkpoint-* that finished saving, warning about torn ones.

    transformers does not write checkpoints atomically and writes trainer_state.json last, so a
    kill during saving leaves a newer folder without it; resuming from that would crash or load
    half-written weights.
    """
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name[11:]), reverse=True):
        if (folder / "trainer_state.json").exists():
            return str(folder)
        logger.warning("skipping %s: no trainer_state.json (interrupted while saving)", folder)
    return None


def resolve_resume(t: TrainingConfig) -> str | None:
    """`latest` -> newest complete checkpoint-* in output_dir (none yet: start fresh), else a path."""
    value = t.resume_from_checkpoint
    if not value:
        return None
    if value == "latest":
        last = newest_complete_checkpoint(t.output_dir) if Path(t.output_dir).is_dir() else None
        if last is None:
            logger.warning("resume_from_checkpoint=latest: no checkpoint in %s, starting fresh", t.output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: {value} is not a checkpoint directory")
    return value
