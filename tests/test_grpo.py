"""GRPO on the tiny Qwen2-Audio: the audio reaches every forward, the real launcher runs, it learns.

The log-prob forwards apply the LM head at the completion positions only (`logits_to_keep`, see
train/label_only_loss.py), on every device; stock trl 1.16 scored every position on devices without
Triton. The multi-process test and the learning test (many steps) use the 1k-vocabulary tiny model
(`tiny_qwen2_audio_fast`).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port, grpo_test_config
from safetensors.torch import load_file

from models import get_family
from train import components, grpo
from train.rewards import accuracy_reward, reward_functions

REPO = Path(__file__).resolve().parent.parent
TINY = {"qwen2_audio": "tiny_qwen2_audio", "qwen2_5_omni": "tiny_qwen2_5_omni"}  # conftest fixtures


def _grpo_recipe_families() -> list[str]:
    """Every family a shipped GRPO recipe (configs/<model>/grpo*.yaml, tiny ones aside) trains."""
    import yaml

    families = set()
    for path in sorted(REPO.glob("configs/*/grpo*.yaml")):
        if path.parent.name != "tiny":
            families.add(yaml.safe_load(path.read_text())["model"]["family"])
    return sorted(families)


GRPO_FAMILIES = _grpo_recipe_families()


def test_grpo_recipe_families_are_found():
    assert {"qwen2_audio", "qwen2_5_omni"} <= set(GRPO_FAMILIES), GRPO_FAMILIES


def _tiny_model(family_name: str, request, tmp_path_factory) -> Path:
    """The session's tiny model of a family (conftest), else one built by the family's make_tiny."""
    if family_name in TINY:
        return request.getfixturevalue(TINY[family_name])
    out = tmp_path_factory.mktemp(f"tiny-{family_name}")
    get_family(family_name).make_tiny(out, seed=0)
    return out


def _cfg(
    model_dir: Path, dataset_dir: Path, out: Path, training: dict, grpo_cfg: dict, lora: dict | None = None
):
    return grpo_test_config(
        model_dir,
        dataset_dir,
        out,
        training=training,
        grpo=grpo_cfg,
        lora=lora,
        data={"max_train_samples": 8},
    )


def _sft_adapter(family, model_dir: Path, out: Path) -> Path:
    """A stand-in SFT adapter: fresh LoRA with non-zero B, so it changes the model's outputs."""
    model = family.load_model(str(model_dir), dtype="float32", attn_implementation="eager")
    cfg = _cfg(model_dir, model_dir, out, {}, {})
    model = components.add_lora(model, family, cfg.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    model.save_pretrained(str(out))
    return out


def spy_on_forward(model: torch.nn.Module, feature_keys: tuple[str, ...]) -> list[dict]:
    """Wrap the model's (trl-patched) forward; returns the list it records each call's inputs in."""
    calls: list[dict] = []
    forward = model.forward

    @functools.wraps(forward)  # keep the signature: `generate` checks its model kwargs against it
    def record(*args, **kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        calls.append(
            {
                # log-prob forward (old, ref or policy); generation may pass logits_to_keep=1 with its cache
                "scoring": bool(kwargs.get("logits_to_keep")) and not kwargs.get("use_cache"),
                "grad": torch.is_grad_enabled(),
                "rows": None if ids is None else ids.shape[0],
                "prefill": ids is not None and ids.shape[1] > 1,
                "ids": None if ids is None else ids.detach().clone(),
                "mask": None if mask is None else mask.detach().clone(),
                "audio": {k: kwargs[k].detach().clone() for k in feature_keys if kwargs.get(k) is not None},
            }
        )
        return forward(*args, **kwargs)

    model.forward = record
    return calls


def _unique_prompt_rows(prepared_synth: Path, n: int) -> list[dict]:
    """Training rows whose prompt texts all differ, so a forward's row names its prompt by its tokens."""
    from datasets import load_from_disk

    rows = load_from_disk(str(prepared_synth / "hf" / "train")).select(range(n)).to_list()
    for row in rows:
        for block in row["messages"][1]["content"]:
            if block["type"] == "text":
                block["text"] = f"[{row['id']}] {block['text']}"
    return rows


def _expected_audio(family, processor, rows: list[dict]) -> list[tuple[list[int], dict]]:
    """(prompt token ids, that prompt's audio feature rows) for each prompt, encoded alone."""
    from models.inputs import encode_prompts

    out = []
    for row in rows:
        enc = encode_prompts(family, processor, [row])
        out.append((enc["input_ids"][0].tolist(), {k: enc[k][0] for k in family.AUDIO_FEATURE_KEYS}))
    return out


def _valid(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The frames a feature row really has (batches pad features to their longest clip)."""
    return features[..., : int(mask.sum())]


def assert_each_row_has_its_prompts_audio(call: dict, expected: list, mask_key: str) -> None:
    """Every row of a forward carries exactly the audio features of the prompt its tokens start with."""
    for i in range(call["rows"]):
        tokens = call["ids"][i][call["mask"][i].bool()].tolist()
        owners = [feats for ids, feats in expected if tokens[: len(ids)] == ids]
        assert len(owners) == 1, f"row {i}: {len(owners)} prompts match its tokens"
        want = owners[0]
        got_mask, want_mask = call["audio"][mask_key][i], want[mask_key]
        assert int(got_mask.sum()) == int(want_mask.sum()), f"row {i}: another clip's length"
        for key, value in want.items():
            if key != mask_key:
                got = _valid(call["audio"][key][i], got_mask)
                assert torch.equal(got, _valid(value, want_mask)), f"row {i}: {key} of another prompt"


@pytest.mark.parametrize("family_name", GRPO_FAMILIES)
def test_every_training_forward_gets_its_prompts_audio(
    family_name, prepared_synth, tmp_path, tmp_path_factory, request
):
    """Generation, old, reference and policy log-prob forwards all get, row by row, the features
    of that completion's own prompt; SFT -> GRPO: only the `default` adapter moves."""
    from datasets import Dataset, load_from_disk

    family = get_family(family_name)
    model_dir = _tiny_model(family_name, request, tmp_path_factory)
    adapter = _sft_adapter(family, model_dir, tmp_path / "sft")
    cfg = _cfg(
        model_dir,
        prepared_synth,
        tmp_path / "run",
        {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-2},
        # Length is the reward that varies between random completions, so there is a gradient.
        {
            "num_generations": 4,
            "max_completion_length": 6,
            "beta": 0.1,
            "thinking_budget_tokens": 0,
            "length_penalty": 0.05,
            "reward_weights": {"accuracy": 1.0, "format": 1.0, "length": 1.0},
        },
        {"init_adapter": str(adapter)},
    )
    processor = family.load_processor(str(model_dir))
    model = family.load_model(str(model_dir), dtype="float32", attn_implementation="eager")
    model = components.add_lora(model, family, cfg.lora)
    image_token_id = getattr(model.config, "image_token_id", None)  # Omni has one, Qwen2-Audio not
    rows = _unique_prompt_rows(prepared_synth, 8)
    features = load_from_disk(str(prepared_synth / "hf" / "train")).features
    funcs, weights = reward_functions(
        cfg.grpo.reward_weights,
        thinking_budget=0,
        length_penalty_per_unit=0.05,
        count=lambda text: grpo.count_tokens(processor.tokenizer, text),
    )
    # steps_per_generation=2 > gradient_accumulation_steps=1: trl then also computes old log-probs.
    args = grpo.grpo_args(cfg, weights, steps_per_generation=2)
    trainer = grpo.AudioGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=grpo.with_prompts(Dataset.from_list(rows, features=features)),
        processing_class=processor,
        family=family,
    )
    audio_token = processor.tokenizer.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    assert audio_token in trainer.generation_config.suppress_tokens  # never sampled
    assert getattr(model.config, "image_token_id", None) == image_token_id  # trl's stand-in is gone
    peft_model = trainer.model
    assert "ref" in peft_model.peft_config  # trl's frozen copy of the SFT adapter = the reference
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    calls = spy_on_forward(peft_model.get_base_model(), family.AUDIO_FEATURE_KEYS)

    trainer.train()

    scoring = [c for c in calls if c["scoring"]]
    # one generation batch of 8 completions, scored in chunks of 4: old 2 + ref 2, then policy 1 per step
    assert len(scoring) == 6, [(c["scoring"], c["rows"]) for c in calls]
    assert sum(c["grad"] for c in scoring) == 2
    prefills = [c for c in calls if not c["scoring"] and c["prefill"]]
    assert prefills and all(c["rows"] == 8 for c in prefills)  # generation saw it too
    expected = _expected_audio(family, processor, rows)
    mask_key = next(k for k in family.AUDIO_FEATURE_KEYS if "mask" in k)
    for call in scoring + prefills:
        assert set(call["audio"]) == set(family.AUDIO_FEATURE_KEYS), call["audio"].keys()
        assert_each_row_has_its_prompts_audio(call, expected, mask_key)

    after = dict(peft_model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved, "no parameter moved: the rewards gave no learning signal"
    assert all(".default" in n for n in moved), sorted(moved)  # base, encoder, `ref` frozen
    assert any("lora_B.default" in n for n in moved)


def test_refuses_settings_that_generate_without_audio(tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    family = get_family("qwen2_audio")
    cfg = _cfg(
        tiny_qwen2_audio_fast,
        prepared_synth,
        tmp_path / "run",
        {"max_steps": 1, "per_device_train_batch_size": 4},
        {},
    )
    with pytest.raises(ValueError, match=r"`use_vllm=True` is not supported: .*without the audio"):
        grpo.grpo_args(cfg, [1.0], use_vllm=True)
    args = grpo.grpo_args(cfg, [1.0])
    args.use_vllm = True  # a GRPOConfig built elsewhere reaches the trainer's own check
    with pytest.raises(ValueError, match="use_vllm"):
        grpo.AudioGRPOTrainer(
            model=None, reward_funcs=[accuracy_reward], args=args, train_dataset=None,
            processing_class=family.load_processor(str(tiny_qwen2_audio_fast)), family=family,
        )  # fmt: skip


@pytest.mark.parametrize("clips", [0, 2])
def test_refuses_prompts_without_exactly_one_clip(tiny_qwen2_audio_fast, prepared_synth, clips):
    family = get_family("qwen2_audio")
    processor = family.load_processor(str(tiny_qwen2_audio_fast))
    row = _unique_prompt_rows(prepared_synth, 1)[0]
    user = row["messages"][1]["content"]
    audio = [b for b in user if b["type"] == "audio"]
    row["messages"][1]["content"] = audio * clips + [b for b in user if b["type"] != "audio"]
    with pytest.raises(ValueError, match=rf"sample '{row['id']}' has {clips} audio clips"):
        grpo.encode_once_per_prompt(family, processor, [row, row])


def test_refuses_a_family_whose_audio_inputs_would_not_reach_the_forward(
    tiny_qwen2_audio_fast, prepared_synth
):
    """A family whose declared feature keys miss what its processor returns (a new, unchecked family)."""
    import types

    real = get_family("qwen2_audio")
    partial = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    partial.AUDIO_FEATURE_KEYS, partial.NAME = ("input_features",), "half_declared"
    processor = real.load_processor(str(tiny_qwen2_audio_fast))
    rows = _unique_prompt_rows(prepared_synth, 2)
    with pytest.raises(ValueError, match=r"family 'half_declared'.*\['feature_attention_mask'\] would not"):
        grpo.encode_once_per_prompt(partial, processor, rows)


def test_encode_once_per_prompt_matches_encode_prompts(tiny_qwen2_audio, prepared_synth):
    """Each prompt arrives num_generations times; encoding it once must not change any row."""
    from models.inputs import encode_prompts

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(tiny_qwen2_audio))
    rows = [json.loads(line) for line in (prepared_synth / "train.jsonl").read_text().splitlines()[:2]]
    repeated = [rows[0], rows[0], rows[1], rows[1]]
    once = grpo.encode_once_per_prompt(family, processor, repeated)
    every = encode_prompts(family, processor, repeated)
    assert once.keys() == every.keys() >= set(family.AUDIO_FEATURE_KEYS)
    for key in every:
        assert torch.equal(once[key], every[key]), key


def _one_answer_rows(prepared_synth: Path, n: int, answer_index: int) -> list[dict]:
    """Short prompts over the synthetic clips, "A or B?", where `answer_index` is always right."""
    rows = [json.loads(line) for line in (prepared_synth / "train.jsonl").read_text().splitlines()[:n]]
    return [
        {
            "id": row["id"],
            "choices": ["yes", "no"],
            "answer_index": answer_index,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Answer.", "path": None}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", "text": None, "path": row["audio_path"]},
                        {"type": "text", "text": "A or B?", "path": None},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "AB"[answer_index], "path": None}],
                },
            ],
        }
        for row in rows
    ]


def _less_likely(model, family, processor, rows: list[dict], token_ids: list[int]) -> int:
    """Index of the token the untrained model gives the lower next-token probability after the prompts."""
    from models.inputs import encode_prompts

    with torch.no_grad():
        logits = model(**encode_prompts(family, processor, rows)).logits[:, -1, token_ids]
    return int(logits.softmax(-1).mean(0).argmin())


def test_accuracy_reward_rises_when_one_answer_is_always_right(
    tiny_qwen2_audio_fast, prepared_synth, tmp_path
):
    """A real learning signal: GRPO turns a dispreferred answer into the preferred one.

    Direct one-token answers, sampled from the option letters only (a +30 logit bias on A and B,
    like a constrained decoder), so only the policy's own logits decide between A and B. The
    right letter is the one the untrained model prefers less, so the run starts at or below
    chance whatever the random weights (they differ with the tokenizer the tiny model was built
    with). Temperature 0.5 (trl divides the logits by the same temperature in the loss) lets the
    64-wide head express a clear preference. Control, measured when this test was written: with
    the learning rate at ~0 the last 4 steps average 0.31 (both tokenizers), the first 4 0.31-0.44.
    """
    from datasets import Dataset

    family = get_family("qwen2_audio")
    cfg = _cfg(
        tiny_qwen2_audio_fast,
        prepared_synth,
        tmp_path / "run",
        {"max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 1e-3},
        {"num_generations": 8, "max_completion_length": 1, "beta": 0.0, "temperature": 0.5},
    )
    processor = family.load_processor(str(tiny_qwen2_audio_fast))
    model = family.load_model(str(tiny_qwen2_audio_fast), dtype="float32", attn_implementation="eager")
    model = components.add_lora(model, family, cfg.lora)
    letters = [processor.tokenizer.convert_tokens_to_ids(c) for c in "AB"]
    answer = _less_likely(model, family, processor, _one_answer_rows(prepared_synth, 8, 0), letters)
    trainer = grpo.AudioGRPOTrainer(
        model=model,
        reward_funcs=[accuracy_reward],
        args=grpo.grpo_args(cfg, [1.0]),
        train_dataset=grpo.with_prompts(Dataset.from_list(_one_answer_rows(prepared_synth, 8, answer))),
        processing_class=processor,
        family=family,
    )
    bias = [[[t], 30.0] for t in letters]
    trainer.generation_config.sequence_bias = bias
    trainer.generation_kwargs["sequence_bias"] = bias

    trainer.train()

    key = "rewards/accuracy_reward/mean"
    acc = [h[key] for h in trainer.state.log_history if key in h]
    assert len(acc) == 12
    # Measured (first 4 / last 4 steps): real Qwen2 vocab seeds 0, 1: 0.53/0.97, 0.50/0.91;
    # fallback-BPE tiny model seeds 0, 1: 0.56/0.97, 0.66/1.00.
    first, last = sum(acc[:4]) / 4, sum(acc[-4:]) / 4
    assert last > first + 0.2, acc


@pytest.mark.slow
def test_deepspeed_two_ranks(tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    """`deepspeed train.py --config configs/tiny/grpo.yaml` with 2 CPU ranks, as a user runs it."""
    out = tmp_path / "run"
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "train.py",
        "--config",
        "configs/tiny/grpo.yaml",
        "--model_name_or_path",
        str(tiny_qwen2_audio_fast),
        "--dataset_dir",
        str(prepared_synth),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--max_train_samples",
        "8",
        "--max_completion_length",
        "6",
        "--thinking_budget_tokens",
        "0",
        "--length_penalty",
        "0.05",
        "--log_completions_every",
        "1",
        "--save_steps",
        "1000",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    weights = load_file(str(out / "adapter_model.safetensors"))
    assert all("lora_" in k or "multi_modal_projector" in k for k in weights), sorted(weights)[:5]
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # moved from zero init
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "complete" and info["method"] == "grpo"
    assert info["train_split_dropped"] == {}  # every prompt fits max_length; counted either way
    assert len(info["adapter_digests"]) == 2 and len(set(info["adapter_digests"])) == 1
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = set().union(*history)
    assert {
        "reward",
        "reward_std",
        "kl",
        "completions/mean_length",
        "rewards/accuracy_reward/mean",
        "rewards/format_reward/std",
        "rewards/length_penalty/mean",
    } <= logged
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, "no offline W&B run"
    blob = runs[0].read_bytes()
    for key in (b"train/reward", b"train/kl", b"train/rewards/format_reward/mean", b"train/completions",
                b"data/train_split_dropped"):  # fmt: skip
        assert key in blob, key
