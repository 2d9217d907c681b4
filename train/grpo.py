"""GRPO recipe: reinforce an audio LLM with verifiable rewards (accuracy + format [+ length]).

Reads top to bottom, the order a run happens in:
  1. processor and model     (the family module, as in the SFT recipe)
  2. LoRA                    (fresh, or continue the SFT adapter `lora.init_adapter`: SFT -> GRPO)
  3. prompts                 (data_prep's rendered user turn, `messages[:-1]`; the answer stays a column)
  4. rewards                 (train/rewards.py, weights from `grpo.reward_weights`)
  5. trainer                 (AudioGRPOTrainer: trl's GRPOTrainer carrying the audio, see below)
  6. train                   (resume from `latest` or a checkpoint path)
  7. save                    (PEFT adapter, processor, run_config.yaml, run_info.json, trainer_state)
  8. eval at end (optional)  (eval.run on the saved adapter)
Entry point: `train.py` with `training.method: grpo`
(`deepspeed --num_gpus 2 train.py --config configs/tiny/grpo.yaml`).

Why a subclass of trl's GRPOTrainer at all (trl 1.16, measured): the stock trainer generates with
the audio, but its log-prob forward (`_get_per_token_logps_and_entropies`) only forwards image
inputs, so the policy, old and reference log-probs, hence the loss, are computed without the audio,
silently. Its `__init__` also reads `model.config.image_token_id`, which Qwen2-Audio lacks.
`AudioGRPOTrainer` is the smallest adaptation we found; see its docstring.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformers import Trainer, set_seed
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from common.logging_utils import is_main_process
from models.inputs import encode_prompts
from train import components, label_only_loss, rollouts, run_files, tracking
from train.config import TrainConfig
from train.dynamic_sampling import (
    SamplingState,
    concat_rows,
    group_has_variance,
    refill_prompt_indices,
    take_groups,
    zero_variance_share,
)
from train.rewards import completion_text, reward_functions

logger = logging.getLogger(__name__)
# Logit given to tokens generation never samples: exp() is 0 in fp32 and bf16, and unlike -inf it
# keeps entropies finite (0 * -inf is nan).
SUPPRESSED_LOGIT = -1.0e4


def main(cfg: TrainConfig) -> Path:
    """Run one GRPO job end to end; returns the output dir holding the adapter."""
    out = Path(cfg.training.output_dir)
    set_seed(cfg.training.seed)

    # 1. processor and model
    family, processor, model = components.load_model_and_processor(cfg)

    # 2. LoRA: fresh adapter, or `lora.init_adapter` continued (SFT -> GRPO)
    model = components.add_lora(model, family, cfg.lora)

    # 3. prompts: the user turn data_prep rendered; `choices`/`answer_index` ride along for rewards
    manifest = components.read_manifest(cfg.data)
    components.check_dataset_family(manifest, family)
    train_ds, skipped = components.load_fitting_split(
        cfg.data, cfg.data.train_split, family, processor, cfg.data.max_train_samples
    )
    train_ds = with_prompts(train_ds)

    # 4. rewards
    reward_funcs, weights = reward_functions(
        cfg.grpo.reward_weights,
        thinking_budget=cfg.grpo.thinking_budget_tokens,
        length_penalty_per_unit=cfg.grpo.length_penalty,
        count=functools.partial(count_tokens, processor.tokenizer),
        max_completion_length=cfg.grpo.max_completion_length,
        overlong_buffer=cfg.grpo.overlong_buffer_tokens,
    )

    # 5. trainer (+ tracking: W&B on rank 0)
    run_info = run_files.build_run_info(cfg, family, manifest, train_ds, skipped)
    run_files.write_run_files(out, cfg, run_info)
    wandb_mode = tracking.start_run(cfg, run_info)
    trainer = AudioGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=grpo_args(cfg, weights),
        train_dataset=train_ds,
        processing_class=processor,
        callbacks=tracking.tracking_callbacks(cfg, wandb_mode),
        family=family,
        log_completions_every=cfg.grpo.log_completions_every,
        vllm_importance_sampling=cfg.grpo.vllm_importance_sampling,
        dynamic_sampling_max_rounds=cfg.grpo.dynamic_sampling_max_rounds if cfg.grpo.dynamic_sampling else 0,
    )

    # 6. train (rollouts from a vLLM server with `grpo.use_vllm`, else from the policy's generate)
    with rollout_server(cfg, family, processor, trainer) as rollout_source:
        trainer.rollouts = rollout_source
        result = trainer.train(resume_from_checkpoint=components.resolve_resume(cfg.training))
    final = {f"train/{k}": v for k, v in result.metrics.items()}
    final.update({f"train/{k}": v for k, v in trainer.sampling_totals.items()})

    # 7. save (the prompts the length pre-filter dropped, by reason, also to W&B)
    counts = run_files.data_counts({"train": skipped})
    tracking.log_metrics(run_files.count_metrics(counts))
    save_grpo_run(trainer, cfg, run_info, final, counts)

    # 8. eval at end (rank 0, on the saved adapter)
    run_files.free_trainer(trainer)
    if cfg.eval_at_end.enabled and is_main_process():
        tracking.log_metrics(run_files.eval_at_end(cfg, family, out))
    tracking.finish_run(cfg, out)
    return out


# 3. prompts -------------------------------------------------------------------------------------


def with_prompts(ds: Any) -> Any:
    """Add trl's `prompt` column: the conversation up to the assistant turn (`messages[:-1]`).

    The assistant turn (the SFT target) is never shown to the policy; the correct option reaches
    the reward functions only through the `answer_index` column.
    """
    return ds.map(lambda row: {"prompt": row["messages"][:-1]}, desc="prompts")


def encode_once_per_prompt(family: ModuleType, processor: Any, rows: list[dict]) -> dict[str, torch.Tensor]:
    """`encode_prompts` for a generation batch, decoding and featurising each distinct prompt once.

    trl repeats every prompt `num_generations` times in a row; the rows are expanded back so the
    result still has one row (ids and audio features) per completion.
    """
    keys = [row.get("id") for row in rows]
    if None in keys:  # rows without ids (a hand-made dataset): no way to tell repeats apart
        batch = encode_prompts(family, processor, rows)
        check_audio_batch(family, rows, batch)
        return batch
    unique = list(dict.fromkeys(keys))
    firsts = [rows[keys.index(k)] for k in unique]
    batch = encode_prompts(family, processor, firsts)
    check_audio_batch(family, firsts, batch)
    index = torch.tensor([unique.index(k) for k in keys])
    return {name: tensor[index] for name, tensor in batch.items()}


def rollout_server(cfg: TrainConfig, family: ModuleType, processor: Any, trainer: Any) -> Any:
    """A vLLM server for the rollouts (train/rollouts.py) when `grpo.use_vllm`, else nothing."""
    if not cfg.grpo.use_vllm:
        return contextlib.nullcontext(None)
    from accelerate.utils import broadcast_object_list

    return rollouts.vllm_rollouts(
        cfg, family, processor, is_main=trainer.accelerator.is_main_process,
        broadcast=lambda value: broadcast_object_list([value])[0],
    )  # fmt: skip


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of `text` (the thinking budget is in the model's tokens, not words)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# 5. trainer -------------------------------------------------------------------------------------


def grpo_args(cfg: TrainConfig, reward_weights: list[float], **overrides: Any) -> GRPOConfig:
    """trl.GRPOConfig from our config; trl's defaults that bite (bf16, checkpointing) set explicitly.

    `overrides` go to GRPOConfig as they are (trl knobs the YAML does not expose, e.g.
    `steps_per_generation`, `loss_type`).
    """
    g = cfg.grpo
    kwargs: dict[str, Any] = dict(
        **components.shared_trainer_kwargs(cfg),
        eval_strategy="no",
        remove_unused_columns=False,  # rewards need choices/answer_index; prompts need messages
        # GRPO proper
        num_generations=g.num_generations,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        max_completion_length=g.max_completion_length,
        reward_weights=reward_weights,
        # the recipe options (train/config.py GrpoSettings says where each default comes from)
        loss_type=g.loss_type,
        importance_sampling_level=g.importance_sampling_level,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        log_completions=False,  # the completions table is ours (AudioGRPOTrainer.log), W&B rank 0
        # trl 1.16 turns the MoE load-balancing loss on whenever the text config merely *has*
        # `output_router_logits` (even False) and a coefficient; our MoE families keep the router
        # frozen and run with router logits off (models/qwen3_omni_moe.py), so the loss is 0 here.
        router_aux_loss_coef=0.0,
    )
    merged = {**kwargs, **overrides}
    check_keeps_audio(merged)
    return GRPOConfig(**merged)


# trl settings under which completions would be generated or scored without the audio (trl 1.16).
AUDIO_LOSING_SETTINGS = {
    "use_vllm": "trl's vLLM path sends only the prompt token ids to vLLM, so completions would be "
    "sampled without the audio (and then scored with it); our `grpo.use_vllm: true` sends the audio",
    "use_transformers_continuous_batching": "trl's continuous-batching generation takes token ids "
    "only, so completions would be sampled without the audio",
}


def check_keeps_audio(settings: Any) -> None:
    """Refuse trl settings that would generate or score without the audio, naming the setting.

    `settings`: a GRPOConfig or the dict of its keyword arguments.
    """
    get = settings.get if isinstance(settings, dict) else functools.partial(getattr, settings)
    for name, why in AUDIO_LOSING_SETTINGS.items():
        if get(name, False):
            raise ValueError(f"GRPO with audio: `{name}=True` is not supported: {why}")


def check_audio_batch(family: ModuleType, rows: list[dict], batch: dict[str, Any]) -> None:
    """Every prompt has exactly one clip, and every audio tensor the processor returned is one the
    family's forward takes, one row per prompt; otherwise features would be dropped or misaligned.

    Each completion is scored with the feature row of its prompt (trl repeats prompts, shuffles and
    splits completions, and the feature rows travel with them), which holds only when clip rows and
    prompt rows correspond one to one.
    """
    for row in rows:
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]  # what encode_prompts renders
        n = sum(
            b.get("type") == "audio"
            for m in prompt
            if not isinstance(m["content"], str)
            for b in m["content"]
        )
        if n != 1:
            raise ValueError(
                f"GRPO with audio: sample {row.get('id')!r} has {n} audio clips in its prompt; exactly one "
                "clip per prompt is supported (each completion is scored with its prompt's feature row)"
            )
    keys = set(family.AUDIO_FEATURE_KEYS)
    unknown = sorted(set(batch) - keys - {"input_ids", "attention_mask"})
    if not keys or unknown or not keys <= set(batch):
        raise ValueError(
            f"GRPO with audio: family {family.NAME!r} declares AUDIO_FEATURE_KEYS "
            f"{sorted(keys)} but its processor returned {sorted(set(batch))}: audio inputs "
            f"{unknown or sorted(keys - set(batch))} would not reach the forward"
        )
    for key in keys:
        if batch[key].size(0) != len(rows):
            raise ValueError(
                f"GRPO with audio: family {family.NAME!r} gives {batch[key].size(0)} rows of {key!r} for "
                f"{len(rows)} prompts: features would not line up with their completions"
            )


@contextlib.contextmanager
def _image_token_stand_in(config: Any, token_id: int) -> Iterator[None]:
    """Give a config without `image_token_id` one for the duration of trl's __init__.

    trl reads it once, to suppress sampling of that placeholder; for an audio-only model the
    placeholder that must never be sampled is the audio token, so that is the stand-in. The
    attribute is removed again so nothing else (a saved config) ever sees it.
    """
    if getattr(config, "image_token_id", None) is not None:
        yield
        return
    config.image_token_id = token_id
    try:
        yield
    finally:
        del config.image_token_id


class AudioGRPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer, adapted in the smallest way we found to carry audio into every forward.

    Each completion's audio features (the family's AUDIO_FEATURE_KEYS, one row per completion, as trl
    repeats each prompt `num_generations` times) travel with it: into generation, into the old and
    reference log-probs, and through trl's shuffle and split into the loss micro-batches.
    Overridden, and why:
    - `__init__`: stands in the audio token for the `model.config.image_token_id` trl reads (missing
      on Qwen2-Audio) and adds the audio token to the suppressed tokens of generation.
    - `_generate_and_score_completions`: encodes the generation batch once with the repo's
      `encode_prompts` (the exact prompt tokens and features eval uses), exposes its audio to the
      old/reference log-prob forwards trl runs inside, and attaches it to the returned batch.
    - `_tokenize_prompts`: hands that encoding to trl's generation instead of re-running the
      processor's chat template (which would test block keys, not types, and load audio its own way).
    - `_compute_loss`: exposes the micro-batch's audio to the policy forward.
    - `_get_per_token_logps_and_entropies`: trl's chunked loop with the image branches replaced by
      slicing the audio rows; it raises if asked to score a batch without its audio. The LM head runs
      on the completion positions only (`logits_to_keep`, train/label_only_loss.py): trl's fused head
      scores every position, padding included, when Triton is absent (CPU).
    - `log`: a W&B table of sample completions with their rewards every `log_completions_every` steps.
    - `_calculate_rewards`: keeps the weighted reward of every completion of the batch (all ranks), from
      which each generation batch logs its share of zero-variance groups (`zero_variance/sampled_share`)
      and, with `dynamic_sampling_max_rounds` > 0, DAPO's dynamic sampling replaces those groups with
      groups of newly drawn prompts (train/dynamic_sampling.py; `dynamic_sampling/*` counts).
    trl's `_compute_loss` and `_generate_and_score_completions` bodies are long and change between
    releases, so the audio reaches the log-prob forwards through `self._audio` (set for exactly the
    duration of those two calls) rather than through copies of them.
    """

    def __init__(self, *args: Any, family: ModuleType, log_completions_every: int = 0,
                 vllm_importance_sampling: bool = True, dynamic_sampling_max_rounds: int = 0,
                 **kwargs: Any):  # fmt: skip
        self.family = family
        self.dynamic_sampling_max_rounds = dynamic_sampling_max_rounds
        self.sampling_totals: dict[str, int] = {}  # run totals of the counts logged per generation batch
        self._batch_rewards: torch.Tensor | None = None
        self.log_completions_every = log_completions_every
        self.rollouts: rollouts.VLLMRollouts | None = None  # set for the run by `rollout_server`
        self._audio: dict[str, torch.Tensor] | None = None
        self._prompt_batch: dict[str, torch.Tensor] | None = None
        self._rows: list[dict] | None = None
        self._rollout_versions: list[int] = []
        self._table_step = -1
        check_keeps_audio(kwargs.get("args"))
        processor = kwargs["processing_class"]
        audio_token_id = processor.tokenizer.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
        with _image_token_stand_in(kwargs["model"].config, audio_token_id):
            super().__init__(*args, **kwargs)
        # Log-prob forwards compute the head on the completion positions only (see below).
        label_only_loss.install(self.model)
        if self.ref_model is not None:
            label_only_loss.install(self.ref_model)
        suppress = sorted({audio_token_id, *(self.generation_kwargs.get("suppress_tokens") or [])})
        self.generation_kwargs["suppress_tokens"] = suppress
        self.generation_config.suppress_tokens = suppress
        self._suppressed = torch.tensor(suppress, dtype=torch.long)
        # trl's importance-sampling correction of vLLM rollouts is gated on its own `use_vllm`, which
        # stays off in the GRPOConfig (trl's vLLM client would drop the audio): for our vLLM
        # rollouts the attribute turns the correction on; the generation itself is ours.
        self._vllm_importance_sampling = vllm_importance_sampling

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output, rewards = self._score_generation_batch(inputs)
        if not self.model.training:
            return output
        share = zero_variance_share(rewards, self.num_generations)
        self._metrics["train"]["zero_variance/sampled_share"].append(share)
        groups = rewards.numel() // self.num_generations
        self._add_totals({"sampled_groups": groups, "zero_variance/sampled_groups": round(share * groups)})
        if self.dynamic_sampling_max_rounds:
            output = self._dynamic_sampling(inputs, output, rewards)
        return output

    def _score_generation_batch(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], torch.Tensor]:
        """trl's generation and scoring of one batch, with the audio; also the weighted reward of every
        completion of the whole batch (all ranks), in trl's row order."""
        batch = encode_once_per_prompt(self.family, self.processing_class, inputs)
        # The HF Trainer's placement (device, and DeepSpeed's dtype for float tensors); GRPOTrainer
        # overrides `_prepare_inputs` with its generation buffer, hence the explicit base class.
        batch = Trainer._prepare_inputs(self, batch)
        # Without DeepSpeed nothing casts the features; a bf16 encoder would refuse fp32 input.
        for key in self.family.AUDIO_FEATURE_KEYS:
            if batch[key].is_floating_point():
                batch[key] = batch[key].to(self.model.dtype)
        self._prompt_batch, self._rows = batch, inputs
        self._audio = self._audio_of(batch)
        self.use_vllm = self.rollouts is not None and self._vllm_importance_sampling
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._prompt_batch, self._rows, audio, self._audio = None, None, self._audio, None
        output.update(audio)  # per-row tensors: trl shuffles and splits them with the completions
        if self.rollouts is not None:
            versions = torch.tensor(self._rollout_versions, device=output["completion_ids"].device)
            output["policy_version"] = versions  # per completion: the step whose weights sampled it
            lag = self.state.global_step - int(versions.min())
            self._metrics["train"]["rollout/policy_lag"].append(float(lag))
        rewards, self._batch_rewards = self._batch_rewards, None
        return output, rewards

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # trl's own weighted sum (its `sum_then_normalize`); NaN where every function declined to score
        total = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        self._batch_rewards = total.masked_fill(torch.isnan(per_func).all(dim=1), torch.nan)
        return per_func

    def _dynamic_sampling(
        self, inputs: list[dict], first: dict[str, Any], rewards: torch.Tensor
    ) -> dict[str, Any]:
        """DAPO's dynamic sampling: replace zero-variance groups by groups of newly drawn prompts.

        Every rank sees the rewards of the whole batch, so each computes the same rounds for all
        ranks (train/dynamic_sampling.py); a round generates a whole batch of new prompts on every rank.
        """
        n, world = self.num_generations, self.accelerator.num_processes
        state = SamplingState(world_size=world, groups_per_rank=len(inputs) // n)
        state.add_round(group_has_variance(rewards, n))
        batches = [first]
        while state.short() and len(batches) <= self.dynamic_sampling_max_rounds:
            batch, rewards = self._score_generation_batch(
                self._refill_rows(state.groups_per_rank, len(batches))
            )
            batches.append(batch)
            state.add_round(group_has_variance(rewards, n))
        plan = state.plan(self.accelerator.process_index)
        output = concat_rows(
            [take_groups(batches[r], [g], n) for r, g in plan.groups], self._tokenizer.pad_token_id
        )
        loss_mask = (
            output["completion_mask"] * output["tool_mask"]
            if "tool_mask" in output
            else output["completion_mask"]
        )
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        plans = [state.plan(rank) for rank in range(world)]
        unfilled = sum(p.unfilled for p in plans)
        counts = {
            "dynamic_sampling/rounds": len(batches) - 1,
            "dynamic_sampling/dropped_groups": state.dropped() - unfilled,
            "dynamic_sampling/refilled_groups": sum(p.refilled for p in plans),
            "dynamic_sampling/unfilled_groups": unfilled,
            # groups with variance generated in the last round beyond what the batch needed
            "dynamic_sampling/unused_groups": state.generated()
            - state.dropped()
            - (world * state.groups_per_rank - unfilled),
        }
        for key, value in counts.items():
            self._metrics["train"][key].append(float(value))
        self._metrics["train"]["zero_variance/trained_share"].append(
            unfilled / (world * state.groups_per_rank)
        )
        self._add_totals(counts)
        return output

    def _add_totals(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.sampling_totals[key] = self.sampling_totals.get(key, 0) + value

    def _refill_rows(self, n_prompts: int, round_index: int) -> list[dict]:
        """`n_prompts` training prompts drawn for a refill round, each repeated as trl's sampler does."""
        indices = refill_prompt_indices(
            n_prompts, len(self.train_dataset), seed=self.args.seed, step=self.state.global_step,
            round_index=round_index, rank=self.accelerator.process_index,
        )  # fmt: skip
        return [dict(self.train_dataset[i]) for i in indices for _ in range(self.num_generations)]

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        if self.rollouts is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)  # fmt: skip
        step = self.state.global_step
        if self.rollouts.sync_due(step):
            self.rollouts.sync(self.accelerator.unwrap_model(self.model), step,
                               is_main=self.accelerator.is_main_process, barrier=self.accelerator.wait_for_everyone)  # fmt: skip
        ids, logprobs = self.rollouts.generate(
            self._rows, prompt_ids, max_tokens=self.max_completion_length, temperature=self.temperature,
            top_p=self.top_p, stop_ids=self.eos_token_ids, suppress_ids=self.generation_config.suppress_tokens,
            step=step, rank=self.accelerator.process_index,
        )  # fmt: skip
        self._rollout_versions = [self.rollouts.version] * len(ids)
        return ids, logprobs

    def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict[str, torch.Tensor]]:
        batch = self._prompt_batch
        if batch is None or batch["input_ids"].size(0) != len(prompts):
            raise RuntimeError("prompts must be encoded by _generate_and_score_completions first")
        # trl re-pads the prompt ids itself; drop encode_prompts' left padding
        ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        return ids, None, self._audio_of(batch)

    def _audio_of(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The family's audio feature tensors of a batch: one row per prompt, hence per completion."""
        return {k: batch[k] for k in self.family.AUDIO_FEATURE_KEYS}

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._audio = self._audio_of(inputs)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._audio = None

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **image_inputs: Any,  # trl's image kwargs: always None for audio prompts
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        audio = self._audio
        if audio is None or any(v.size(0) != input_ids.size(0) for v in audio.values()):
            raise RuntimeError("log-probs requested without the batch's audio; the loss would ignore it")
        if compute_aux_loss:
            # trl asks for it when the config sets output_router_logits (MoE); the completion-only
            # head below does not compute the router load-balancing loss, so refuse rather than drop it.
            raise NotImplementedError(
                "GRPO with the MoE router aux loss (output_router_logits) is not supported"
            )
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            with self.accelerator.autocast():
                # The LM head on the completion positions only (train.label_only_loss): position t
                # predicts token t + 1, so the last k + 1 positions score the k completion tokens.
                logits = model(
                    input_ids=ids,
                    attention_mask=mask,
                    **{k: v[start:end] for k, v in audio.items()},
                    logits_to_keep=logits_to_keep + 1,
                ).logits[:, :-1]
            # The policy that samples never emits the suppressed tokens (the audio placeholder):
            # score completions under that same distribution, so trainer and sampler log-probs agree
            # (a random tiny model gives the placeholder ~1e-3, which biased vLLM's IS ratio by 5%).
            logits = logits.index_fill(-1, self._suppressed.to(logits.device), SUPPRESSED_LOGIT)
            targets, padding = ids[:, -logits_to_keep:], mask[:, -logits_to_keep:] == 0
            if compute_entropy:
                lp, ent = selective_log_softmax_and_entropy(logits, targets, temperature=self.temperature)
                entropies.append(ent.masked_fill(padding, 0.0))
            else:
                lp = selective_log_softmax(logits, targets, temperature=self.temperature)
            logps.append(lp.masked_fill(padding, 0.0))  # as trl's fused head: 0 where nothing is scored
        return (
            torch.cat(logps, dim=0),
            torch.cat(entropies, dim=0) if compute_entropy else None,
            None,
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step = self.state.global_step
        every = self.log_completions_every
        if every and step % every == 0 and step != self._table_step and self.accelerator.is_main_process:
            self._table_step = step
            log_completions_table(self._logs, self.reward_func_names, self.reward_weights.tolist(), step)
        super().log(logs, start_time)


def _prompt_question(prompt: list[dict]) -> str:
    """The user's text (the question with its options) from a prompt conversation."""
    for message in reversed(prompt):
        if message["role"] == "user":
            return completion_text([message])
    return ""


def log_completions_table(logs: dict, reward_names: list[str], weights: list[float], step: int) -> None:
    """`train/completions` W&B table: the latest generation batch with each reward and the total."""
    import wandb

    if wandb.run is None:
        return
    columns = ["step", "prompt", "completion", *reward_names, "reward", "advantage"]
    rows = []
    for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"])):
        per_func = [logs["rewards"][name][i] for name in reward_names]
        total = sum(w * r for w, r in zip(weights, per_func))
        text = completion_text(completion)
        rows.append([step, _prompt_question(prompt), text, *per_func, total, logs["advantages"][i]])
    wandb.log({"train/completions": wandb.Table(columns=columns, data=rows)}, step=step)


# 7. save ----------------------------------------------------------------------------------------


def save_grpo_run(
    trainer: AudioGRPOTrainer, cfg: TrainConfig, run_info: dict, final: dict, counts: dict | None = None
) -> None:
    """The shared save (train.run_files), with the reward weights and data counts recorded and
    trl's reference copy removed."""
    rewards = dict(zip(trainer.reward_func_names, trainer.reward_weights.tolist()))
    run_files.save_run(trainer, cfg, run_info, final, reward_functions=rewards, **(counts or {}))
    if trainer.is_world_process_zero():
        # trl keeps a frozen copy of the starting adapter named "ref" as the KL reference (beta > 0),
        # and PEFT saves it beside the trained one; it is only the starting point, so it goes.
        shutil.rmtree(Path(cfg.training.output_dir) / "ref", ignore_errors=True)
