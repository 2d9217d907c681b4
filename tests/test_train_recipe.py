"""The training recipe run as users run it: `deepspeed train.py ...` on 2 CPU ranks, plain `python
train.py`, and in-process; tiny Qwen2-Audio, fp32, a dozen samples, a few steps.

Runs (each reused by several tests):
  zero2_straight  deepspeed, 2 ranks, ZeRO-2, 4 steps, 12 distinct samples, W&B offline
  crash + resume  the same command killed (-9) after checkpoint-2, then `--resume_from_checkpoint latest`
  zero3_same      deepspeed, 2 ranks, ZeRO-3, 1 step of micro-batch 1, one sample repeated
  zero3 + text    deepspeed, 2 ranks, ZeRO-3, 1 step: one rank's micro-batch has audio, the other's is
                  a text-only item (data_prep's canonical reader, `audio_path: null`)
  python_same     plain `python train.py` with the ZeRO-2 JSON (single-process rendezvous), batch 2
  ga2_same        in-process, no DeepSpeed, micro-batch 1 x gradient accumulation 2
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

REPO = Path(__file__).resolve().parent.parent
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


# -- helpers ------------------------------------------------------------------------------------


def _subset(prepared: Path, out: Path, train_rows: list[dict], val_rows: list[dict] | None = None) -> Path:
    """A prepared-dataset dir (manifest + hf/<split>) holding exactly these rows."""
    from datasets import Dataset, load_from_disk

    out.mkdir(parents=True)
    shutil.copy(prepared / "manifest.json", out / "manifest.json")
    features = load_from_disk(str(prepared / "hf" / "train")).features
    Dataset.from_list(train_rows, features=features).save_to_disk(str(out / "hf" / "train"))
    if val_rows:
        Dataset.from_list(val_rows, features=features).save_to_disk(str(out / "hf" / "val"))
    return out


@pytest.fixture(scope="module")
def datasets_dir(prepared_synth: Path, tmp_path_factory) -> dict[str, Path]:
    """`mixed`: 12 distinct training samples; `same`: one sample repeated 8 times (equal loss anywhere)."""
    from datasets import load_from_disk

    root = tmp_path_factory.mktemp("train-data")
    train = load_from_disk(str(prepared_synth / "hf" / "train"))
    val = load_from_disk(str(prepared_synth / "hf" / "val"))
    same = [{**train[0], "id": f"{train[0]['id']}#{i}"} for i in range(8)]
    return {
        "mixed": _subset(prepared_synth, root / "mixed", [train[i] for i in range(12)], [val[0], val[1]]),
        "same": _subset(prepared_synth, root / "same", same),
    }


def _argv(model: Path, data: Path, out: Path, **overrides) -> list[str]:
    flags = {
        "model_name_or_path": model, "dataset_dir": data, "output_dir": out, "max_steps": 2,
        "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 100, "val_split": "null",
        "report_to": "none", "warmup_ratio": 0.0, "seed": 0, **overrides,
    }  # fmt: skip
    argv = ["--config", "configs/tiny/cpu.yaml"]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


def _launch(argv: list[str], *, ranks: int, env: dict | None = None, timeout: int = 600):
    """`deepspeed --num_gpus N train.py ...` (ranks > 0) or `python train.py ...` (ranks == 0)."""
    if ranks:
        cmd = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "train.py", *argv]
    else:
        cmd = [sys.executable, "train.py", *argv]
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def _ok(proc) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _first_loss(out: Path) -> float:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return next(h["loss"] for h in history if h.get("step") == 1 and "loss" in h)


def _full_logits_loss(model_dir: Path, data_dir: Path) -> float:
    """The model's own full-logits loss on the "same" sample, in this process.

    Step 1 of any run on that data must log it: LoRA's B starts at zero and the projector copy is
    exact, so the adapted model starts as the base model; the recipe computes the LM head and the
    loss at label positions only, which must not change the number.
    """
    import torch
    from datasets import load_from_disk

    from models import get_family
    from models.inputs import AudioChatCollator

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(model_dir))
    model = family.load_model(str(model_dir), dtype="float32", attn_implementation="eager")
    row = load_from_disk(str(data_dir / "hf" / "train"))[0]
    batch = AudioChatCollator(family, processor, 1024)([row])  # configs/tiny/cpu.yaml's max_length
    with torch.no_grad():
        return model(**batch).loss.item()


def _adapter_tensors(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


# -- runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero2_straight(tiny_qwen2_audio_fast, datasets_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2") / "run"
    argv = _argv(tiny_qwen2_audio_fast, datasets_dir["mixed"], out, max_steps=4, save_steps=2,
                 lr_scheduler_type="cosine", report_to="wandb", val_split="val", eval_steps=4)  # fmt: skip
    _ok(_launch(argv, ranks=2))
    return out


@pytest.fixture(scope="module")
def ga2_same(tiny_qwen2_audio_fast, datasets_dir, tmp_path_factory) -> Path:
    from train import sft
    from train.config import load_config

    out = tmp_path_factory.mktemp("ga2") / "run"
    argv = _argv(tiny_qwen2_audio_fast, datasets_dir["same"], out, max_steps=1, per_device_train_batch_size=1,
                 gradient_accumulation_steps=2, deepspeed="null")  # fmt: skip
    sft.main(load_config(argv))
    return out


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_zero2_two_ranks_same_adapter_run_files_and_wandb(
    zero2_straight: Path, tiny_qwen2_audio_fast: Path
) -> None:
    from peft import PeftModel

    from models import get_family
    from train.config import load_config

    out = zero2_straight
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2 and info["global_step"] == 4
    digests = info["adapter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with different weights"
    assert info["train_groups"] and info["splits"]["train"]["count"] == 12 and info["dataset"]["hash"]
    assert "git_sha" in info and "eval/loss" in info["final_metrics"]
    load_config(["--config", str(out / "run_config.yaml")])  # the resolved config reloads as is
    assert (out / "trainer_state.json").exists() and (out / "checkpoint-4").is_dir()
    # Standard PEFT format, loadable on the base model.
    base = get_family("qwen2_audio").load_model(str(tiny_qwen2_audio_fast), dtype="float32")
    PeftModel.from_pretrained(base, str(out))
    # W&B offline run (rank 0 only) with namespaced metrics.
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    blob = runs[0].read_bytes()
    for key in (b"train/loss", b"train/lr", b"eval/loss", b"train/tokens_per_s"):
        assert key in blob, key


@pytest.mark.slow
def test_zero3_two_ranks_and_loss_is_not_scaled_by_ranks_or_accumulation(
    tiny_qwen2_audio_fast, datasets_dir, ga2_same: Path, tmp_path_factory
) -> None:
    """Same data: 2 ranks x 1 (ZeRO-3), 1 rank x 2 (plain python + ZeRO-2 JSON), 1 x 1 x GA 2.

    The HF Trainer scaled Qwen2-Audio's loss by the world size (12.1 instead of 6.0 on 2 ranks)
    until the family set accepts_loss_kwargs = False. Each run's first loss (label-only LM head and
    loss) equals the model's own full-logits loss to 1e-6 relative.
    """
    z3 = tmp_path_factory.mktemp("zero3") / "run"
    _ok(_launch(_argv(tiny_qwen2_audio_fast, datasets_dir["same"], z3, max_steps=1, per_device_train_batch_size=1,
                      deepspeed="configs/deepspeed/zero3.json"), ranks=2))  # fmt: skip
    info = json.loads((z3 / "run_info.json").read_text())
    assert len(info["adapter_digests"]) == 2 and len(set(info["adapter_digests"])) == 1
    # ZeRO-3 partitions the weights: the saved adapter must be the gathered one, not empty shards.
    # Same data and step as the single-process GA 2 run, so the same update up to float noise.
    z3_tensors, ref = _adapter_tensors(z3), _adapter_tensors(ga2_same)
    assert z3_tensors.keys() == ref.keys()
    for key in ref:
        assert z3_tensors[key].shape == ref[key].shape and ref[key].numel() > 0, key
        assert (z3_tensors[key] - ref[key]).abs().max() < 1e-4, key

    one = tmp_path_factory.mktemp("one-rank") / "run"
    _ok(_launch(_argv(tiny_qwen2_audio_fast, datasets_dir["same"], one, max_steps=1), ranks=0))

    losses = {"2 ranks": _first_loss(z3), "1 rank": _first_loss(one), "GA 2": _first_loss(ga2_same)}
    ref = _full_logits_loss(tiny_qwen2_audio_fast, datasets_dir["same"])
    assert all(abs(v - ref) <= 1e-6 * ref for v in losses.values()), (losses, ref)


@pytest.fixture(scope="module")
def audio_and_text_only(synth_dir: Path, tmp_path_factory) -> Path:
    """A prepared dataset of two training samples, as a user makes one: a synthetic item with its clip
    and a text-only item (`audio_path: null`) in the canonical format, through data_prep.prepare."""
    from data_prep.prepare import run

    root = tmp_path_factory.mktemp("text-only-data")
    item = json.loads((synth_dir / "meta.jsonl").read_text().splitlines()[0])
    keys = ("id", "audio_path", "question", "choices", "answer", "modality", "category", "thinking", "group")
    text_only = {"id": "text-0", "audio_path": None, "question": "Which number is larger?", "choices": ["7", "4"],
                 "answer": "7", "category": "Semantic Layer", "thinking": "7 is more than 4."}  # fmt: skip
    source = root / "canonical.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in ({k: item[k] for k in keys}, text_only)))
    return run(["--config", str(REPO / "configs/data/synth_cot.yaml"), "--source.reader", "canonical",
                "--source.path", str(source), "--audio_root", str(synth_dir), "--out_dir", str(root / "out"),
                "--split.mode", "holdout", "--split.holdout_split", "train"])  # fmt: skip


def _own_loss(model_dir: Path, row: dict) -> float:
    """The model's own full-logits loss on one row (no label-only head, no silent audio pass)."""
    import torch

    from models import get_family
    from models.inputs import AudioChatCollator

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(model_dir))
    model = family.load_model(str(model_dir), dtype="float32", attn_implementation="eager")
    with torch.no_grad():
        return model(**AudioChatCollator(family, processor, 1024)([row])).loss.item()


@pytest.mark.slow
def test_zero3_two_ranks_one_text_only_batch_finishes_with_the_single_process_loss(
    tiny_qwen2_audio_fast: Path, audio_and_text_only: Path, tmp_path: Path
) -> None:
    """One rank's micro-batch has audio, the other's is text-only. Without the silent audio pass
    (models/silent_audio.py) the text-only rank skipped the encoder and the ranks' ZeRO-3 gathers
    mismatched: gloo aborted at step 1, NCCL waits until the collective timeout. The short timeout
    here makes such a regression fail in about a minute instead of hanging CI.

    Both ranks finish, with the loss of a single process on the same data (micro-batch 1 x gradient
    accumulation 2) and the model's own losses of the two rows, and the same adapter."""
    from datasets import load_from_disk

    from train import sft
    from train.config import load_config

    manifest = json.loads((audio_and_text_only / "manifest.json").read_text())
    assert manifest["counts"]["per_split"] == {"train": 2} and manifest["counts"]["text_only"] == 1
    z3 = tmp_path / "zero3"
    argv = _argv(tiny_qwen2_audio_fast, audio_and_text_only, z3, max_steps=1, per_device_train_batch_size=1,
                 deepspeed="configs/deepspeed/zero3.json", collective_timeout_s=60, dataloader_num_workers=0)  # fmt: skip
    _ok(_launch(argv, ranks=2, timeout=300))  # 2 samples, 2 ranks, micro-batch 1: one text-only rank
    info = json.loads((z3 / "run_info.json").read_text())
    assert info["world_size"] == 2 and len(set(info["adapter_digests"])) == 1

    one = tmp_path / "one-process"
    sft.main(load_config(_argv(tiny_qwen2_audio_fast, audio_and_text_only, one, max_steps=1,
                               per_device_train_batch_size=1, gradient_accumulation_steps=2, deepspeed="null",
                               dataloader_num_workers=0)))  # fmt: skip
    rows = list(load_from_disk(str(audio_and_text_only / "hf" / "train")))
    assert sorted(r["audio_path"] is None for r in rows) == [False, True]
    own = sum(_own_loss(tiny_qwen2_audio_fast, r) for r in rows) / 2  # each rank's mean, averaged
    assert _first_loss(z3) == pytest.approx(own, rel=1e-5)
    assert _first_loss(one) == pytest.approx(own, rel=1e-5)
    z3_tensors, ref = _adapter_tensors(z3), _adapter_tensors(one)
    assert z3_tensors.keys() == ref.keys()
    for key in ref:
        assert (z3_tensors[key] - ref[key]).abs().max() < 1e-5, key


@pytest.mark.slow
def test_lora_and_projector_moved_base_frozen(ga2_same: Path, tiny_qwen2_audio_fast: Path) -> None:
    import torch
    from peft import PeftModel

    from models import get_family
    from train.components import add_lora
    from train.config import LoraSettings

    fam = get_family("qwen2_audio")
    # Only LoRA and the projector (modules_to_save) train; encoder and LLM are frozen.
    model = add_lora(
        fam.load_model(str(tiny_qwen2_audio_fast), dtype="float32"), fam, LoraSettings(r=4, alpha=8)
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in trainable)
    assert not any("audio_tower" in n for n in trainable)

    base = fam.load_model(str(tiny_qwen2_audio_fast), dtype="float32")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(ga2_same))
    saved = _adapter_tensors(ga2_same)
    assert all("lora_" in k or "multi_modal_projector" in k for k in saved)
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B stayed at its zero init"
    proj = tuned.base_model.model.model.multi_modal_projector.modules_to_save["default"].linear.weight
    assert not torch.equal(proj, base_state["model.multi_modal_projector.linear.weight"])
    for name, p in tuned.base_model.model.named_parameters():
        key = name.replace(".base_layer", "").replace(".original_module", "")
        if "lora_" not in name and "modules_to_save" not in name and key in base_state:
            assert torch.equal(p, base_state[key]), name


@pytest.mark.slow
def test_merge_adapter_gives_the_same_logits(
    ga2_same: Path, tiny_qwen2_audio_fast: Path, datasets_dir, tmp_path
) -> None:
    import torch
    from datasets import load_from_disk
    from peft import PeftModel

    from models import get_family
    from models.inputs import AudioChatCollator
    from scripts.merge_adapter import main as merge_main

    merged_dir = tmp_path / "merged"
    merge_main(["--base", str(tiny_qwen2_audio_fast), "--adapter", str(ga2_same), "--out", str(merged_dir)])
    fam = get_family("qwen2_audio")
    processor = fam.load_processor(str(merged_dir))
    rows = [load_from_disk(str(datasets_dir["mixed"] / "hf" / "train"))[i] for i in range(2)]
    batch = AudioChatCollator(fam, processor, 1024)(rows)
    batch.pop("labels")
    with torch.no_grad():
        tuned = PeftModel.from_pretrained(
            fam.load_model(str(tiny_qwen2_audio_fast), dtype="float32"), str(ga2_same)
        )
        expected = tuned.eval()(**batch).logits
        got = fam.load_model(str(merged_dir), dtype="float32").eval()(**batch).logits
        base = fam.load_model(str(tiny_qwen2_audio_fast), dtype="float32").eval()(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base, expected), "adapter had no effect: the comparison proves nothing"
