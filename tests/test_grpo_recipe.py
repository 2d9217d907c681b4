"""GRPO recipe options (issue 20): each one changes what the trainer does, contradictions are config
errors naming the keys, and dynamic sampling keeps the audio with every refilled completion.

The trainer tests run the 1k-vocabulary tiny Qwen2-Audio (`tiny_qwen2_audio_fast`) on prompts of the
synthetic benchmark, with completions of a few tokens: one generation batch each, or two steps.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import grpo_test_config

from common.config import ConfigError
from models import get_family
from train import components, grpo
from train.config import TrainConfig
from train.dynamic_sampling import (
    SamplingState,
    concat_rows,
    group_has_variance,
    refill_prompt_indices,
    take_groups,
    zero_variance_share,
)
from train.rewards import overlong_penalty, reward_functions

FAMILY = get_family("qwen2_audio")


def _cfg(model_dir=".", dataset_dir=".", out=".", training: dict | None = None, **grpo_cfg) -> TrainConfig:
    training = {"per_device_train_batch_size": 8, **(training or {})}
    grpo_cfg = {"num_generations": 4, "max_completion_length": 4, **grpo_cfg}
    return grpo_test_config(model_dir, dataset_dir, out, training=training, grpo=grpo_cfg)


# --- contradictions are config errors that name the keys -------------------------------------------


@pytest.mark.parametrize(
    ("grpo_cfg", "training", "message"),
    [
        ({"dynamic_sampling": True, "num_generations": 1}, {}, r"grpo\.num_generations must be >= 2.*dynamic_sampling"),
        ({"loss_type": "ppo"}, {}, r"grpo\.loss_type: 'ppo' is not one of"),
        ({"importance_sampling_level": "group"}, {}, r"grpo\.importance_sampling_level"),
        ({"loss_type": "luspo"}, {}, r"grpo\.loss_type: luspo.*grpo\.importance_sampling_level: sequence"),
        ({"loss_type": "vespo", "importance_sampling_level": "sequence"}, {}, r"vespo.*importance_sampling_level: token"),
        ({"epsilon": 0.2, "epsilon_high": 0.1}, {}, r"grpo\.epsilon_high >= grpo\.epsilon"),
        ({"scale_rewards": "std"}, {}, r"grpo\.scale_rewards"),
        ({"overlong_buffer_tokens": 4}, {}, r"grpo\.overlong_buffer_tokens must be in \[1, grpo\.max_completion_length=4\)"),
        ({"dynamic_sampling": True, "dynamic_sampling_max_rounds": 0}, {}, r"grpo\.dynamic_sampling_max_rounds"),
        ({"dynamic_sampling": True}, {"per_device_train_batch_size": 6},
         r"per_device_train_batch_size x training\.gradient_accumulation_steps = 6.*grpo\.num_generations = 4"),
    ],
)  # fmt: skip
def test_contradicting_options_are_config_errors_naming_the_keys(grpo_cfg, training, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(training=training, **grpo_cfg)


@pytest.mark.parametrize(
    ("key", "value"),
    [("loss_type", "dr_grpo"), ("importance_sampling_level", "sequence"), ("epsilon", 0.1), ("epsilon_high", 0.28),
     ("scale_rewards", "none"), ("mask_truncated_completions", True), ("temperature", 1.5), ("num_generations", 8),
     ("beta", 0.001)],
)  # fmt: skip
def test_each_recipe_option_reaches_trls_config(key, value):
    args = grpo.grpo_args(_cfg(**{key: value}), [1.0])
    assert getattr(args, key) == value


# --- the pure pieces --------------------------------------------------------------------------------


def test_overlong_penalty_is_dapos_soft_punishment():
    """DAPO eq. 13 with L_max 10, L_cache 4: 0 up to 6 tokens, then -1/4 a token down to -1 at 10."""
    ids = [[1] * n for n in (3, 6, 7, 9, 10)]
    assert overlong_penalty(ids, max_completion_length=10, buffer=4) == [0.0, 0.0, -0.25, -0.75, -1.0]
    assert overlong_penalty([[1] * 9], max_completion_length=10) == [-0.5]  # buffer: a fifth (2 tokens)
    funcs, weights = reward_functions(
        {"accuracy": 1.0, "overlong": 0.5}, max_completion_length=10, overlong_buffer=4
    )
    assert weights == [1.0, 0.5] and funcs[1](completion_ids=ids) == [0.0, 0.0, -0.25, -0.75, -1.0]


def test_group_variance_and_the_plan_of_each_rank():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.7, 0.7, float("nan"), 0.0])
    assert group_has_variance(rewards, 2).tolist() == [False, True, False, False]
    assert zero_variance_share(rewards, 2) == 0.75
    state = SamplingState(world_size=2, groups_per_rank=2)
    state.add_round(torch.tensor([False, True, False, False]))  # rank 0 keeps 1 of 2, rank 1 none
    assert state.short()
    state.add_round(torch.tensor([True, True, True, False]))
    assert state.short() and state.dropped() == 4 and state.generated() == 8  # rank 1: 1 of 2
    assert state.plan(0).groups == [(0, 1), (1, 0)] and state.plan(0).refilled == 1
    assert state.plan(1).groups == [(1, 0), (0, 0)] and state.plan(1).unfilled == 1  # bound hit: a zero group


def test_concat_pads_prompts_left_and_completions_right_and_refuses_unknown_keys():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "completion_ids": torch.tensor([[7]]), "advantages": torch.tensor([1.0]),
         "num_items_in_batch": torch.tensor(1)}  # fmt: skip
    b = {"prompt_ids": torch.tensor([[4, 5, 6]]), "completion_ids": torch.tensor([[8, 9]]),
         "advantages": torch.tensor([2.0]), "num_items_in_batch": torch.tensor(2)}  # fmt: skip
    out = concat_rows([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [4, 5, 6]]
    assert out["completion_ids"].tolist() == [[7, 0], [8, 9]] and "num_items_in_batch" not in out
    assert take_groups(b, [0], 1)["advantages"].tolist() == [2.0]
    with pytest.raises(TypeError, match="'num_images'"):
        concat_rows([{**a, "num_images": [1]}, {**b, "num_images": [1]}], pad_token_id=0)


def test_refill_prompts_are_seeded_by_step_round_and_rank():
    def draw(**kw):
        return refill_prompt_indices(4, 100, **{"seed": 0, "step": 3, "round_index": 1, "rank": 0, **kw})

    assert draw() == draw() and len(set(draw())) == 4
    assert draw(step=4) != draw() and draw(round_index=2) != draw() and draw(rank=1) != draw()


# --- the trainer: each option changes what it does ---------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_qwen2_audio_fast, prepared_synth):
    """Processor, a LoRA model and 8 training rows whose prompts all differ (ids in the text)."""
    from datasets import load_from_disk

    processor = FAMILY.load_processor(str(tiny_qwen2_audio_fast))
    model = FAMILY.load_model(str(tiny_qwen2_audio_fast), dtype="float32", attn_implementation="eager")
    model = components.add_lora(model, FAMILY, _cfg().lora)
    ds = load_from_disk(str(prepared_synth / "hf" / "train")).select(range(8))
    rows = ds.to_list()
    for row in rows:
        for block in row["messages"][1]["content"]:
            if block["type"] == "text":
                block["text"] = f"[{row['id']}] {block['text']}"
    return {"processor": processor, "model": model, "rows": rows, "features": ds.features,
            "dir": tiny_qwen2_audio_fast, "data": prepared_synth}  # fmt: skip


def varied_reward(completion_ids, **kwargs):
    """Differs between random completions (so groups have variance) and is a pure function of them."""
    return [float(sum(ids) % 97) / 97 for ids in completion_ids]


def _trainer(setup, tmp_path, reward_funcs=(varied_reward,), training=None, rounds=0, **grpo_cfg):
    from datasets import Dataset

    cfg = _cfg(setup["dir"], setup["data"], tmp_path / "run", training, **grpo_cfg)
    trainer = grpo.AudioGRPOTrainer(
        model=setup["model"], reward_funcs=list(reward_funcs), args=grpo.grpo_args(cfg, [1.0] * len(reward_funcs)),
        train_dataset=grpo.with_prompts(Dataset.from_list(setup["rows"], features=setup["features"])),
        processing_class=setup["processor"], family=FAMILY, dynamic_sampling_max_rounds=rounds,
    )  # fmt: skip
    trainer.model.train()
    return trainer


def _generation_rows(trainer, setup, prompts: int = 2) -> list[dict]:
    """What trl's sampler hands one step: each prompt repeated num_generations times."""
    from datasets import Dataset

    rows = grpo.with_prompts(Dataset.from_list(setup["rows"][:prompts], features=setup["features"]))
    return [dict(r) for r in rows for _ in range(trainer.num_generations)]


@pytest.fixture(scope="module")
def batch(setup, tmp_path_factory):
    """One scored generation batch (2 prompts x 4), the policy's own log-probs as `now`."""
    trainer = _trainer(setup, tmp_path_factory.mktemp("batch"))
    torch.manual_seed(0)
    out, _ = trainer._score_generation_batch(_generation_rows(trainer, setup))
    trainer._audio = trainer._audio_of(out)
    with torch.no_grad():
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
        out["now"], _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, out["completion_ids"].size(1)
        )
    out["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5])  # positive and negative
    return out


def _loss(
    setup, tmp_path, batch: dict, old_shift: torch.Tensor | float = 0.0, **grpo_cfg
) -> tuple[float, dict]:
    trainer = _trainer(setup, tmp_path, **grpo_cfg)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which does not run here
    inputs = {k: v for k, v in batch.items() if k != "now"}
    inputs["old_per_token_logps"] = batch["now"] + old_shift  # ratio = exp(-shift) where the policy is `now`
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, inputs)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


def test_temperature_group_size_and_beta_change_scoring(setup, batch, tmp_path):
    """Log-probs are scored at the sampling temperature (flatter at 2.0), advantages are centred per
    group of `num_generations`, and beta > 0 adds the reference log-probs to the batch."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    entropy = {}
    for temperature in (1.0, 2.0):
        trainer = _trainer(setup, tmp_path, temperature=temperature)
        trainer._audio = trainer._audio_of(batch)
        with torch.no_grad():
            _, ent, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, batch["completion_ids"].size(1), compute_entropy=True
            )
        entropy[temperature] = float((ent * batch["completion_mask"]).sum())
    assert entropy[2.0] > entropy[1.0]
    pairs = _trainer(setup, tmp_path, num_generations=2, scale_rewards="none", beta=0.04)
    out, _ = pairs._score_generation_batch(_generation_rows(pairs, setup, prompts=4))
    assert out["advantages"].shape == (8,) and torch.allclose(
        out["advantages"].view(4, 2).sum(1), torch.zeros(4), atol=1e-6
    )
    assert "ref_per_token_logps" in out and "ref_per_token_logps" not in batch


def test_loss_type_sets_the_normaliser(setup, batch, tmp_path):
    """On-policy (ratio 1) the per-token loss is -advantage: dapo divides the batch sum by its tokens,
    dr_grpo by rows x max_completion_length, grpo averages each sequence first (advantages of a group
    sum to zero, so its value is the mean advantage)."""
    mask, adv = batch["completion_mask"].float(), batch["advantages"]
    total = -(adv[:, None] * mask).sum()
    assert _loss(setup, tmp_path, batch, loss_type="dapo")[0] == pytest.approx(
        float(total / mask.sum()), abs=1e-5
    )
    assert _loss(setup, tmp_path, batch, loss_type="dr_grpo")[0] == pytest.approx(
        float(total / (8 * 4)), abs=1e-5
    )
    assert _loss(setup, tmp_path, batch, loss_type="grpo")[0] == pytest.approx(float(-adv.mean()), abs=1e-5)


def test_sequence_importance_sampling_clips_sequences_not_tokens(setup, batch, tmp_path):
    """Old log-probs alternately 0.3 above and below the policy's: each token's ratio (0.74 or 1.35) is
    outside the clip range, the sequence's (their geometric mean, ~1) inside it (GSPO)."""
    width = batch["completion_ids"].size(1)
    shift = torch.tensor([0.3 if t % 2 == 0 else -0.3 for t in range(width)])
    if width % 2:
        shift[-1] = 0.0
    token, token_metrics = _loss(setup, tmp_path, batch, shift, importance_sampling_level="token")
    sequence, sequence_metrics = _loss(
        setup, tmp_path, batch, shift, importance_sampling_level="sequence", loss_type="grpo"
    )
    assert token_metrics["clip_ratio/region_mean"] > 0.2
    assert sequence_metrics["clip_ratio/region_mean"] < 0.01
    assert token != pytest.approx(sequence, abs=1e-4)


def test_epsilon_high_lets_positive_advantages_grow_further(setup, batch, tmp_path):
    """Ratio e^0.22 = 1.25 everywhere: clipped above at 1 + 0.2, not at DAPO's 1 + 0.28."""
    _, default = _loss(setup, tmp_path, batch, -0.22)
    loss, higher = _loss(setup, tmp_path, batch, -0.22, epsilon_high=0.28)
    assert default["clip_ratio/high_mean"] > 0.2 and higher["clip_ratio/high_mean"] == 0.0


def test_scale_rewards_none_keeps_advantages_unscaled(setup, tmp_path):
    for scale in ("group", "none"):
        trainer = _trainer(setup, tmp_path, scale_rewards=scale)
        out, rewards = trainer._score_generation_batch(_generation_rows(trainer, setup))
        grouped = rewards.view(-1, 4)
        expected = grouped - grouped.mean(1, keepdim=True)
        if scale == "group":
            expected = expected / (grouped.std(1, keepdim=True) + 1e-4)
        assert torch.allclose(out["advantages"], expected.flatten(), atol=1e-5), scale


def test_mask_truncated_completions_removes_cut_completions_from_the_loss(setup, tmp_path):
    """Completions of at most 4 tokens from a random model are nearly all cut at the limit."""
    for mask_truncated in (False, True):
        trainer = _trainer(setup, tmp_path, mask_truncated_completions=mask_truncated)
        out, _ = trainer._score_generation_batch(_generation_rows(trainer, setup))
        stops = set(trainer.eos_token_ids) | {trainer._tokenizer.pad_token_id}
        cut = torch.tensor([int(row[-1]) not in stops for row in out["completion_ids"]])
        assert cut.any()
        kept = out["completion_mask"].sum(1) > 0
        assert kept[cut].any() != mask_truncated and kept[~cut].all()


def test_overlong_reward_scores_the_completions_length(setup, tmp_path):
    trainer = _trainer(setup, tmp_path, reward_funcs=reward_functions(
        {"overlong": 1.0}, max_completion_length=4, overlong_buffer=2)[0])  # fmt: skip
    out, rewards = trainer._score_generation_batch(_generation_rows(trainer, setup))
    lengths = out["completion_mask"].sum(1).tolist()
    assert rewards.tolist() == [0.0 if n <= 2 else (2 - n) / 2 for n in lengths]
    assert min(rewards.tolist()) == -1.0  # cut at the limit: the full punishment


def _some_prompts_always_right(right: set[str]):
    """A reward whose groups agree for the prompts in `right` (always 1) and vary for the others."""

    def reward(completion_ids, id, **kwargs):
        return [1.0 if i in right else v for i, v in zip(id, varied_reward(completion_ids))]

    return reward


def _features_by_prompt(setup) -> dict[tuple, torch.Tensor]:
    from models.inputs import encode_prompts

    out = {}
    for row in setup["rows"]:
        enc = encode_prompts(FAMILY, setup["processor"], [row])
        out[tuple(enc["input_ids"][0].tolist())] = enc["input_features"][0]
    return out


def test_dynamic_sampling_replaces_zero_variance_groups_with_audio_intact(setup, tmp_path):
    """Half the sampled groups agree: they are dropped and refilled with groups of new prompts, each
    completion keeping its own prompt's audio features; the counts are logged and totalled."""
    right = {setup["rows"][1]["id"]}  # the second prompt of the batch, and any refill of it
    trainer = _trainer(setup, tmp_path, reward_funcs=[_some_prompts_always_right(right)], rounds=5,
                       dynamic_sampling=True)  # fmt: skip
    out = trainer._generate_and_score_completions(_generation_rows(trainer, setup))
    assert out["completion_ids"].size(0) == 8 and int(out["num_items_in_batch"]) == int(
        out["completion_mask"].sum()
    )
    groups = out["advantages"].view(-1, 4)
    assert (groups.abs().sum(1) > 0).all(), "a zero-variance group was trained on"
    features = _features_by_prompt(setup)
    for ids, mask, feats in zip(out["prompt_ids"], out["prompt_mask"], out["input_features"]):
        assert torch.equal(feats, features[tuple(ids[mask.bool()].tolist())]), "audio of another prompt"
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert logged["zero_variance/sampled_share"] == 0.5 and logged["dynamic_sampling/rounds"] >= 1
    assert logged["dynamic_sampling/dropped_groups"] >= 1 and logged["dynamic_sampling/refilled_groups"] == 1
    assert logged["dynamic_sampling/unfilled_groups"] == 0 and logged["zero_variance/trained_share"] == 0.0
    assert trainer.sampling_totals["dynamic_sampling/refilled_groups"] == 1


def test_dynamic_sampling_stops_at_its_bound_and_trains_on_what_it_has(setup, tmp_path):
    every = {r["id"] for r in setup["rows"]}
    trainer = _trainer(setup, tmp_path, reward_funcs=[_some_prompts_always_right(every)], rounds=2,
                       dynamic_sampling=True)  # fmt: skip
    out = trainer._generate_and_score_completions(_generation_rows(trainer, setup))
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert logged["dynamic_sampling/rounds"] == 2 and logged["dynamic_sampling/unfilled_groups"] == 2
    assert logged["dynamic_sampling/dropped_groups"] == 4 and logged["zero_variance/trained_share"] == 1.0
    assert out["advantages"].abs().sum() == 0 and out["completion_ids"].size(0) == 8


def test_zero_variance_share_is_logged_every_step_beside_trls(setup, tmp_path):
    """Two real steps: every logged step carries our share, which equals trl's frac_reward_zero_std
    (without dynamic sampling both describe the batch as sampled), and run totals are kept."""
    right = {setup["rows"][0]["id"], setup["rows"][2]["id"]}
    trainer = _trainer(setup, tmp_path, reward_funcs=[_some_prompts_always_right(right)],
                       training={"max_steps": 2, "learning_rate": 1e-3})  # fmt: skip
    trainer.train()
    steps = [h for h in trainer.state.log_history if "reward" in h]
    assert len(steps) == 2
    for h in steps:
        assert h["zero_variance/sampled_share"] == pytest.approx(h["frac_reward_zero_std"])
    assert trainer.sampling_totals["sampled_groups"] == 4
    assert math.isclose(
        trainer.sampling_totals["zero_variance/sampled_groups"] / 4,
        sum(h["zero_variance/sampled_share"] for h in steps) / 2,
    )
    json.dumps(trainer.sampling_totals)  # goes into run_info.json
