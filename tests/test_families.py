"""Model families on tiny random models of the real architectures (CPU, fp32, no downloads).

Each tiny model is built by conftest through `make_tiny` and loaded back here through the family's
`load_model`/`load_processor`, the path a real checkpoint takes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from common.paths import shared_dir
from models import family_of, get_family, list_families
from models._qwen import shared_tokenizer_dir

FAMILIES = ["qwen2_audio", "qwen2_5_omni"]
FIXTURE = {"qwen2_audio": "tiny_qwen2_audio", "qwen2_5_omni": "tiny_qwen2_5_omni"}
REAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
}
OMNI_IDS = {"<|vision_bos|>": 151652, "<|vision_eos|>": 151653, "<|IMAGE|>": 151655, "<|VIDEO|>": 151656}
LLM_LINEAR = re.compile(r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$")


def tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def messages(system: str, wav: str, question: str, answer: str) -> list[dict]:
    # Shaped as after a datasets round trip: every block carries every key.
    return [
        {"role": "system", "content": [{"type": "text", "text": system, "path": None}]},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": wav, "text": None},
                {"type": "text", "text": question, "path": None},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer, "path": None}]},
    ]


@pytest.fixture(params=FAMILIES)
def tiny(request) -> tuple:
    """(family module, model dir) for each family."""
    return get_family(request.param), request.getfixturevalue(FIXTURE[request.param])


def _batch(family, processor, tmp_path: Path) -> dict:
    from models.inputs import AudioChatCollator

    rows = []
    for i, (seconds, freq, answer) in enumerate([(1.0, 300.0, "A"), (1.6, 900.0, "B")]):
        wav = tmp_path / f"tone{i}.wav"
        sf.write(wav, tone(seconds, freq), 16000)
        rows.append(
            {"id": f"t{i}", "messages": messages(family.SYSTEM_PROMPT, str(wav), "Higher or lower?", answer)}
        )
    return AudioChatCollator(family, processor, max_length=None)(rows)


def test_registry_and_errors(tmp_path):
    assert set(FAMILIES) <= set(list_families())
    assert not any(name.startswith("_") for name in list_families())
    with pytest.raises(ValueError, match="known families: .*qwen2_audio"):
        get_family("llama")
    assert family_of("Qwen/Qwen2-Audio-7B-Instruct") == "qwen2_audio"
    assert family_of("Qwen/Qwen2.5-Omni-7B") == "qwen2_5_omni"
    with pytest.raises(ValueError, match="cannot tell the model family"):
        family_of("someone/some-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni_thinker"}))
    assert family_of(str(tmp_path)) == "qwen2_5_omni"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="matches no family"):
        family_of(str(tmp_path))


def test_family_modules_import_without_torch():
    code = (
        "import sys, models.qwen2_audio as a, models.qwen2_5_omni as o; "
        "assert a.SYSTEM_PROMPT and o.SYSTEM_PROMPT; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.stdout.strip() == "False"


def test_tiny_reloads_and_forward(tiny, tmp_path):
    family, path = tiny
    assert family_of(str(path)) == family.NAME
    model = family.load_model(str(path), dtype="float32")
    processor = family.load_processor(str(path))
    assert type(model).__name__ == family.MODEL_CLASS
    assert model.config.get_text_config().num_hidden_layers == 2
    assert processor.feature_extractor.feature_size == 128
    assert family.max_audio_seconds(processor) == 10.0
    for dotted in (family.AUDIO_ENCODER, family.PROJECTOR, family.LLM):
        model.get_submodule(dotted)
    if family.NAME == "qwen2_audio":
        assert model.accepts_loss_kwargs is False  # else the HF Trainer scales the loss by world size
    else:
        assert not hasattr(model, "talker")
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    batch = _batch(family, processor, tmp_path)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss) and 5 < loss.item() < 20  # ~ln(vocab) for a random model


@pytest.mark.parametrize("name", FAMILIES)
def test_special_token_ids_follow_real_layout(name, request):
    processor = get_family(name).load_processor(str(request.getfixturevalue(FIXTURE[name])))
    tok = processor.tokenizer
    expected = dict(REAL_IDS, **(OMNI_IDS if name == "qwen2_5_omni" else {}))
    if shared_tokenizer_dir() is None:  # small local BPE: same order, right after its vocab
        base = tok.convert_tokens_to_ids("<|endoftext|>")
        expected = {t: i - 151643 + base for t, i in expected.items()}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert processor.audio_token_id == expected["<|AUDIO|>"]
    text = "Which tone is higher? Answer: B"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_lora_regex_hits_only_llm_linears(tiny):
    family, path = tiny
    model = family.load_model(str(path), dtype="float32")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    hit = {n for n in names if re.fullmatch(family.LORA_TARGET["target_modules"], n)}
    expected = {n for n in names if n.startswith(family.LLM + ".") and LLM_LINEAR.search(n)}
    assert hit == expected and len(expected) == 2 * 7
    assert not any(n.startswith((family.AUDIO_ENCODER, family.PROJECTOR, "model.visual")) for n in hit)
    # A bare name list would also hit the encoders: the reason the regex exists.
    assert any(n.startswith(family.AUDIO_ENCODER) and n.endswith("q_proj") for n in names)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_lora_steps_train_only_lora_and_projector(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    family, path = tiny
    torch.manual_seed(0)
    model = family.load_model(str(path), dtype="float32")
    processor = family.load_processor(str(path))
    batch = _batch(family, processor, tmp_path)
    base = {
        "encoder": _snapshot(model.get_submodule(family.AUDIO_ENCODER)),
        "llm": _snapshot(model.get_submodule(family.LLM)),
        "head": _snapshot(model.lm_head),
    }
    projector_before = _snapshot(model.get_submodule(family.PROJECTOR))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **family.LORA_TARGET))
    for p in model.get_submodule(family.PROJECTOR).parameters():
        p.requires_grad_(True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3)
    losses = []
    for _ in range(6):
        loss = peft_model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses

    lora = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # B starts at zero
    projector_after = _snapshot(model.get_submodule(family.PROJECTOR))
    assert any(not torch.equal(projector_before[n], projector_after[n]) for n in projector_before)
    encoder_after = _snapshot(model.get_submodule(family.AUDIO_ENCODER))
    projector_prefix = family.PROJECTOR.removeprefix(family.AUDIO_ENCODER + ".")
    for n, before in base["encoder"].items():
        if not n.startswith(projector_prefix + "."):  # Omni's projector lives inside the encoder
            assert torch.equal(before, encoder_after[n]), n
    llm_after = {
        n.replace(".base_layer", ""): p
        for n, p in model.get_submodule(family.LLM).named_parameters()
        if "lora_" not in n
    }
    assert set(llm_after) == set(base["llm"])
    assert all(torch.equal(base["llm"][n], llm_after[n]) for n in base["llm"])
    assert all(torch.equal(base["head"][n], p) for n, p in model.lm_head.named_parameters())


def test_qwen2_audio_prompt_layout_matches_real_template(tiny_qwen2_audio):
    family = get_family("qwen2_audio")
    processor = family.load_processor(str(tiny_qwen2_audio))
    msgs = messages(family.SYSTEM_PROMPT, "/data/a.wav", "Which tone is higher?\nA. first\nB. second", "B")
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Which tone is higher?\nA. first\nB. second<|im_end|>\n<|im_start|>assistant\n"
    )
    assert family.render(processor, msgs[:-1], add_generation_prompt=True) == expected
    assert family.render(processor, msgs, add_generation_prompt=False) == expected + "B<|im_end|>\n"

    real = shared_dir() / "models" / "qwen2_audio_7b_instruct" / "chat_template.json"
    if not real.exists():
        pytest.skip(f"real Qwen2-Audio chat template not found under {shared_dir()}")
    processor.chat_template = json.loads(real.read_text())["chat_template"]
    # The hub template recognises audio blocks by key (`'audio_url' in content`): render must still work.
    assert family.render(processor, msgs[:-1], add_generation_prompt=True) == expected
    assert family.render(processor, msgs, add_generation_prompt=False) == expected + "B<|im_end|>\n"


def test_qwen2_audio_feature_extractor_matches_real(tiny_qwen2_audio):
    real = shared_dir() / "models" / "qwen2_audio_7b_instruct" / "preprocessor_config.json"
    if not real.exists():
        pytest.skip(f"real Qwen2-Audio preprocessor config not found under {shared_dir()}")
    cfg = json.loads(real.read_text())
    fe = get_family("qwen2_audio").load_processor(str(tiny_qwen2_audio)).feature_extractor
    for key in (
        "feature_size",
        "hop_length",
        "n_fft",
        "sampling_rate",
        "padding_value",
        "return_attention_mask",
    ):
        assert getattr(fe, key) == cfg[key], key
    assert cfg["chunk_length"] == 30 and fe.chunk_length == 10  # tiny window, same frame rate


def test_omni_loads_thinker_from_full_checkpoint(tiny_qwen2_5_omni, tmp_path):
    """A full Omni checkpoint (thinker.* + talker.* weights, model_type qwen2_5_omni) yields the thinker only."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniConfig

    family = get_family("qwen2_5_omni")
    src = Path(tiny_qwen2_5_omni)
    state = {f"thinker.{k}": v for k, v in load_file(src / "model.safetensors").items()}
    state["talker.model.embed_tokens.weight"] = torch.zeros(4, 8)
    state["token2wav.code2wav_dit_model.proj.weight"] = torch.zeros(4, 8)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    thinker = json.loads((src / "config.json").read_text())
    full = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=True)
    (tmp_path / "config.json").write_text(full.to_json_string())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    # The hub layout: a flat preprocessor_config.json that also holds the image processor's keys.
    fe_cfg = json.loads((src / "processor_config.json").read_text())["feature_extractor"]
    fe_cfg.update(
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "patch_size": 14,
            "processor_class": "Qwen2_5OmniProcessor",
        }
    )
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(fe_cfg))

    assert family_of(str(tmp_path)) == "qwen2_5_omni"
    model = family.load_model(str(tmp_path), dtype="float32")
    reference = family.load_model(str(src), dtype="float32")
    assert type(model).__name__ == family.MODEL_CLASS and not hasattr(model, "talker")
    ref_state = reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items())
    processor = family.load_processor(str(tmp_path))
    assert family.max_audio_seconds(processor) == 10.0
    assert processor.audio_token_id == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
