"""One conformance suite for every model family `models.list_families()` finds: a new family module
(in models/, or in a folder named by ART_FAMILY_PATH) runs it without editing this file.

Per family, on a tiny random model of the real architecture (the small local tokenizer where the family
offers one, CPU, fp32),
through the commands a user runs:
  interface   the module provides every member of `models.interface.AudioLMFamily`
  build       `python -m scripts.make_tiny_model --family <name>`; family_of(config.json) finds it
  data        `data_prep.prepare --family <name>` renders the family's system prompt
  collate     labels are exactly the assistant turn (decoded back equal to the target + turn end);
              audio placeholders per row equal `num_audio_tokens`; the model's forward takes the batch
  LoRA        adapts only the LLM's linear layers (+ fused experts of a MoE), encoder and FROZEN fixed
  ZeRO-2      2 steps on 2 CPU ranks under the real `deepspeed train.py --config configs/tiny/cpu.yaml`
  eval        `eval.run`'s batched decoding equals one-at-a-time on the trained adapter
  GRPO        2 steps of the real recipe; every prefill and log-prob forward carries the audio rows
  merge       `scripts.merge_adapter` gives the adapter's logits
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import free_port, text_only_copy

from models import family_of, get_family, list_families
from models.inputs import IGNORE_INDEX
from models.interface import check_family

FAMILIES = list_families()
REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "WANDB_MODE": "offline",
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module", params=FAMILIES)
def name(request) -> str:
    return request.param


def _tokenizer_flag(name: str) -> list[str]:
    """`--tokenizer local` (a small vocabulary, the same model on every machine) where the family
    offers it, else its default tokenizer."""
    return ["--tokenizer", "local"] if "local" in get_family(name).TINY_TOKENIZERS else []


@pytest.fixture(scope="module")
def family(name):
    return get_family(name)


@pytest.fixture(scope="module")
def tiny(name, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"conf-{name}") / "tiny"
    _run(
        [
            sys.executable,
            "-m",
            "scripts.make_tiny_model",
            "--family",
            name,
            "--out",
            str(out),
            *_tokenizer_flag(name),
        ]
    )
    return out


@pytest.fixture(scope="module")
def prepared(name, synth_dir, tmp_path_factory) -> Path:
    from data_prep.prepare import run

    out = tmp_path_factory.mktemp(f"conf-data-{name}")
    return run(
        [
            "--config", str(REPO / "configs/data/synth_cot.yaml"),
            "--source.path", str(synth_dir / "meta.jsonl"),
            "--audio_root", str(synth_dir),
            "--out_dir", str(out),
            "--family", name,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def rows(prepared) -> list[dict]:
    from datasets import load_from_disk

    ds = load_from_disk(str(prepared / "hf" / "train"))
    return [ds[i] for i in range(3)]


@pytest.fixture(scope="module")
def zero2_run(name, tiny, prepared, tmp_path_factory) -> Path:
    """2 optimizer steps on 2 CPU ranks, ZeRO-2, the tiny CPU recipe as a user launches it."""
    out = tmp_path_factory.mktemp(f"conf-run-{name}") / "run"
    _run(
        [
            str(Path(sys.executable).parent / "deepspeed"), "--master_port", str(free_port()), "--num_gpus", "2",
            "train.py", "--config", "configs/tiny/cpu.yaml",
            "--model_name_or_path", str(tiny), "--dataset_dir", str(prepared), "--output_dir", str(out),
            "--max_steps", "2", "--save_steps", "100", "--eval_steps", "100", "--max_val_samples", "2",
            "--report_to", "none",
        ],
        timeout=900,
    )  # fmt: skip
    return out


def test_interface(family):
    assert check_family(family) == []


def test_build_and_family_of(name, tiny):
    assert family_of(str(tiny)) == name
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] in get_family(name).MODEL_TYPES


def test_data_prep_renders_the_family_prompt(family, prepared, rows):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["family"] == family.NAME
    assert manifest["system_prompt"] == family.SYSTEM_PROMPT
    system = rows[0]["messages"][0]
    assert system["role"] == "system" and system["content"][0]["text"] == family.SYSTEM_PROMPT


def test_collate_labels_are_the_assistant_turn_and_audio_counts_match(family, tiny, rows):
    from common.audio import load_audio
    from models.inputs import AudioChatCollator

    processor = family.load_processor(str(tiny))
    batch = AudioChatCollator(family, processor, max_length=None)(rows)
    tok = processor.tokenizer
    audio_id = tok.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        trained = batch["input_ids"][i][labels != IGNORE_INDEX]
        assert tok.decode(trained) == row["target"] + family.TURN_END_TOKEN
        # the trained span is one contiguous run ending at the turn end
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        assert positions[-1] - positions[0] + 1 == len(positions)
        wave = load_audio(row["audio_path"], max_seconds=family.max_audio_seconds(processor))
        expected = family.num_audio_tokens(processor, len(wave))
        assert int((batch["input_ids"][i] == audio_id).sum()) == expected
    for key in family.AUDIO_FEATURE_KEYS:
        assert batch[key].shape[0] == len(rows), key
    model = family.load_model(str(tiny), dtype="float32", attn_implementation="eager")
    with torch.no_grad():
        out = model(**batch)  # the model's own audio feature/token check runs here
    assert torch.isfinite(out.loss)


def test_collate_mixes_text_only_and_audio_rows(family, tiny, rows):
    """Text-only rows (no audio) in a batch with audio rows: labels are still exactly the assistant
    turn, one feature row per clip, each row's tokens as when collated alone; the model takes it."""
    from models.inputs import AudioChatCollator

    processor = family.load_processor(str(tiny))
    collator = AudioChatCollator(family, processor, max_length=None)
    mixed = [rows[0], text_only_copy(rows[1]), rows[2], text_only_copy(rows[0])]
    batch = collator(mixed)
    tok = processor.tokenizer
    audio_id = tok.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    for i, row in enumerate(mixed):
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i].bool()
        assert tok.decode(ids[labels != IGNORE_INDEX]) == row["target"] + family.TURN_END_TOKEN
        alone = collator([row])
        assert torch.equal(ids[mask], alone["input_ids"][0][alone["attention_mask"][0].bool()]), row["id"]
        assert bool((ids == audio_id).any()) == (row["audio_path"] is not None)
    for key in family.AUDIO_FEATURE_KEYS:
        assert batch[key].shape[0] == 2, key  # the two clips only
    text_only = collator([text_only_copy(r) for r in rows[:2]])
    assert not set(family.AUDIO_FEATURE_KEYS) & set(text_only)
    model = family.load_model(str(tiny), dtype="float32", attn_implementation="eager")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss) and torch.isfinite(model(**text_only).loss)


def _gather_order(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> tuple[list, list]:
    """Modules that own parameters, in the order their forward runs and in the order the backward
    reaches their output: the order in which DeepSpeed ZeRO-3 gathers their weights."""
    forward: list[str] = []
    backward: list[str] = []

    def after_forward(name: str):
        def hook(module, args, output):
            out = output if isinstance(output, torch.Tensor) else getattr(output, "last_hidden_state", None)
            if out is None and isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                out = output[0]
            if out is not None and out.requires_grad:
                out.register_hook(lambda grad: backward.append(name))

        return hook

    handles = []
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: forward.append(name)))
            handles.append(module.register_forward_hook(after_forward(name)))
    try:
        loss_of().backward()
    finally:
        for handle in handles:
            handle.remove()
    return forward, backward


def test_silent_audio_pass_matches_an_audio_batch_and_keeps_the_loss(family, tiny, rows):
    """A text-only batch under the SFT forward runs the audio path on silence: the same modules in the
    same order as an audio batch, forward and backward (what ZeRO-3 ranks must agree on), with the
    loss and every gradient of the plain text-only forward, and a zero gradient for the projector."""
    from models.inputs import AudioChatCollator
    from models.silent_audio import SilentAudioPass
    from train import label_only_loss
    from train.components import add_lora
    from train.config import LoraSettings

    processor = family.load_processor(str(tiny))
    collator = AudioChatCollator(family, processor, max_length=None)
    audio_batch = collator(rows[:2])
    text_batch = collator([text_only_copy(r) for r in rows[:2]])
    model = family.load_model(str(tiny), dtype="float32", attn_implementation="eager")
    model = add_lora(model, family, LoraSettings(r=4, alpha=8, dropout=0.0, train_projector=True))
    silent = SilentAudioPass.for_processor(family, processor)

    def loss_of(batch: dict, pass_: SilentAudioPass | None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            label_only_loss.uninstall(model)
            label_only_loss.install(model, silent_audio=pass_)
            model.zero_grad(set_to_none=True)
            return model(**batch).loss

        return run

    with_audio = _gather_order(model, loss_of(audio_batch, silent))
    with_silence = _gather_order(model, loss_of(text_batch, silent))
    assert with_silence == with_audio
    assert any(f".{family.AUDIO_ENCODER}." in f".{n}." for n in with_silence[0])
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    loss = loss_of(text_batch, silent)().item()
    plain_loss = loss_of(text_batch, None)()
    plain_loss.backward()
    assert loss == plain_loss.item()
    plain = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    label_only_loss.uninstall(model)
    projector = {n for n in grads if f".{family.PROJECTOR}." in f".{n}."}
    assert projector and projector.isdisjoint(plain), "without the pass the projector has no gradient"
    assert all(not grads[n].any() for n in projector)
    assert plain.keys() == grads.keys() - projector
    assert all(torch.equal(grads[n], plain[n]) for n in plain)


def test_make_tiny_window_seconds_sets_the_longest_clip(name, family, rows, tmp_path):
    """`--window_seconds 5`: the processor cuts at 5 s and the model still takes a whole batch."""
    from models.inputs import AudioChatCollator

    out = tmp_path / "tiny-5s"
    _run(
        [sys.executable, "-m", "scripts.make_tiny_model", "--family", name, "--out", str(out),
         *_tokenizer_flag(name), "--window_seconds", "5"]
    )  # fmt: skip
    processor = family.load_processor(str(out))
    assert family.max_audio_seconds(processor) == 5.0
    batch = AudioChatCollator(family, processor, max_length=None)(rows)
    model = family.load_model(str(out), dtype="float32")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_lora_hits_only_llm_linears_encoder_and_frozen_stay(family, tiny):
    from train.components import add_lora
    from train.config import LoraSettings

    model = family.load_model(str(tiny), dtype="float32", attn_implementation="eager")
    frozen = [re.compile(pattern) for pattern in family.FROZEN]
    llm_linears = {
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and n.startswith(f"{family.LLM}.layers.")
        and not any(f.search(f"{n}.weight") for f in frozen)
    }
    model = add_lora(model, family, LoraSettings(r=4, alpha=8, dropout=0.0, train_projector=True))
    prefix = "base_model.model."
    adapted = {n[len(prefix) :].split(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert adapted and all(n.startswith(f"{family.LLM}.") for n in adapted), sorted(adapted)[:5]
    assert llm_linears <= adapted, sorted(llm_linears - adapted)[:5]  # every decoder Linear (q/k/v/o, MLP)
    for target in family.LORA_TARGET.get("target_parameters", []):  # fused MoE experts
        parent = target.rsplit(".", 1)[0]
        assert any(n.endswith(parent) for n in adapted), (target, sorted(adapted)[:5])
    for n, p in model.named_parameters():
        inner = f".{n[len(prefix) :]}."
        if p.requires_grad and f".{family.AUDIO_ENCODER}." in inner:
            assert f".{family.PROJECTOR}." in inner, n  # only the projector may train there
        if any(f.search(n) for f in frozen):
            assert not p.requires_grad, n
    if family.FROZEN:
        assert any(any(f.search(n) for f in frozen) for n, _ in model.named_parameters()), family.FROZEN


@pytest.mark.slow
def test_zero2_two_ranks_two_steps(zero2_run):
    info = json.loads((zero2_run / "run_info.json").read_text())
    assert info["status"] == "complete" and info["global_step"] == 2 and info["world_size"] == 2
    assert len(set(info["adapter_digests"])) == 1 and len(info["adapter_digests"]) == 2
    assert (zero2_run / "adapter_model.safetensors").exists()
    losses = [
        e["loss"]
        for e in json.loads((zero2_run / "trainer_state.json").read_text())["log_history"]
        if "loss" in e
    ]
    assert losses and all(l == l and l < 1e4 for l in losses)  # noqa: E741


@pytest.mark.slow
def test_eval_batched_equals_one_at_a_time(family, tiny, prepared, zero2_run):
    from eval.run import EvalConfig, evaluate, load_model_and_adapter, read_split_rows

    manifest = json.loads((prepared / "manifest.json").read_text())
    items = read_split_rows(prepared, manifest, "test", 4)
    outputs = {}
    for batch_size in (4, 1):
        cfg = EvalConfig(model=str(tiny), adapter=str(zero2_run), data=str(prepared), batch_size=batch_size,
                         max_new_tokens=12, family=family.NAME, attn_implementation="eager")  # fmt: skip
        model, processor = load_model_and_adapter(cfg, family), family.load_processor(str(tiny))
        outputs[batch_size] = {r["id"]: r["output"] for r in evaluate(model, processor, family, items, cfg)}
    assert outputs[4] == outputs[1]


def test_generation_with_last_position_logits_gives_the_same_tokens(family, tiny, rows):
    """eval.run's generate under `last_position_logits`: the head only ever sees one position per
    row, and the greedy tokens are those of the model's own full-logits prefill."""
    from models.generation import last_position_logits
    from models.inputs import encode_prompts

    model = family.load_model(str(tiny), dtype="float32")
    processor = family.load_processor(str(tiny))
    inputs = encode_prompts(family, processor, rows, audio_mode="real", seed=0)
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    logits_shapes: list[tuple] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: logits_shapes.append(tuple(out.shape)))
    with torch.no_grad():
        full = model.generate(**inputs, **gen)
        logits_shapes.clear()
        with last_position_logits(model):
            last = model.generate(**inputs, **gen)
    hook.remove()
    assert torch.equal(full, last)
    assert logits_shapes and all(shape[1] == 1 for shape in logits_shapes), logits_shapes
    assert "forward" not in vars(model.get_output_embeddings())  # restored after the block


def _spy(model: torch.nn.Module, keys: tuple[str, ...]) -> list[dict]:
    """Record, for every forward of the base model, the rows of input_ids and of each audio key."""
    import functools

    calls: list[dict] = []
    forward = model.forward

    @functools.wraps(forward)  # keep the signature: `generate` checks model kwargs against it
    def record(*args, **kwargs):
        ids = kwargs.get("input_ids")
        calls.append(
            {
                "rows": None if ids is None else ids.shape[0],
                "full": ids is not None and ids.shape[1] > 1,  # prefill or scoring (not a decode step)
                "scoring": bool(kwargs.get("logits_to_keep")) and not kwargs.get("use_cache"),
                **{k: None if kwargs.get(k) is None else kwargs[k].shape[0] for k in keys},
            }
        )
        return forward(*args, **kwargs)

    model.forward = record
    return calls


@pytest.mark.slow
def test_grpo_two_steps_audio_in_every_forward(family, tiny, prepared, tmp_path, monkeypatch):
    from train import grpo, label_only_loss
    from train.config import load_config

    # The spy goes on top of the label-only forward the trainer installs, so it sees every call:
    # generation (prefill and decode) and the old/reference/policy log-prob forwards.
    spied: list[list[dict]] = []
    install = label_only_loss.install

    def install_and_spy(model):
        model = install(model)
        target = label_only_loss.transformers_model(model)
        if not getattr(target, "_conformance_spy", False):
            spied.append(_spy(target, family.AUDIO_FEATURE_KEYS))
            target._conformance_spy = True
        return model

    monkeypatch.setattr(label_only_loss, "install", install_and_spy)
    cfg = load_config(
        [
            "--config", str(REPO / "configs/tiny/grpo.yaml"),
            "--model_name_or_path", str(tiny), "--dataset_dir", str(prepared), "--output_dir", str(tmp_path / "grpo"),
            "--max_steps", "2", "--deepspeed", "null", "--max_completion_length", "6", "--report_to", "none",
            "--max_train_samples", "8", "--save_steps", "100",
        ]
    )  # fmt: skip
    grpo.main(cfg)
    full = [c for c in spied[0] if c["full"]]
    assert any(c["scoring"] for c in full) and any(not c["scoring"] for c in full), full
    for c in full:
        for key in family.AUDIO_FEATURE_KEYS:
            assert c[key] == c["rows"], (key, c)
    info = json.loads((tmp_path / "grpo" / "run_info.json").read_text())
    assert info["status"] == "complete" and info["global_step"] == 2


@pytest.mark.slow
def test_merge_gives_the_adapter_logits(family, tiny, zero2_run, rows, tmp_path):
    from peft import PeftModel

    from models.inputs import AudioChatCollator
    from scripts.merge_adapter import main as merge_main

    merged = tmp_path / "merged"
    merge_main(["--base", str(tiny), "--adapter", str(zero2_run), "--out", str(merged)])
    processor = family.load_processor(str(merged))
    batch = AudioChatCollator(family, processor, None)(rows[:2])
    batch.pop("labels")
    with torch.no_grad():
        base = family.load_model(str(tiny), dtype="float32", attn_implementation="eager").eval()
        expected = PeftModel.from_pretrained(base, str(zero2_run)).eval()(**batch).logits
        got = (
            family.load_model(str(merged), dtype="float32", attn_implementation="eager")
            .eval()(**batch)
            .logits
        )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
