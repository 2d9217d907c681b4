"""Typed training config: one flat dataclass per section, parsed by `common.config.parse_config`.

YAML gives the defaults, `--section.key value` or `--key value` (unique leaf names) wins, unknown
keys fail. Every field carries a help string (`python train.py --help` lists them all).
The keys users change most are unique leaves and work as flat flags: `--model_name_or_path`,
`--dataset_dir`, `--output_dir`, `--max_steps`, `--seed`, `--deepspeed`, `--resume_from_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.config import ConfigError, parse_config
from common.config import help_field as _f  # short: the dataclasses below call it for every field


@dataclass
class ModelConfig:
    model_name_or_path: str = _f("runs/models/tiny-qwen2-audio", "Hub id or local path of the base model.")
    family: str | None = _f(None, "Model family: a module of models/ (null = from config.json's model_type).")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = _f(
        "float32", "Weights dtype at load time (bfloat16 on GPUs, float32 on CPU)."
    )
    attn_implementation: str | None = _f(
        None, "eager | sdpa | flash_attention_2 (null = transformers' default)."
    )
    trust_remote_code: bool = _f(False, "Run model code from the checkpoint; off unless you trust it.")


@dataclass
class TrainDataConfig:
    dataset_dir: str = _f("data/prepared/latest", "A data_prep output dir (holds manifest.json, hf/<split>).")
    train_split: str = _f("train", "Split to train on.")
    val_split: str | None = _f("val", "Split for validation loss during training (null = none).")
    max_length: int = _f(2048, "Max tokens per sample; samples whose audio run would be cut are dropped.")
    max_train_samples: int | None = _f(None, "Use only the first N training samples (debugging).")
    max_val_samples: int | None = _f(None, "Use only the first N validation samples.")


@dataclass
class LoraSettings:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = _f(0.05, "Dropout on the LoRA branch.")
    target_regex: str | None = _f(
        None, "Regex of module names to adapt (null = the family's LORA_TARGET: LLM only, MoE experts too)."
    )
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling alpha / sqrt(r).")
    train_projector: bool = _f(True, "Train the audio->LLM projector fully (saved with the adapter).")
    train_audio_encoder: bool = _f(False, "Train the audio encoder fully (large; off by default).")
    modules_to_save: list[str] = _f(
        [],
        "Extra modules trained fully and saved with the adapter (PEFT modules_to_save), e.g. "
        "[lm_head] for a randomly initialised tiny model, or after adding new tokens.",
    )
    init_adapter: str | None = _f(
        None, "Start from an existing PEFT adapter dir (e.g. the SFT adapter before GRPO)."
    )


@dataclass
class TrainingConfig:
    output_dir: str = _f("runs/train", "Run directory: adapter, processor, checkpoints, run_info.json.")
    method: Literal["sft", "grpo"] = _f("sft", "sft -> train.sft, grpo -> train.grpo.")
    max_steps: int = _f(-1, "Optimizer steps (-1 = use num_train_epochs).")
    num_train_epochs: float = _f(1.0, "Epochs when max_steps is -1.")
    per_device_train_batch_size: int = _f(1, "Micro-batch per process.")
    per_device_eval_batch_size: int = _f(1, "Validation micro-batch per process.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    lr_scheduler_type: str = _f("cosine", "cosine | linear | constant | constant_with_warmup | ...")
    warmup_ratio: float = _f(0.03, "Share of the total steps spent warming up linearly, in [0, 1).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    optim: str = _f("adamw_torch", "HF optimizer name (DeepSpeed's JSON may override it).")
    bf16: bool = _f(False, "bf16 mixed precision (GPUs); false = fp32.")
    gradient_checkpointing: bool = _f(False, "Recompute activations to save memory.")
    group_by_length: bool = _f(True, "Batch samples of similar token length (less padding).")
    logging_steps: int = _f(10, "Log train/loss every N steps.")
    eval_steps: int | None = _f(None, "Validation loss every N steps (null = only at the end).")
    save_steps: int = _f(500, "Checkpoint every N steps.")
    save_total_limit: int | None = _f(3, "Keep at most N checkpoints.")
    seed: int = _f(0, "Seed for init, shuffling and dropout.")
    deepspeed: str | None = _f(None, "Path to a DeepSpeed JSON (configs/deepspeed/zero2.json ...).")
    resume_from_checkpoint: str | None = _f(
        None, "'latest' (newest checkpoint-* in output_dir), a checkpoint path, or null."
    )
    dataloader_num_workers: int = _f(0, "DataLoader worker processes (audio decoding runs there).")
    collective_timeout_s: int = _f(
        600,
        "Seconds a rank waits in a collective (all-reduce, barrier) before failing; bounds the hang "
        "when a rank on another host dies (local peers are watched: train/rank_watch.py). Longer "
        "than the slowest checkpoint save or eval, which other ranks wait out in a barrier.",
    )


# trl 1.16's `GRPOConfig.loss_type` values (trl/trainer/grpo_config.py): the Literal makes any other a
# config error naming `grpo.loss_type`.
LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]


@dataclass
class GrpoSettings:
    num_generations: int = _f(
        4, "Completions sampled per prompt (the group); AudioMCQ and R1-AQA use 8. At least 2."
    )
    temperature: float = _f(
        1.0, "Sampling temperature for rollouts (R1-AQA 1.0, AudioMCQ 1.5); trl scores log-probs at it too."
    )
    top_p: float = _f(1.0, "Nucleus sampling for rollouts.")
    beta: float = _f(
        0.0, "KL coefficient against the reference model (0 = no reference model; AudioMCQ 0.001)."
    )
    max_completion_length: int = _f(256, "Max new tokens per rollout (AudioMCQ 128).")
    reward_weights: dict[str, float] = _f(
        {"accuracy": 1.0, "format": 0.2, "length": 0.0},
        "Weight per reward function (train/rewards.py): accuracy, format, length, overlong.",
    )
    thinking_budget_tokens: int = _f(200, "Thinking length above which the length reward penalises.")
    length_penalty: float = _f(0.0, "Penalty per token over thinking_budget_tokens.")
    loss_type: LossType = _f(
        "dapo",
        "trl's loss aggregation. dapo (trl 1.16's default; DAPO, arXiv 2503.14476): token sum over the "
        "tokens of the whole batch; grpo: per-sequence mean (length bias; with importance_sampling_level "
        "sequence this is GSPO); dr_grpo (Dr. GRPO, arXiv 2503.20783): a constant max_completion_length "
        "normaliser, use with scale_rewards none; also bnpo, cispo, sapo, luspo, vespo (trl's docs).",
    )
    importance_sampling_level: Literal["token", "sequence"] = _f(
        "token",
        "token: one ratio per token (GRPO); sequence: the length-normalised sequence ratio of GSPO "
        "(arXiv 2507.18071, with loss_type grpo), recommended for MoE models such as the Qwen3-Omni thinker.",
    )
    epsilon: float = _f(0.2, "Lower clip range of the ratio (PPO/GRPO 0.2).")
    epsilon_high: float | None = _f(
        None,
        "Upper clip range (null = epsilon). DAPO's clip-higher: 0.28; GSPO clips sequence ratios at "
        "3e-4 / 4e-4 (epsilon / epsilon_high).",
    )
    scale_rewards: Literal["group", "batch", "none"] = _f(
        "group",
        "Advantage = (reward - group mean) / std of the group (GRPO), of the batch, or not divided "
        "(none: Dr. GRPO, which found the std division biases towards too easy and too hard questions).",
    )
    mask_truncated_completions: bool = _f(
        False,
        "DAPO's overlong filtering: completions cut at max_completion_length get no loss (their "
        "reward still counts in the group's baseline).",
    )
    overlong_buffer_tokens: int | None = _f(
        None,
        "DAPO's soft overlong punishment (reward `overlong`, weight in reward_weights): 0 up to "
        "max_completion_length - buffer tokens, then falling linearly to -1 at max_completion_length "
        "(null = a fifth of max_completion_length: DAPO's 4,096 of 20,480).",
    )
    dynamic_sampling: bool = _f(
        False,
        "DAPO's dynamic sampling: groups whose rewards all agree (zero advantage, no policy gradient) are "
        "dropped and replaced by groups of newly drawn prompts, generated a batch at a time "
        "(train/dynamic_sampling.py); counts are logged as train/dynamic_sampling/*.",
    )
    dynamic_sampling_max_rounds: int = _f(
        10,
        "Extra generation batches dynamic sampling may draw per step before it trains on what it has "
        "(DAPO's max_num_gen_batches, 10 in its recipe); groups it could not replace are counted as unfilled.",
    )
    log_completions_every: int = _f(50, "Log sample completions every N steps (0 = never).")
    use_vllm: bool = _f(
        False,
        "Sample rollouts from a vLLM server started from .venv-vllm (`make vllm`), each request with its "
        "prompt's audio; the policy's merged weights are loaded into it every vllm_sync_every steps.",
    )
    vllm_sync_every: int = _f(
        1, "Optimizer steps between weight syncs into the vLLM server (1 = every rollout is on-policy)."
    )
    vllm_importance_sampling: bool = _f(
        True,
        "trl's importance-sampling correction of vLLM rollouts (sequence_mask, ratio cap 3.0): the "
        "trainer's log-probs against the server's. Needed when vllm_sync_every > 1.",
    )
    vllm_max_model_len: int = _f(4096, "The vLLM server's context length (prompt, audio tokens, completion).")
    vllm_args: str = _f(
        "", "Extra vLLM server flags, as --grpo.vllm_args='--enforce-eager' (no compile: starts faster)."
    )
    vllm_devices: str | None = _f(
        None, "CUDA_VISIBLE_DEVICES of the vLLM server, e.g. '7' with training on 0-6 (null = inherit)."
    )


@dataclass
class WandbConfig:
    report_to: Literal["wandb", "none"] = _f("none", "wandb = log to Weights & Biases (rank 0 only).")
    project: str = _f("audio-reasoning-tuner", "W&B project.")
    run_name: str | None = _f(None, "W&B run name (null = output_dir's name).")
    tags: list[str] = _f([], "W&B tags.")
    mode: Literal["auto", "online", "offline"] = _f(
        "auto", "auto = online when credentials and the W&B host are reachable, else offline."
    )
    wandb_dir: str | None = _f(None, "Where W&B writes its run folder (null = output_dir).")
    log_adapter_artifact: bool = _f(False, "Upload the final adapter as a W&B artifact.")


@dataclass
class EvalAtEndConfig:
    enabled: bool = _f(False, "Run eval.run on the adapter after training.")
    split: str = _f("test", "Split of dataset_dir to evaluate.")
    max_new_tokens: int = _f(256, "Generation length for the eval.")
    batch_size: int = _f(8, "Eval generation batch size.")
    limit: int | None = _f(None, "Evaluate only the first N items.")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval_at_end: EvalAtEndConfig = field(default_factory=EvalAtEndConfig)

    def __post_init__(self) -> None:
        _validate(self)


def _validate(cfg: TrainConfig) -> None:
    """Cross-field checks the type system cannot express; a bad value fails before any model loads."""
    t = cfg.training
    if t.max_steps == 0 or t.max_steps < -1:
        raise ConfigError(f"training.max_steps must be -1 or > 0, got {t.max_steps}")
    if t.per_device_train_batch_size < 1 or t.gradient_accumulation_steps < 1:
        raise ConfigError("training batch size and gradient_accumulation_steps must be >= 1")
    if not 0 <= t.warmup_ratio < 1:  # transformers would read 1 or more as a number of steps
        raise ConfigError(f"training.warmup_ratio is a share of the steps, in [0, 1); got {t.warmup_ratio}")
    if t.bf16 and cfg.model.dtype == "float16":
        raise ConfigError("bf16 training with float16 weights: set model.dtype to bfloat16 or float32")
    from train.rewards import REWARDS  # the registry is the one list of reward names

    unknown = sorted(set(cfg.grpo.reward_weights) - set(REWARDS))
    if unknown:
        raise ConfigError(f"grpo.reward_weights: unknown reward(s) {unknown}; known: {', '.join(REWARDS)}")
    for name, w in cfg.grpo.reward_weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"grpo.reward_weights.{name}: expected a number, got {w!r}")
    if cfg.lora.r < 1:
        raise ConfigError(f"lora.r must be >= 1, got {cfg.lora.r}")
    _validate_grpo_recipe(cfg)
    if cfg.grpo.use_vllm:
        _validate_vllm_rollouts(cfg)


def _validate_grpo_recipe(cfg: TrainConfig) -> None:
    """GRPO options that contradict each other, named by their keys (checked for SFT configs too:
    their grpo section is unused, but a contradiction there is still a typo worth reporting)."""
    g = cfg.grpo
    if g.num_generations < 2:
        what = (
            "grpo.dynamic_sampling drops groups whose rewards all agree, which a group of one always does"
            if g.dynamic_sampling
            else "a group of one has no baseline to compare with"
        )
        raise ConfigError(f"grpo.num_generations must be >= 2, got {g.num_generations}: {what}")
    if g.temperature <= 0 or not 0 < g.top_p <= 1:
        raise ConfigError(
            f"grpo.temperature must be > 0 and grpo.top_p in (0, 1], got {g.temperature}, {g.top_p}"
        )
    if g.epsilon <= 0 or (g.epsilon_high is not None and g.epsilon_high < g.epsilon):
        raise ConfigError(
            f"grpo.epsilon must be > 0 and grpo.epsilon_high >= grpo.epsilon (clip-higher widens the upper "
            f"bound only), got {g.epsilon}, {g.epsilon_high}"
        )
    # trl 1.16 only warns about these two; both make the loss something other than the named method.
    if g.loss_type == "luspo" and g.importance_sampling_level != "sequence":
        raise ConfigError(
            "grpo.loss_type: luspo is a sequence-level loss: set grpo.importance_sampling_level: sequence"
        )
    if g.loss_type == "vespo" and g.importance_sampling_level != "token":
        raise ConfigError(
            "grpo.loss_type: vespo computes its own sequence weights from token ratios: set "
            "grpo.importance_sampling_level: token"
        )
    buffer = g.overlong_buffer_tokens
    if buffer is not None and not 0 < buffer < g.max_completion_length:
        raise ConfigError(
            f"grpo.overlong_buffer_tokens must be in [1, grpo.max_completion_length={g.max_completion_length}), "
            f"got {buffer}"
        )
    if g.dynamic_sampling:
        _validate_dynamic_sampling(cfg)


def _validate_dynamic_sampling(cfg: TrainConfig) -> None:
    g, t = cfg.grpo, cfg.training
    if g.dynamic_sampling_max_rounds < 1:
        raise ConfigError(
            f"grpo.dynamic_sampling_max_rounds must be >= 1 with grpo.dynamic_sampling, got {g.dynamic_sampling_max_rounds}"
        )
    rows = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if rows % g.num_generations:
        # trl hands each rank a contiguous slice of the generation batch; a group that straddles two
        # ranks could not be dropped or kept as a whole by either.
        raise ConfigError(
            f"grpo.dynamic_sampling: each rank's generation batch (training.per_device_train_batch_size x "
            f"training.gradient_accumulation_steps = {rows} completions) must hold whole groups of "
            f"grpo.num_generations = {g.num_generations}"
        )


def _validate_vllm_rollouts(cfg: TrainConfig) -> None:
    g = cfg.grpo
    if g.vllm_sync_every < 1:
        raise ConfigError(f"grpo.vllm_sync_every must be >= 1, got {g.vllm_sync_every}")
    if g.vllm_sync_every > 1 and not g.vllm_importance_sampling:
        raise ConfigError(
            f"grpo.vllm_sync_every: {g.vllm_sync_every} samples rollouts from a policy up to "
            f"{g.vllm_sync_every - 1} step(s) old; without grpo.vllm_importance_sampling nothing corrects for it "
            "(set vllm_sync_every: 1 or vllm_importance_sampling: true)"
        )
    if cfg.lora.use_dora:
        raise ConfigError(
            "grpo.use_vllm with lora.use_dora: DoRA weights are not folded into the synced weights"
        )
    if cfg.training.deepspeed and _zero_stage(cfg.training.deepspeed) == 3:
        raise ConfigError(
            "grpo.use_vllm under ZeRO-3: rank 0 would write partitioned (empty) weights into the server; "
            "use ZeRO-2 (configs/deepspeed/zero2.json)"
        )


def _zero_stage(path: str) -> int:
    import json
    from pathlib import Path

    try:
        return int(
            json.loads(Path(path).read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage", 0)
        )
    except (OSError, ValueError):
        return 0  # a missing or unreadable JSON fails where DeepSpeed reads it, with its own message


def load_config(argv: list[str]) -> TrainConfig:
    """Parse `--config x.yaml` plus `--key value` overrides into a TrainConfig."""
    return parse_config(TrainConfig, argv)
