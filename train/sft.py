"""LoRA SFT recipe: teach an audio LLM to answer (and reason) from prepared chat samples.

Reads top to bottom, the order a run happens in:
  1. processor and model     (the family module knows how to load its checkpoints)
  2. LoRA                    (LLM linear layers; projector trainable by config; audio encoder frozen)
  3. data                    (data_prep output: hf/<split>; samples that cannot fit are dropped, counted)
  4. collator                (models.inputs.AudioChatCollator: labels on the assistant turn only)
  5. trainer                 (transformers.Trainer; LM head + loss at label positions only,
                              train.label_only_loss; DeepSpeed from training.deepspeed)
  6. train                   (resume from `latest` or a checkpoint path)
  7. save                    (PEFT adapter, processor, run_config.yaml, run_info.json, trainer_state)
  8. eval at end (optional)  (eval.run on the saved adapter, `eval/acc/<layer>` to W&B)
Entry point: `train.py` (`deepspeed train.py --config configs/tiny/cpu.yaml`). The steps shared with
the GRPO recipe live beside it in `train.components` (model, LoRA, data, arguments, resume) and
`train.run_files` (run_info.json, save, eval at end).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from transformers import Trainer

from common.logging_utils import is_main_process
from models.silent_audio import SilentAudioPass
from train import components, label_only_loss, run_files, tracking
from train.config import TrainConfig

logger = logging.getLogger(__name__)


def main(cfg: TrainConfig) -> Path:
    """Run one LoRA SFT job end to end; returns the output dir holding the adapter."""
    from transformers import set_seed

    from models.inputs import AudioChatCollator

    out = Path(cfg.training.output_dir)
    set_seed(cfg.training.seed)

    # 1. processor and model
    family, processor, model = components.load_model_and_processor(cfg)
    check_loss_scaling(model)

    # 2. LoRA
    model = components.add_lora(model, family, cfg.lora)

    # 3. data
    manifest = components.read_manifest(cfg.data)
    components.check_dataset_family(manifest, family)
    train_ds, train_skipped = components.load_fitting_split(
        cfg.data, cfg.data.train_split, family, processor, cfg.data.max_train_samples
    )
    val_ds, val_skipped = None, []
    if cfg.data.val_split and manifest.get("splits", {}).get(cfg.data.val_split, {}).get("count"):
        val_ds, val_skipped = components.load_fitting_split(
            cfg.data, cfg.data.val_split, family, processor, cfg.data.max_val_samples
        )

    # 4. collator
    collator = AudioChatCollator(family, processor, cfg.data.max_length)

    # 5. trainer (+ tracking: W&B on rank 0, tokens/s everywhere)
    run_info = run_files.build_run_info(cfg, family, manifest, train_ds, train_skipped)
    run_files.write_run_files(out, cfg, run_info)
    wandb_mode = tracking.start_run(cfg, run_info)
    callbacks = tracking.tracking_callbacks(cfg, wandb_mode)
    trainer = build_trainer(cfg, model, family, processor, collator, train_ds, val_ds, callbacks)

    # 6. train
    result = trainer.train(resume_from_checkpoint=components.resolve_resume(cfg.training))
    final = {f"train/{k}": v for k, v in result.metrics.items()}
    if val_ds is not None:
        final.update(tracking.namespaced(run_files.last_eval(trainer) or trainer.evaluate()))

    # 7. save (drop and truncation counts summed over loader workers and ranks, also to W&B)
    counts = run_files.data_counts({"train": train_skipped, "val": val_skipped}, collator)
    tracking.log_metrics(run_files.count_metrics(counts))
    run_files.save_run(trainer, cfg, run_info, final, **counts)

    # 8. eval at end (rank 0, on the saved adapter: it also proves the adapter loads)
    run_files.free_trainer(trainer)
    if cfg.eval_at_end.enabled and is_main_process():
        tracking.log_metrics(run_files.eval_at_end(cfg, family, out))
    tracking.finish_run(cfg, out)
    return out


# 1. processor and model ---------------------------------------------------------------------------


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


# 5. trainer ---------------------------------------------------------------------------------------


def sft_args(cfg: TrainConfig, has_val: bool) -> Any:
    """transformers.TrainingArguments from our config; the collator does all preprocessing."""
    from transformers import TrainingArguments

    t = cfg.training
    eval_on = has_val and t.eval_steps is not None
    return TrainingArguments(
        **components.shared_trainer_kwargs(cfg),
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name=components.LENGTH_COLUMN,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # the collator needs messages/audio_path, not model columns
    )


def build_trainer(
    cfg: TrainConfig,
    model: Any,
    family: ModuleType,
    processor: Any,
    collator: Any,
    train_ds: Any,
    val_ds: Any,
    callbacks: list,
) -> Any:
    """A transformers.Trainer whose model computes the LM head and the loss at label positions only,
    with a resume-exact training loader.

    Not trl's SFTTrainer: its compute_loss always runs its fused head over the whole vocabulary, with
    entropy and token accuracy for logging (~95% of a tiny-model step; on CPU over every position).
    See train/label_only_loss.py; the loss is the same number. Batches without audio (text-only rows)
    still run the audio encoder, on silence, so ZeRO-3 ranks stay in step (models/silent_audio.py).
    """
    return LabelOnlyLossTrainer(
        silent_audio=SilentAudioPass.for_processor(family, processor),
        model=model,
        args=sft_args(cfg, has_val=val_ds is not None),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
    )


class LabelOnlyLossTrainer(Trainer):
    """`transformers.Trainer` on a model whose forward computes the label-only loss.

    The Trainer's own compute_loss is used as it is: `num_items_in_batch`, gradient accumulation
    and world-size scaling follow the model's `accepts_loss_kwargs` (check_loss_scaling), as for
    any model; only the model's forward changes. No logits exist, so `compute_metrics` and
    `preprocess_logits_for_metrics` are refused rather than silently fed nothing. `silent_audio`:
    see train/label_only_loss.py `install`.
    """

    def __init__(self, *args: Any, silent_audio: SilentAudioPass | None = None, **kwargs: Any):
        for name in ("compute_metrics", "preprocess_logits_for_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{name} needs the full logits, which the label-only loss never builds; "
                    "evaluate the saved adapter with eval.run instead"
                )
        label_only_loss.install(kwargs["model"], silent_audio=silent_audio)
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self) -> Any:
        # The Trainer's own loader shuffles from the global RNG: not exact after a resume (train/loader.py).
        from train.loader import resumable_train_dataloader

        return resumable_train_dataloader(self, components.LENGTH_COLUMN)
