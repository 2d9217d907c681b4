"""LoRA SFT recipe: teach an audio LLM to answer (and reason) from prepared chat samples.

Reads top to bottom, the order a run happens in:
  1. processor and model     (the family module knows how to load its checkpoints)
  2. LoRA                    (LLM linear layers; projector trainable by config; audio encoder frozen)
  3. data                    (data_prep output: hf/<split>; samples that cannot fit are dropped, counted)
  4. collator                (train.collator.AudioChatCollator: labels on the assistant turn only)
  5. trainer                 (trl.SFTTrainer on our collator; DeepSpeed from training.deepspeed)
  6. train                   (resume from `latest` or a checkpoint path)
  7. save                    (PEFT adapter, processor, run_config.yaml, run_info.json, trainer_state)
  8. eval at end (optional)  (eval.run on the saved adapter, `eval/acc/<layer>` to W&B)
Entry point: `train.py` (`deepspeed train.py --config configs/tiny/cpu.yaml`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from common.config import to_yaml
from common.io import atomic_write_json, atomic_write_text, sha256_file
from common.logging_utils import is_main_process
from common.provenance import git_sha, library_versions
from train import tracking
from train.config import DataConfig, LoraConfig, TrainConfig, TrainingConfig

logger = logging.getLogger(__name__)

LENGTH_COLUMN = "length"  # token length per sample, read by the trainer's length-grouped sampler


def main(cfg: TrainConfig) -> Path:
    """Run one LoRA SFT job end to end; returns the output dir holding the adapter."""
    from transformers import set_seed

    from train.collator import AudioChatCollator

    out = Path(cfg.training.output_dir)
    set_seed(cfg.training.seed)

    # 1. processor and model
    family, processor, model = load_model_and_processor(cfg)
    check_loss_scaling(model)

    # 2. LoRA
    model = add_lora(model, family, cfg.lora)

    # 3. data
    manifest = read_manifest(cfg.data)
    check_dataset_family(manifest, family)
    train_ds, train_skipped = load_split(
        cfg.data, cfg.data.train_split, family, processor, cfg.data.max_train_samples
    )
    val_ds = None
    if cfg.data.val_split and manifest.get("splits", {}).get(cfg.data.val_split, {}).get("count"):
        val_ds, _ = load_split(cfg.data, cfg.data.val_split, family, processor, cfg.data.max_val_samples)

    # 4. collator
    collator = AudioChatCollator(family, processor, cfg.data.max_length)

    # 5. trainer (+ tracking: W&B on rank 0, tokens/s everywhere)
    run_info = build_run_info(cfg, family, manifest, train_ds, train_skipped)
    write_run_files(out, cfg, run_info)
    wandb_mode = tracking.start_run(cfg, run_info)
    callbacks = tracking.tracking_callbacks(cfg, wandb_mode)
    trainer = build_trainer(cfg, model, processor, collator, train_ds, val_ds, callbacks)

    # 6. train
    result = trainer.train(resume_from_checkpoint=resolve_resume(cfg.training))
    final = {f"train/{k}": v for k, v in result.metrics.items()}
    if val_ds is not None:
        final.update(tracking.namespaced(last_eval(trainer) or trainer.evaluate()))

    # 7. save
    save_run(trainer, cfg, run_info, final, collator_dropped=dict(collator.skipped))

    # 8. eval at end (rank 0, on the saved adapter: it also proves the adapter loads)
    free_trainer(trainer)
    if cfg.eval_at_end.enabled and is_main_process():
        tracking.log_metrics(eval_at_end(cfg, family, out))
    tracking.finish_run(cfg, out)
    return out


# 1. processor and model -------------------------------------------------------------------------


def resolve_family(cfg: TrainConfig) -> ModuleType:
    """The family module named in the config, else the one matching the checkpoint's config.json."""
    from train.families import family_of, get_family

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


def check_loss_scaling(model: Any) -> None:
    """Refuse a model that would make the Trainer mis-scale the loss.

    The HF Trainer treats a model whose forward takes **kwargs (or says accepts_loss_kwargs=True)
    as normalising the loss by `num_items_in_batch` itself, and then skips its own division by
    gradient accumulation and multiplies by the world size. Qwen2-Audio's forward takes **kwargs but
    computes a plain mean loss: the loss came out 2x on 2 ranks (12.1 instead of 6.0). Its family
    sets `accepts_loss_kwargs = False`; a model that really uses `self.loss_function` (the Omni
    thinker) is fine either way.
    """
    accepts = getattr(model, "accepts_loss_kwargs", None)
    if accepts is None:
        params = inspect.signature(model.forward).parameters.values()
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    if not accepts:
        return
    try:
        uses_loss_function = "loss_function" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        uses_loss_function = False
    if not uses_loss_function:
        raise RuntimeError(
            f"{type(model).__name__} accepts loss kwargs but computes its own mean loss: the Trainer "
            "would scale the loss by the world size. Set `model.accepts_loss_kwargs = False` in the "
            "family's load_model."
        )


# 2. LoRA ----------------------------------------------------------------------------------------


def add_lora(model: Any, family: ModuleType, lora: LoraConfig) -> Any:
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
            # A string is full-matched against module names: the family's regex hits only the LLM.
            target_modules=lora.target_regex or family.LORA_TARGET_REGEX,
            use_dora=lora.use_dora,
            use_rslora=lora.use_rslora,
            modules_to_save=modules_to_save or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)
    assert_encoder_frozen(model, family, lora)
    return model


def assert_encoder_frozen(model: Any, family: ModuleType, lora: LoraConfig) -> None:
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


# 3. data ----------------------------------------------------------------------------------------


def read_manifest(data: DataConfig) -> dict:
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


def load_split(
    data: DataConfig, split: str, family: ModuleType, processor: Any, limit: int | None
) -> tuple[Any, list[dict]]:
    """hf/<split> as a datasets.Dataset with a `length` column, minus samples that cannot fit.

    A sample whose audio placeholder run would be cut by `max_length` would crash the model's
    "audio features and audio tokens do not match" check; it is dropped here, counted and logged.
    """
    from datasets import load_from_disk

    from train.collator import length_verdict, sample_token_length

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


# 5. trainer -------------------------------------------------------------------------------------


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
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
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
        # Workers live across epochs instead of being re-spawned (and re-importing torch) each one.
        dataloader_persistent_workers=t.dataloader_num_workers > 0,
        # Without a GPU, use_cpu makes accelerate form a gloo group of all launched ranks; left
        # False, each CPU rank silently trained alone (world size 1): no data sharding, no gathering
        # across ranks, and DeepSpeed's batch check failed. Measured with deepspeed 0.19 + gloo.
        use_cpu=not torch.cuda.is_available(),
        report_to="none",  # W&B is logged by train.tracking (rank 0, namespaced keys)
        run_name=cfg.wandb.run_name or Path(t.output_dir).name,
    )


def sft_args(cfg: TrainConfig, has_val: bool) -> Any:
    """trl.SFTConfig from our config. trl's own defaults (bf16 on, gradient checkpointing on, its
    dataset preparation) are overridden explicitly: the collator does all preprocessing."""
    from trl import SFTConfig

    t = cfg.training
    eval_on = has_val and t.eval_steps is not None
    return SFTConfig(
        **shared_trainer_kwargs(cfg),
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name=LENGTH_COLUMN,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # the collator needs messages/audio_path, not model columns
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,  # truncation is the collator's job (it never cuts the audio run)
        packing=False,
    )


def build_trainer(
    cfg: TrainConfig, model: Any, processor: Any, collator: Any, train_ds: Any, val_ds: Any, callbacks: list
) -> Any:
    """trl.SFTTrainer with our collator and a prepared datasets.Dataset."""
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=sft_args(cfg, has_val=val_ds is not None),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
    )


# 6. train ---------------------------------------------------------------------------------------


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


def last_eval(trainer: Any) -> dict | None:
    """The eval logged at the final step, if the schedule already ran one (no second pass)."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == trainer.state.global_step else None
    return None


# 7. save ----------------------------------------------------------------------------------------


def build_run_info(
    cfg: TrainConfig, family: ModuleType, manifest: dict, train_ds: Any, skipped: list[dict]
) -> dict:
    """What was trained on what: read by eval.run's leakage guard (train_groups) and by people."""
    dataset_dir = Path(cfg.data.dataset_dir)
    split = manifest.get("splits", {}).get(cfg.data.train_split, {})
    ids, groups = list(train_ds["id"]), sorted({str(g) for g in train_ds["group"]})
    return {
        "format_version": 1,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "method": cfg.training.method,
        "base_model": cfg.model.model_name_or_path,
        "family": family.NAME,
        "dataset": {
            "dir": str(dataset_dir.resolve()),
            "name": manifest.get("name"),
            "hash": manifest.get("hash"),
            "manifest_sha256": sha256_file(dataset_dir / "manifest.json"),
        },
        # Every group of the split, not only the rows used: the guard must be conservative.
        "train_groups": sorted(set(groups) | {str(g) for g in split.get("groups", [])}),
        "splits": {
            "train": {
                "name": cfg.data.train_split,
                "hash": split.get("hash"),
                "count": len(ids),
                "ids": ids,
                "groups": groups,
                "skipped": skipped,
            },
        },
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "versions": library_versions(),
    }


def write_run_files(out: Path, cfg: TrainConfig, run_info: dict) -> None:
    """run_config.yaml + run_info.json at the start, so even a crashed run says what it was."""
    if not is_main_process():
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run_config.yaml", to_yaml(cfg))
    atomic_write_json(out / "run_info.json", run_info)


def trainable_digest(model: Any) -> str:
    """sha256 over the trainable parameters (gathered under ZeRO-3), the same on every healthy rank."""
    import contextlib

    import torch

    params = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    gather: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None)
    h = hashlib.sha256()
    with gather, torch.no_grad():
        for name, p in params:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def all_ranks(value: str) -> list[str]:
    """Gather a string from every rank (a one-element list without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def save_run(trainer: Any, cfg: TrainConfig, run_info: dict, final: dict, **extra_info: Any) -> None:
    """Adapter + processor (all ranks enter: ZeRO-3 gathers), then run files on rank 0.

    `extra_info` goes into run_info.json (the SFT collator's drop counts, GRPO's reward weights).
    """
    import torch.distributed as dist

    out = Path(cfg.training.output_dir)
    trainer.save_model(str(out))  # PEFT format: adapter_config.json + adapter_model.safetensors
    digests = all_ranks(trainable_digest(trainer.model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on the trained weights: {digests}")
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        trainer.save_state()  # trainer_state.json (log history: losses or rewards, global step)
        run_info.update(
            status="complete",
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            global_step=trainer.state.global_step,
            final_metrics=final,
            adapter_digests=digests,
            **extra_info,
        )
        atomic_write_json(out / "run_info.json", run_info)
        atomic_write_text(out / "run_config.yaml", to_yaml(cfg))
        logger.info(
            "saved adapter to %s (trainable sha256 %s on %d rank(s))", out, digests[0][:12], len(digests)
        )
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # nobody leaves before the adapter is on disk


def free_trainer(trainer: Any) -> None:
    """Release the training model and optimizer (eval at end loads a fresh copy)."""
    import gc

    import torch

    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# 8. eval at end ---------------------------------------------------------------------------------


def eval_at_end(cfg: TrainConfig, family: ModuleType, out: Path) -> dict[str, float]:
    """eval.run on the saved adapter (base + adapter reloaded from disk); returns W&B metrics."""
    from eval.run import EvalConfig, run, wandb_metrics

    e = cfg.eval_at_end
    eval_cfg = EvalConfig(
        model=cfg.model.model_name_or_path,
        adapter=str(out),
        data=cfg.data.dataset_dir,
        split=e.split,
        out=str(out / "eval" / e.split),
        batch_size=e.batch_size,
        max_new_tokens=e.max_new_tokens,
        limit=e.limit,
        seed=cfg.training.seed,
        dtype=cfg.model.dtype,
        family=family.NAME,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    metrics = run(eval_cfg)
    logger.info("eval at end (%s): written to %s", e.split, eval_cfg.out)
    return wandb_metrics(metrics, prefix="eval")
