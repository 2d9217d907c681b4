"""Training collator and generation prompts on the tiny models (CPU, fp32, no downloads)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import text_only_copy

from models import get_family
from models import inputs as collator_module
from models.inputs import (
    CUTS_AUDIO,
    IGNORE_INDEX,
    AudioChatCollator,
    encode_prompts,
    filter_by_length,
    length_verdict,
    sample_token_length,
)

FIXTURE = {"qwen2_audio": "tiny_qwen2_audio", "qwen2_5_omni": "tiny_qwen2_5_omni"}
ANSWERS = ["B", "The second tone is higher, so the answer is (B) second.", "A"]


def _row(i: int, wav: Path, seconds: float, system: str, answer: str) -> dict:
    return {
        "id": f"s{i}",
        "audio_duration": seconds,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {
                "role": "user",
                "content": [
                    {"type": "audio", "path": str(wav)},
                    {"type": "text", "text": "Which tone is higher?\n(A) first\n(B) second"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }


@pytest.fixture(scope="module", params=list(FIXTURE))
def setup(request, tmp_path_factory) -> tuple:
    """(family, processor, rows): three rows of 1.0/2.0/0.6 s tones, after a datasets round trip."""
    import datasets

    tmp_path = tmp_path_factory.mktemp("clips")
    family = get_family(request.param)
    processor = family.load_processor(str(request.getfixturevalue(FIXTURE[request.param])))
    rows = []
    for i, (seconds, freq) in enumerate([(1.0, 330.0), (2.0, 660.0), (0.6, 440.0)]):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = tmp_path / f"clip{i}.wav"
        sf.write(wav, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
        rows.append(_row(i, wav, seconds, family.SYSTEM_PROMPT, ANSWERS[i]))
    # After the round trip text blocks carry path=None and audio blocks text=None.
    rows = datasets.Dataset.from_list(rows).to_list()
    assert rows[0]["messages"][0]["content"][0]["path"] is None
    return family, processor, rows


@pytest.fixture(scope="module")
def model(setup, request):
    family, _, _ = setup
    name = "tiny_qwen2_audio" if family.NAME == "qwen2_audio" else "tiny_qwen2_5_omni"
    return family.load_model(str(request.getfixturevalue(name)), dtype="float32").eval()


def test_labels_are_exactly_the_assistant_turn(setup):
    family, processor, rows = setup
    batch = AudioChatCollator(family, processor, max_length=None)(rows)
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "input_features", "feature_attention_mask"}
    tok = processor.tokenizer
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    for i, answer in enumerate(ANSWERS):
        labels = batch["labels"][i]
        kept = labels[labels != IGNORE_INDEX]
        assert kept.numel() > 0
        assert tok.decode(kept) == answer + "<|im_end|>"
        # One contiguous span, never over audio placeholders or padding.
        pos = (labels != IGNORE_INDEX).nonzero().flatten()
        assert torch.equal(pos, torch.arange(pos[0], pos[-1] + 1))
        assert not (batch["input_ids"][i][pos] == audio_id).any()
        assert batch["attention_mask"][i][pos].all()
    # 25 placeholder tokens per second of audio.
    assert [(ids == audio_id).sum().item() for ids in batch["input_ids"]] == [25, 50, 15]


def test_text_only_rows_alone_and_mixed_with_audio_rows(setup, model):
    """Rows without audio (data_prep's text-only items) collate alone and beside audio rows: labels
    are exactly the assistant turn, placeholders only where a clip is, one feature row per clip,
    and the model takes both batches on one process."""
    family, processor, rows = setup
    text = [text_only_copy(r) for r in rows]
    for row in text:
        lengths = sample_token_length(family, processor, row)
        assert (lengths.audio_end, lengths.audio_tokens) == (0, 0) and 0 < lengths.prompt < lengths.total
    assert filter_by_length(family, processor, text, 1024) == ([0, 1, 2], [])
    mixed = [rows[0], text[1], rows[2], text[0]]
    batch = AudioChatCollator(family, processor, max_length=None)(mixed)
    tok = processor.tokenizer
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    for i, answer in enumerate([ANSWERS[0], ANSWERS[1], ANSWERS[2], ANSWERS[0]]):
        labels = batch["labels"][i]
        assert tok.decode(labels[labels != IGNORE_INDEX]) == answer + "<|im_end|>"
    assert [(ids == audio_id).sum().item() for ids in batch["input_ids"]] == [25, 0, 15, 0]
    assert batch["input_features"].shape[0] == batch["feature_attention_mask"].shape[0] == 2
    text_batch = AudioChatCollator(family, processor, max_length=None)(text)
    assert "input_features" not in text_batch and not (text_batch["input_ids"] == audio_id).any()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss) and torch.isfinite(model(**text_batch).loss)
    prompts = encode_prompts(family, processor, mixed, audio_mode="noise", seed=1)
    assert prompts["input_features"].shape[0] == 2 and prompts["attention_mask"][:, -1].all()
    assert [(ids == audio_id).sum().item() for ids in prompts["input_ids"]] == [25, 0, 15, 0]


def test_batch_without_label_tokens_raises(setup, monkeypatch):
    family, processor, rows = setup
    real = collator_module.sample_token_length

    def no_answer(*args, **kwargs):
        lengths = real(*args, **kwargs)
        lengths.answer = 0
        return lengths

    monkeypatch.setattr(collator_module, "sample_token_length", no_answer)
    with pytest.raises(ValueError, match="no label tokens"):
        AudioChatCollator(family, processor, max_length=None)(rows)


def test_truncation_never_cuts_audio(setup, model):
    family, processor, rows = setup
    lengths = [sample_token_length(family, processor, r) for r in rows]
    max_length = lengths[1].audio_end - 1  # one token into row 1's audio placeholder run
    verdicts = [length_verdict(n, max_length) for n in lengths]
    assert verdicts[1] == CUTS_AUDIO and None in verdicts
    collator = AudioChatCollator(family, processor, max_length=max_length)
    batch = collator(rows)
    kept = [i for i, v in enumerate(verdicts) if v is None]
    assert batch["input_ids"].shape[0] == len(kept) and batch["input_ids"].shape[1] <= max_length
    assert collator.skipped == Counter(v for v in verdicts if v is not None)
    skipped = [{"id": rows[i]["id"], "reason": v} for i, v in enumerate(verdicts) if v is not None]
    assert filter_by_length(family, processor, rows, max_length) == (kept, skipped)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    n_audio = (batch["input_ids"] == audio_id).sum(1).tolist()
    assert n_audio == [[25, 50, 15][i] for i in kept]  # every kept audio run is whole
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)

    # Room for the prompt but not the whole answer: the answer is shortened, the sample kept.
    cut = lengths[1].prompt + 3
    collator = AudioChatCollator(family, processor, max_length=cut)
    batch = collator(rows[1:2])
    assert collator.answers_truncated == 1 and not collator.skipped
    assert (batch["labels"][0] != IGNORE_INDEX).sum() == 3
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_pre_filter_matches_collator_lengths(setup):
    family, processor, rows = setup
    for row in rows:
        row_no_duration = {**row, "audio_duration": None}  # decode instead of trusting the duration
        assert sample_token_length(family, processor, row) == sample_token_length(
            family, processor, row_no_duration
        )


def test_encode_prompts_audio_modes(setup):
    family, processor, rows = setup
    tok = processor.tokenizer
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    real = encode_prompts(family, processor, rows, audio_mode="real")
    assert (real["attention_mask"][:, 0] == 0).any() and real["attention_mask"][:, -1].all()  # left padded
    assert tok.decode(real["input_ids"][0][real["attention_mask"][0].bool()]).endswith(
        "<|im_start|>assistant\n"
    )
    noise = encode_prompts(family, processor, rows, audio_mode="noise", seed=1)
    silence = encode_prompts(family, processor, rows, audio_mode="silence")
    for other in (noise, silence):  # same token layout, different features
        assert torch.equal(other["input_ids"], real["input_ids"])
        assert not torch.equal(other["input_features"], real["input_features"])
    again = encode_prompts(family, processor, rows[::-1], audio_mode="noise", seed=1)
    assert torch.equal(again["input_features"][0], noise["input_features"][2])  # per-row noise
    none = encode_prompts(family, processor, rows, audio_mode="none")
    assert "input_features" not in none and not (none["input_ids"] == audio_id).any()
    with pytest.raises(ValueError, match="audio_mode"):
        encode_prompts(family, processor, rows, audio_mode="muted")


def test_noise_has_clip_length_and_rms():
    wave = (0.2 * np.sin(np.arange(16000) / 5.0)).astype(np.float32)
    noise = collator_module._replace_audio(wave, "noise", np.random.default_rng(0))
    assert noise.shape == wave.shape and noise.dtype == np.float32
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert abs(rms(noise) - rms(wave)) / rms(wave) < 0.05
    assert not collator_module._replace_audio(wave, "silence", np.random.default_rng(0)).any()


def test_greedy_generate_batched_equals_one_by_one(setup, model):
    family, processor, rows = setup
    pad = model.generation_config.pad_token_id
    eos = set(model.generation_config.eos_token_id)

    def generate(batch_rows):
        inputs = encode_prompts(family, processor, batch_rows)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        trimmed = []
        for ids in new:  # up to the first eos; later positions are padding of shorter rows
            stop = next((j for j, t in enumerate(ids) if t in eos), len(ids))
            trimmed.append(ids[: stop + 1])
        return trimmed

    batched = generate(rows[:2])
    single = [generate([r])[0] for r in rows[:2]]
    assert batched == single
    assert all(len(ids) > 0 and pad is not None for ids in batched)


def test_drop_and_truncation_counts_survive_loader_workers(setup):
    """Each loader worker collates with its own copy of the collator; the counts still add up."""
    import copy

    family, processor, rows = setup
    if family.NAME != "qwen2_audio":
        pytest.skip("one family is enough for the counting mechanism")
    rows = copy.deepcopy(rows)
    rows[0]["messages"][-1]["content"][0]["text"] = "a long answer " * 40  # will be shortened
    lengths = [sample_token_length(family, processor, r) for r in rows]
    max_length = lengths[1].audio_end - 1  # row 1 is dropped (its audio would be cut)
    verdicts = [length_verdict(n, max_length) for n in lengths]
    truncated = sum(v is None and n.total > max_length for v, n in zip(verdicts, lengths))
    assert verdicts[1] == CUTS_AUDIO and truncated > 0
    collator = AudioChatCollator(family, processor, max_length=max_length)
    epochs, data = 2, rows * 4  # 12 rows, one per batch: each worker sees several
    loader = torch.utils.data.DataLoader(
        data, batch_size=2, num_workers=2, collate_fn=collator,
        multiprocessing_context="fork", persistent_workers=True,
    )  # fmt: skip
    for _ in range(epochs):
        for _batch in loader:
            pass
    assert collator.skipped == Counter({CUTS_AUDIO: 4 * epochs})  # counted in the workers
    assert collator.answers_truncated == 4 * truncated * epochs  # row 0, 4 times an epoch
