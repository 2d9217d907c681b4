"""Qwen3-Omni (MoE thinker) family on a tiny random model of the real architecture (CPU, fp32).

What is specific to this family: the Qwen3 special-token layout, a token count that must not depend
on the batch (the model never checks it), LoRA on fused expert tensors with the router frozen, the
LoRA target that must stay off the audio tower (PEFT's regex trap), and loading the thinker out of a
full Omni checkpoint stored the hub's way (per-expert weights under `thinker.`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import family_of, get_family

FAMILY = get_family("qwen3_omni_moe")
REAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<think>": 151667,
    "</think>": 151668,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<tts_pad>": 151671,
    "<|audio_pad|>": 151675,
}
# 0.5 s to 30 s, with lengths that are not multiples of the 160-sample hop or of the 1 s chunk.
CLIP_SAMPLES = [
    8000,
    8001,
    12345,
    16000,
    16080,
    16159,
    16161,
    23999,
    40000,
    99999,
    160160,
    255_999,
    320_001,
    480_000,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-qwen3-omni")
    FAMILY.make_tiny(out, seed=0)  # real Qwen2 vocabulary when ../shared has it
    return out


@pytest.fixture(scope="module")
def processor(tiny):
    return FAMILY.load_processor(str(tiny))


def _messages(answer: str) -> list[dict]:
    # As after a datasets round trip: every block carries every key.
    return [
        {"role": "system", "content": [{"type": "text", "text": FAMILY.SYSTEM_PROMPT, "path": None}]},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": "clip.wav", "text": None},
                {"type": "text", "text": "Which tone is higher?", "path": None},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer, "path": None}]},
    ]


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
    assert config["model_type"] == "qwen3_omni_moe_thinker"
    assert family_of(str(tiny)) == "qwen3_omni_moe"
    model = FAMILY.load_model(str(tiny), dtype="float32")
    assert type(model).__name__ == FAMILY.MODEL_CLASS
    tok = processor.tokenizer
    assert model.config.audio_token_id == tok.convert_tokens_to_ids(FAMILY.AUDIO_PLACEHOLDER)
    assert model.config.position_id_per_seconds == 13
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.output_router_logits is False
    assert type(processor).__name__ == "Qwen3OmniMoeAudioProcessor"


def test_real_special_token_ids(tiny, processor, qwen2_tokenizer_dir):
    tok = processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in REAL_IDS} == REAL_IDS


def test_render_list_content_keeps_think_and_prompt_is_prefix(processor):
    answer = "<think>The first tone is higher.</think>\n<answer>first</answer>"
    full = FAMILY.render(processor, _messages(answer), add_generation_prompt=False)
    prompt = FAMILY.render(processor, _messages(answer)[:2], add_generation_prompt=True)
    assert full == (
        f"<|im_start|>system\n{FAMILY.SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>Which tone is higher?<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )
    assert full.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")


def test_num_audio_tokens_equals_the_processor_alone_and_batched(processor):
    pad = processor.tokenizer.convert_tokens_to_ids(FAMILY.AUDIO_PLACEHOLDER)
    expected = [FAMILY.num_audio_tokens(processor, n) for n in CLIP_SAMPLES]
    alone = [int((_batch(processor, [n])["input_ids"] == pad).sum()) for n in CLIP_SAMPLES]
    batched = (_batch(processor, CLIP_SAMPLES)["input_ids"] == pad).sum(-1).tolist()
    assert alone == expected and batched == expected
    assert FAMILY.num_audio_tokens(processor, 480_000) == 390  # 13 per second
    assert FAMILY.num_audio_tokens(processor, 16_080) == 14  # stock processor: 13 alone, 14 batched


def test_audio_features_match_placeholders(tiny, processor):
    model = FAMILY.load_model(str(tiny), dtype="float32").eval()
    batch = _batch(processor, [16080, 32001, 8000])
    with torch.no_grad():
        feats = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"])
    pad = processor.tokenizer.convert_tokens_to_ids(FAMILY.AUDIO_PLACEHOLDER)
    assert feats.last_hidden_state.shape[0] == int((batch["input_ids"] == pad).sum())


def _lora(model, r: int = 4):
    from train.components import add_lora
    from train.config import LoraSettings

    return add_lora(model, FAMILY, LoraSettings(r=r, alpha=2 * r, dropout=0.0, train_projector=True))


def test_lora_hits_attention_and_experts_only_router_frozen(tiny):
    model = FAMILY.load_model(str(tiny), dtype="float32")
    cfg = model.config.text_config
    peft_model = _lora(model, r=4)
    prefix = "base_model.model."
    adapted = {
        re.sub(r"\.(base_layer\.)?lora_[AB]\..*", "", n[len(prefix) :])
        for n, _ in peft_model.named_parameters()
        if ".lora_" in n
    }
    layers = range(cfg.num_hidden_layers)
    attention = {f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in layers for p in "qkvo"}
    experts = {f"model.language_model.layers.{i}.mlp.experts" for i in layers}
    assert adapted == attention | experts
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    outside = [n for n in trainable if ".lora_" not in n and ".audio_tower.proj2." not in n]
    assert outside == []  # only LoRA and the projector (modules_to_save) train
    assert not any(".visual." in n or (".audio_tower." in n and ".lora_" in n) for n in trainable)
    routers = [n for n, _ in peft_model.named_parameters() if re.search(FAMILY.FROZEN[0], n)]
    assert len(routers) == cfg.num_hidden_layers and not (set(routers) & trainable)
    # r * (in + out) per attention Linear; per expert, r * (in + out) on each fused tensor.
    h, q, kv, e, i = (
        cfg.hidden_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.num_experts,
        cfg.moe_intermediate_size,
    )
    per_layer = 4 * ((h + q) + 2 * (h + kv) + (q + h)) + 4 * e * ((h + 2 * i) + (i + h))
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    assert lora == cfg.num_hidden_layers * per_layer


def test_forward_backward_trains_lora_not_router_and_merge_keeps_logits(tiny, processor):
    torch.manual_seed(0)
    model = FAMILY.load_model(str(tiny), dtype="float32", attn_implementation="eager")
    peft_model = _lora(model)
    batch = _batch(processor, [16080, 40000])
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    router = dict(peft_model.named_parameters())
    router_name = next(n for n in router if re.search(FAMILY.FROZEN[0], n))
    router_before = router[router_name].detach().clone()
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    out = peft_model(**batch, labels=labels)
    assert torch.isfinite(out.loss) and out.aux_loss is None  # router aux loss is off
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    # lora_A gets no gradient while lora_B is still zero; lora_B does.
    assert any("experts" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any("q_proj.lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    opt.step()
    assert torch.equal(router[router_name], router_before)
    # LoRA B starts at zero: one step makes the adapter non-trivial before merging.
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def _to_hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published checkpoint's layout: everything under `thinker.`, the text model at
    `thinker.model.*`, one gate/up/down Linear per expert."""
    out = {}
    for key, value in state.items():
        if key.startswith("model.language_model."):
            key = "thinker.model." + key[len("model.language_model.") :]
        elif key.startswith("model."):
            key = "thinker." + key[len("model.") :]
        else:
            key = "thinker." + key
        if key.endswith("mlp.experts.gate_up_proj"):
            half = value.shape[1] // 2
            for e in range(value.shape[0]):
                out[key.replace("gate_up_proj", f"{e}.gate_proj.weight")] = value[e, :half].clone()
                out[key.replace("gate_up_proj", f"{e}.up_proj.weight")] = value[e, half:].clone()
        elif key.endswith("mlp.experts.down_proj"):
            for e in range(value.shape[0]):
                out[key.replace("down_proj", f"{e}.down_proj.weight")] = value[e].clone()
        else:
            out[key] = value.clone()
    return out


def test_loads_the_thinker_from_a_full_omni_checkpoint(tiny, tmp_path):
    from safetensors.torch import save_file

    thinker = FAMILY.load_model(str(tiny), dtype="float32").eval()
    state = _to_hub_layout(thinker.state_dict())
    state["talker.model.layers.0.mlp.gate.weight"] = torch.zeros(4, 8)  # never materialised
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    thinker_config = json.loads((tiny / "config.json").read_text())
    thinker_config["text_config"]["output_router_logits"] = True  # load_model turns the aux loss off
    top = {
        "model_type": "qwen3_omni_moe",
        "architectures": ["Qwen3OmniMoeForConditionalGeneration"],
        "thinker_config": thinker_config,
    }
    (tmp_path / "config.json").write_text(json.dumps(top))
    for f in tiny.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, tmp_path / f.name)
    assert family_of(str(tmp_path)) == "qwen3_omni_moe"
    loaded = FAMILY.load_model(str(tmp_path), dtype="float32").eval()
    assert type(loaded).__name__ == FAMILY.MODEL_CLASS
    assert loaded.config.text_config.output_router_logits is False
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, thinker(input_ids=ids).logits, rtol=0, atol=0
        )


def test_rejects_a_checkpoint_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni_thinker"}))
    with pytest.raises(ValueError, match="not a Qwen3-Omni checkpoint"):
        FAMILY.thinker_config(str(tmp_path))


@pytest.mark.parametrize(
    "hub_id",
    [
        "Qwen/Qwen3-Omni-30B-A3B-Instruct",
        "Qwen/Qwen3-Omni-30B-A3B-Thinking",
        "Qwen/Qwen3-Omni-30B-A3B-Captioner",
    ],
)
def test_family_of_hub_ids(hub_id):
    assert family_of(hub_id) == "qwen3_omni_moe"
