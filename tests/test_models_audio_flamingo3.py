"""Audio Flamingo 3 family on a tiny random model of the real architecture (CPU, fp32).

What is specific to this family: `<sound>` (one per clip, before the text) expanded to 25 tokens per
second inside one 30 s window, `input_features_mask` as the mask key, one feature row per clip,
and LoRA on the Qwen2 LLM's linears only (the encoder's attention has q/k/v_proj too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models import family_of, get_family

FAMILY = get_family("audio_flamingo3")
# 0.5 s to 30 s (the window), with lengths that are not multiples of the 160-sample hop.
CLIP_SAMPLES = [
    8000,
    8001,
    12345,
    16000,
    16080,
    16161,
    23999,
    40000,
    99999,
    160160,
    255_999,
    320_001,
    479_999,
    480_000,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-af3")
    FAMILY.make_tiny(out, seed=0)  # real Qwen2 vocabulary when ../shared has it
    return out


@pytest.fixture(scope="module")
def processor(tiny):
    return FAMILY.load_processor(str(tiny))


def _messages(answer: str, system: bool = True) -> list[dict]:
    # As after a datasets round trip (every block carries every key); text before audio on purpose.
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Which tone is higher?", "path": None},
                {"type": "audio", "path": "clip.wav", "text": None},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer, "path": None}]},
    ]
    if system:
        messages.insert(
            0, {"role": "system", "content": [{"type": "text", "text": "Be brief.", "path": None}]}
        )
    return messages


def _batch(processor, n_samples: list[int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    texts = [
        FAMILY.render(processor, _messages(f"<think>t{i}</think> A"), add_generation_prompt=False)
        for i in range(len(n_samples))
    ]
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in n_samples]
    return FAMILY.encode(processor, texts, audios, padding_side="right")


def test_tiny_build_reload_and_family_of(tiny, processor):
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "audioflamingo3"
    assert family_of(str(tiny)) == "audio_flamingo3"
    model = FAMILY.load_model(str(tiny), dtype="float32")
    assert type(model).__name__ == FAMILY.MODEL_CLASS
    assert model.config.audio_token_id == processor.tokenizer.convert_tokens_to_ids(FAMILY.AUDIO_PLACEHOLDER)
    assert processor.audio_token == FAMILY.AUDIO_PLACEHOLDER
    assert FAMILY.max_audio_seconds(processor) == 30.0


def test_real_special_token_ids(processor, qwen2_tokenizer_dir):
    ids = processor.tokenizer.convert_tokens_to_ids
    assert [ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>")] == [
        151643,
        151644,
        151645,
        151669,
    ]


def test_render_list_content_sound_first_and_think_kept(processor):
    answer = "<think>The first tone is higher.</think>\n<answer>first</answer>"
    full = FAMILY.render(processor, _messages(answer), add_generation_prompt=False)
    prompt = FAMILY.render(processor, _messages(answer)[:2], add_generation_prompt=True)
    assert full == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<sound>Which tone is higher?<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )
    assert full.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")
    no_system = FAMILY.render(processor, _messages(answer, system=False), add_generation_prompt=False)
    assert no_system.startswith(f"<|im_start|>system\n{FAMILY.SYSTEM_PROMPT}<|im_end|>\n")


def test_num_audio_tokens_equals_the_processor_and_rows_are_clips(processor):
    sound = processor.tokenizer.convert_tokens_to_ids(FAMILY.AUDIO_PLACEHOLDER)
    batch = _batch(processor, CLIP_SAMPLES)
    expected = [FAMILY.num_audio_tokens(processor, n) for n in CLIP_SAMPLES]
    assert (batch["input_ids"] == sound).sum(-1).tolist() == expected
    assert (
        FAMILY.num_audio_tokens(processor, 480_000) == 750 and FAMILY.num_audio_tokens(processor, 8000) == 12
    )
    assert set(FAMILY.AUDIO_FEATURE_KEYS) <= set(batch)
    for key in FAMILY.AUDIO_FEATURE_KEYS:
        assert batch[key].shape[0] == len(CLIP_SAMPLES), key  # one 30 s window per clip
    assert batch["input_features"].shape[-1] == 3000  # every window padded to 30 s


def test_encode_rejects_a_clip_count_the_processor_cannot_pair(processor):
    text = FAMILY.render(processor, _messages("A"), add_generation_prompt=False)
    with pytest.raises(ValueError, match="one clip per sample"):
        FAMILY.encode(processor, [text, text], [np.zeros(16000, np.float32)], padding_side="left")


def _lora(model, r: int = 4):
    from train.components import add_lora
    from train.config import LoraSettings

    return add_lora(model, FAMILY, LoraSettings(r=r, alpha=2 * r, dropout=0.0, train_projector=True))


def test_lora_hits_exactly_the_llm_linears(tiny):
    model = FAMILY.load_model(str(tiny), dtype="float32")
    n_layers = model.config.text_config.num_hidden_layers
    peft_model = _lora(model)
    prefix = "base_model.model."
    adapted = {
        re.sub(r"\.lora_[AB]\..*", "", n[len(prefix) :])
        for n, _ in peft_model.named_parameters()
        if ".lora_" in n
    }
    expected = {
        f"model.language_model.layers.{i}.{m}"
        for i in range(n_layers)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
        + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    }
    assert adapted == expected and len(adapted) == 7 * n_layers
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n or ".multi_modal_projector." in n for n in trainable)
    assert not any(".audio_tower." in n for n in trainable)


def test_forward_backward_and_merge_keeps_logits(tiny, processor):
    torch.manual_seed(0)
    model = FAMILY.load_model(str(tiny), dtype="float32", attn_implementation="eager")
    peft_model = _lora(model)
    batch = _batch(processor, [16080, 40000])
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    out = peft_model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("q_proj.lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any("down_proj.lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    opt.step()
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_rejects_a_checkpoint_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_audio"}))
    with pytest.raises(ValueError, match="not an Audio Flamingo 3 checkpoint"):
        FAMILY.load_model(str(tmp_path), dtype="float32")


def test_family_of_hub_id():
    assert family_of("nvidia/audio-flamingo-3-hf") == "audio_flamingo3"
