"""Training config, entry-point plumbing and tracking: fast, no model, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ConfigError, load_yaml, parse_config
from train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parent.parent
TRAIN_YAMLS = sorted(
    p for p in (REPO / "configs").rglob("*.yaml") if p.relative_to(REPO / "configs").parts[0] != "data"
)
DATA_YAMLS = sorted((REPO / "configs" / "data").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAIN_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_train_yaml_loads_and_opens_with_its_launch_command(path: Path) -> None:
    cfg = load_config(["--config", str(path)])
    assert isinstance(cfg, TrainConfig)
    head = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert head.startswith("#"), f"{path} must open with a comment"
    assert "train.py" in path.read_text(encoding="utf-8").split("\nmodel:", 1)[0], "launch command missing"
    if cfg.training.deepspeed:
        assert (REPO / cfg.training.deepspeed).is_file(), cfg.training.deepspeed


@pytest.mark.parametrize("path", DATA_YAMLS, ids=lambda p: p.name)
def test_every_data_yaml_loads_into_data_prep_config(path: Path) -> None:
    data_config = pytest.importorskip("data_prep.config")
    parse_config(data_config.DataConfig, ["--config", str(path)])


def test_deepspeed_jsons_let_hf_fill_the_batch_values() -> None:
    files = sorted((REPO / "configs" / "deepspeed").glob("*.json"))
    assert {f.name for f in files} >= {"zero2.json", "zero3.json", "zero3_offload.json"}
    for f in files:
        ds = json.loads(f.read_text())
        assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
        assert ds["zero_optimization"]["stage"] in (2, 3)


def test_flat_flags_and_unknown_keys(tmp_path: Path) -> None:
    cfg = load_config(
        [
            "--config",
            str(REPO / "configs/tiny/cpu.yaml"),
            "--model_name_or_path",
            "m",
            "--dataset_dir",
            "d",
            "--output_dir",
            "o",
            "--max_steps",
            "7",
            "--seed",
            "3",
            "--deepspeed",
            "configs/deepspeed/zero3.json",
            "--resume_from_checkpoint",
            "latest",
            "--local_rank=1",
        ]  # fmt: skip
    )
    assert (cfg.model.model_name_or_path, cfg.data.dataset_dir, cfg.training.output_dir) == ("m", "d", "o")
    assert (cfg.training.max_steps, cfg.training.seed, cfg.training.resume_from_checkpoint) == (
        7,
        3,
        "latest",
    )
    assert cfg.training.deepspeed == "configs/deepspeed/zero3.json"
    with pytest.raises(ConfigError, match="unknown flag"):
        load_config(["--max_step", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  max_stesp: 3\n")
    with pytest.raises(ConfigError, match="max_stesp"):
        load_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="reward"):
        load_config(["--reward_weights", "{accuracy: 1, speed: 2}"])


def test_grpo_section_names_are_stable() -> None:
    """train/grpo.py (another module) reads these names."""
    g = TrainConfig().grpo
    for name in ("num_generations", "temperature", "top_p", "beta", "max_completion_length", "reward_weights",
                 "thinking_budget_tokens", "length_penalty", "log_completions_every"):  # fmt: skip
        assert hasattr(g, name)
    assert set(g.reward_weights) == {"accuracy", "format", "length"}


def test_help_lists_every_key() -> None:
    out = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for key in ("--model.model_name_or_path", "--training.deepspeed", "--lora.use_dora", "--grpo.beta"):
        assert key in out.stdout


def test_single_process_rendezvous_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from train.distributed import setup_env

    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "OMP_NUM_THREADS", "LOCAL_SIZE"):  # fmt: skip
        monkeypatch.setenv(var, "")  # recorded, so teardown restores the original (unset) state
        monkeypatch.delenv(var)
    import torch.distributed as dist

    setup_env(uses_deepspeed=True)
    try:
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
        assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
        assert int(os.environ["OMP_NUM_THREADS"]) >= 1
        # The one-rank group exists already (FileStore: no port to race for).
        assert dist.is_initialized() and dist.get_world_size() == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Two ranks on this host share the cores instead of each taking all of them.
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    setup_env(uses_deepspeed=False)
    cores = len(os.sched_getaffinity(0))
    assert int(os.environ["OMP_NUM_THREADS"]) == max(1, cores // 2)


def test_wandb_falls_back_offline_fast_when_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An API key but no route to the host: decided offline in ~2 s, not wandb's ~100 s hang."""
    from train import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://10.255.255.1:9")  # non-routable: connect times out
    cfg = load_config(["--report_to", "wandb"])
    start = time.perf_counter()
    assert tracking.resolve_wandb_mode(cfg) == "offline"
    assert time.perf_counter() - start < 5
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc: no credentials at all
    assert tracking.resolve_wandb_mode(cfg) == "offline"
    assert tracking.resolve_wandb_mode(load_config(["--report_to", "none"])) == "disabled"


def test_metric_namespaces() -> None:
    from train.tracking import namespaced

    logs = {
        "loss": 1.0,
        "learning_rate": 1e-4,
        "grad_norm": 0.5,
        "eval_loss": 2.0,
        "tokens_per_s": 9.0,
        "x": "s",
    }
    assert namespaced(logs) == {
        "train/loss": 1.0, "train/lr": 1e-4, "train/grad_norm": 0.5, "eval/loss": 2.0, "train/tokens_per_s": 9.0,
    }  # fmt: skip


def test_warmup_ratio_is_a_share_of_the_steps(tmp_path: Path) -> None:
    """transformers 5 takes the ratio as `warmup_steps` below 1; 1 or more would be read as steps."""
    from transformers import TrainingArguments

    from train.components import shared_trainer_kwargs

    cfg = load_config(["--warmup_ratio", "0.05", "--output_dir", str(tmp_path)])
    warmup = shared_trainer_kwargs(cfg)["warmup_steps"]
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=warmup, report_to="none")
    assert (args.get_warmup_steps(1000), args.get_warmup_steps(40)) == (50, 2)
    for bad in ("1", "2.5", "-0.1"):
        with pytest.raises(ConfigError, match="warmup_ratio"):
            load_config(["--warmup_ratio", bad])


def test_loss_scaling_guard() -> None:
    """A model whose forward takes **kwargs but computes its own mean loss must opt out of loss kwargs."""
    import torch

    from train.sft import check_loss_scaling

    class OwnMeanLoss(torch.nn.Module):
        def forward(self, input_ids=None, labels=None, **kwargs):
            return torch.nn.functional.cross_entropy(input_ids, labels)

    model = OwnMeanLoss()
    with pytest.raises(RuntimeError, match="accepts_loss_kwargs"):
        check_loss_scaling(model)
    model.accepts_loss_kwargs = False
    check_loss_scaling(model)


def test_memory_estimate_table() -> None:
    from bench.memory_estimate import recipes

    out = subprocess.run(
        [sys.executable, "-m", "bench.memory_estimate"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {r["recipe"]: r for r in result["rows"]}
    assert sorted(rows) == recipes() and len(rows) >= 5  # one row per configs/<model>/cot_lora*.yaml
    for row in rows.values():
        assert 7 < row["params_b"] < 40 and 0 < row["model_states_gib"] < 80
        # The SFT recipe's label-only head keeps logits for the label rows only.
        assert row["activations_gib"] < row["full_logits_activations_gib"]
    # 30B MoE: only ZeRO-3 fits 80 GB; the published size is 31.72 B parameters
    moe = rows["configs/qwen3_omni_30b_a3b/cot_lora.yaml"]
    assert moe["zero"] == 3 and 31 < moe["params_b"] < 32.5
    # ZeRO-3 partitions the frozen base too, so it needs less per GPU than ZeRO-2.
    z2, z3 = rows["configs/qwen2_audio_7b/cot_lora.yaml"], rows["configs/qwen2_audio_7b/cot_lora_zero3.yaml"]
    assert z3["model_states_gib"] < z2["model_states_gib"]


def test_yaml_files_are_plain_mappings() -> None:
    for path in TRAIN_YAMLS + DATA_YAMLS:
        assert isinstance(load_yaml(path), dict)
