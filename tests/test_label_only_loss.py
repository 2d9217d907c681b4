"""The label-only LM head and loss (train/label_only_loss.py) give the full-logits numbers, on every family.

In-process, CPU fp32, the tiny models. The 2-rank (real `deepspeed --num_gpus 2 train.py`) equality
is pinned in tests/test_train_recipe.py against the same full-logits reference.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models import get_family, list_families
from models.inputs import AudioChatCollator
from train import components, label_only_loss, sft
from train.config import LoraSettings

# Answers of different lengths: the rows of a batch carry different label counts.
ANSWERS = [
    "<think>The second tone is higher.</think>\n<answer>second</answer>",
    "<answer>first</answer>",
    "<think>Two beeps, then silence, then a third beep after the pause.</think>\n<answer>three</answer>",
    "<answer>B</answer>",
]


def _rows(family, tmp_path: Path) -> list[dict]:
    rows = []
    for i, (seconds, freq) in enumerate([(1.0, 330.0), (2.0, 660.0), (0.6, 440.0), (1.4, 550.0)]):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = tmp_path / f"clip{i}.wav"
        sf.write(wav, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
        user = [{"type": "audio", "path": str(wav)}, {"type": "text", "text": "Which tone is higher?"}]
        rows.append(
            {
                "id": f"s{i}",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": family.SYSTEM_PROMPT}]},
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i]}]},
                ],
            }
        )
    return rows


@pytest.fixture(scope="module", params=list_families())
def setup(request, tmp_path_factory) -> tuple:
    """(family, PEFT model with LoRA + trainable projector, a collated batch of 3 rows), every family."""
    family = get_family(request.param)
    path = str(tmp_path_factory.mktemp(f"tiny-{family.NAME}"))
    family.make_tiny(path, seed=0, tokenizer="local")
    processor = family.load_processor(path)
    torch.manual_seed(0)
    model = family.load_model(path, dtype="float32", attn_implementation="eager")
    model = components.add_lora(model, family, LoraSettings(r=8, alpha=16, dropout=0.0))
    # LoRA B starts at zero; give it values so that the LoRA path carries gradient everywhere.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    rows = _rows(family, tmp_path_factory.mktemp(f"clips-{family.NAME}"))
    batch = AudioChatCollator(family, processor, max_length=None)(rows[:3])
    counts = (batch["labels"][:, 1:] != -100).sum(dim=1)
    assert len(set(counts.tolist())) == 3, counts  # unequal rows: a mean over rows would differ
    return family, model, batch


def _loss_and_grads(model, batch, **extra) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, **extra).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def test_loss_and_gradients_equal_the_full_logits_ones(setup):
    family, model, batch = setup
    label_only_loss.uninstall(model)
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    label_only_loss.install(model)
    try:
        loss, grads = _loss_and_grads(model, batch)
    finally:
        label_only_loss.uninstall(model)
    assert abs(loss.item() - ref_loss.item()) <= 1e-6 * abs(ref_loss.item()), (loss.item(), ref_loss.item())
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    assert any(family.PROJECTOR.rsplit(".", 1)[-1] in n for n in grads)
    for name in ref_grads:
        assert _rel(grads[name], ref_grads[name]) < 1e-4, name


def test_num_items_in_batch_divides_the_summed_loss(setup):
    _, model, batch = setup
    label_only_loss.install(model)
    try:
        with torch.no_grad():
            mean = model(**batch).loss
            n = int((batch["labels"][:, 1:] != -100).sum())
            # As the Trainer passes it: the label count over all micro-batches and ranks.
            scaled = model(**batch, num_items_in_batch=torch.tensor(4 * n)).loss
    finally:
        label_only_loss.uninstall(model)
    assert abs(scaled.item() - mean.item() / 4) <= 1e-6 * mean.item()


def test_logits_to_keep_and_the_unlabelled_forward(setup):
    _, model, batch = setup
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        full = model(**inputs).logits
        label_only_loss.install(model)
        try:
            assert label_only_loss.is_installed(model)
            same = model(**inputs).logits  # no labels: the model's own forward (generation, eval)
            last = model(**inputs, logits_to_keep=5).logits
        finally:
            label_only_loss.uninstall(model)
    assert not label_only_loss.is_installed(model)
    assert torch.equal(same, full)
    assert last.shape == (full.shape[0], 5, full.shape[2])
    assert torch.allclose(last, full[:, -5:], rtol=1e-5, atol=1e-5)


def test_generate_is_unchanged(setup):
    _, model, batch = setup
    inputs = {k: v[:1] for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        label_only_loss.install(model)
        try:
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        finally:
            label_only_loss.uninstall(model)
    assert torch.equal(out, ref)


def test_trainer_with_gradient_accumulation_matches_full_logits(tiny_qwen2_audio, tmp_path):
    """1 optimizer step of 2 micro-batches (GA 2) of rows with different label counts: the same loss
    and the same update as the same trainer on the model's own full-logits forward."""
    from datasets import Dataset
    from transformers import TrainingArguments

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(tiny_qwen2_audio))
    torch.manual_seed(0)
    base = family.load_model(str(tiny_qwen2_audio), dtype="float32", attn_implementation="eager")
    model = components.add_lora(base, family, LoraSettings(r=8, alpha=16, dropout=0.0))
    rows = _rows(family, tmp_path)
    # The recipe's loader reads the per-sample token lengths (length grouping).
    rows = Dataset.from_list(rows).add_column(components.LENGTH_COLUMN, [100 + i for i in range(len(rows))])
    collator = AudioChatCollator(family, processor, max_length=None)
    results = {}
    for name in ("reference", "label_only"):
        args = TrainingArguments(
            output_dir=str(tmp_path / name), max_steps=1, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, seed=0, data_seed=0, remove_unused_columns=False,
        )  # fmt: skip
        run_model = copy.deepcopy(model)
        trainer = sft.LabelOnlyLossTrainer(
            model=run_model, args=args, train_dataset=rows, data_collator=collator
        )
        if name == "reference":  # the same trainer, loader and order; only the forward differs
            label_only_loss.uninstall(run_model)
        assert label_only_loss.is_installed(run_model) == (name == "label_only")
        trainer.train()
        loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
        weights = {n: p.detach().clone() for n, p in run_model.named_parameters() if p.requires_grad}
        results[name] = (loss, weights)
    (ref_loss, ref_w), (loss, w) = results["reference"], results["label_only"]
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss), (loss, ref_loss)
    for n in ref_w:
        assert torch.allclose(w[n], ref_w[n], rtol=1e-5, atol=1e-6), n


def test_refuses_what_needs_logits(tiny_qwen2_audio_fast, tmp_path):
    from transformers import TrainingArguments

    family = get_family("qwen2_audio")
    model = family.load_model(str(tiny_qwen2_audio_fast), dtype="float32")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="compute_metrics needs the full logits"):
        sft.LabelOnlyLossTrainer(model=model, args=args, compute_metrics=lambda p: {})
    with pytest.raises(ValueError, match="backbone re-laid out the sequence"):
        label_only_loss.label_only_cross_entropy(
            model, torch.zeros(1, 4, 8), torch.zeros(1, 5, dtype=torch.long), None
        )
