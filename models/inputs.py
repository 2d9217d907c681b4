"""Prepared samples -> model inputs, for training (labels) and for generation (prompts), every family.

Shared by data_prep-checked datasets, the training recipes and eval; it uses only the members of the
family interface (`models.interface.AudioLMFamily`) and never names a model or a token.
Training: `AudioChatCollator` renders each row's full conversation with the family's chat template,
runs the family's processor (which expands the family's AUDIO_PLACEHOLDER to one token per encoder
frame) and trains only on the assistant turn. Generation: `encode_prompts` builds left-padded prompts from
`messages[:-1]`, optionally with the audio replaced by noise or silence, or removed.

Token arithmetic is done before the processor runs (`sample_token_length`), so a sample that
does not fit `max_length` is handled by rule rather than by a crash in the model's
"audio features and audio tokens do not match" check: the answer may be shortened, the prompt
(and above all the audio placeholder run) never is; such samples are dropped and counted.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from common.shared_counts import SharedCounts
from models import as_family

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
AUDIO_MODES = ("real", "noise", "silence", "none")

# Reasons a sample is dropped (counted in `AudioChatCollator.skipped` and by `filter_by_length`).
CUTS_AUDIO = "truncation_would_cut_audio"
NO_ROOM_FOR_ANSWER = "prompt_fills_max_length"
TEMPLATE_MISMATCH = "prompt_not_a_prefix_of_conversation"
CLIPS_MISMATCH = "audio_placeholders_do_not_match_clips"
DROP_REASONS = (CUTS_AUDIO, NO_ROOM_FOR_ANSWER, TEMPLATE_MISMATCH, CLIPS_MISMATCH)
ANSWERS_TRUNCATED = "answers_truncated"  # kept samples whose answer was shortened to max_length


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _audio_paths(messages: list[dict]) -> list[str]:
    # Blocks are told apart by `type`: after a datasets round trip every block has every key.
    return [
        b["path"]
        for m in messages
        if not isinstance(m["content"], str)
        for b in m["content"]
        if b.get("type") == "audio"
    ]


def _prompt_messages(messages: list[dict]) -> list[dict]:
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else list(messages)


def load_row_audio(family: ModuleType, processor: Any, row: dict) -> list[np.ndarray]:
    """Waveforms (16 kHz float32 mono) of a row's audio blocks, cut to the model's window."""
    from common.audio import load_audio

    max_seconds = family.max_audio_seconds(processor)
    return [
        load_audio(p, sampling_rate=family.SAMPLING_RATE, max_seconds=max_seconds)
        for p in _audio_paths(row["messages"])
    ]


@dataclass
class TokenLength:
    """Expanded token counts of one sample (before padding)."""

    total: int  # whole conversation, audio placeholders expanded
    prompt: int  # system + user turns + the assistant turn's opening
    audio_end: int  # index just past the last audio placeholder token (0 without audio)
    answer: int  # assistant text + the family's TURN_END_TOKEN (the trained tokens)
    audio_tokens: int = 0  # audio placeholder tokens after expansion (all clips)


def sample_token_length(
    family: str | ModuleType, processor: Any, row: dict, audio_samples: list[int] | None = None
) -> TokenLength:
    """Token lengths of a row without running the feature extractor.

    `audio_samples`: length of each clip in samples at 16 kHz; default from `audio_duration`
    when the row has it, else by decoding the audio. Raises ValueError when the rendered prompt is
    not a token prefix of the rendered conversation (a template that cannot be masked this way).
    """
    family = as_family(family)
    tok = _tokenizer(processor)
    full_text = family.render(processor, row["messages"], add_generation_prompt=False)
    prompt_text = family.render(processor, _prompt_messages(row["messages"]), add_generation_prompt=True)
    full_ids = tok(full_text, add_special_tokens=False)["input_ids"]
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"{row.get('id')}: {TEMPLATE_MISMATCH}")
    audio_id = tok.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    if audio_samples is None:
        audio_samples = _audio_samples(family, processor, row)
    expansions = [family.num_audio_tokens(processor, n) for n in audio_samples]
    placeholders = [i for i, t in enumerate(prompt_ids) if t == audio_id]
    if len(placeholders) != len(expansions):
        raise ValueError(
            f"{row.get('id')}: {len(placeholders)} audio placeholders but {len(expansions)} clips"
        )
    extra = sum(expansions) - len(expansions)
    audio_end = placeholders[-1] + 1 + extra if placeholders else 0
    turn_end = tok.convert_tokens_to_ids(family.TURN_END_TOKEN)
    answer_ids = full_ids[len(prompt_ids) :]
    # Train up to and including the turn-end token; what the template puts after it (ChatML's "\n")
    # is never generated.
    answer = answer_ids.index(turn_end) + 1 if turn_end in answer_ids else len(answer_ids)
    return TokenLength(
        total=len(full_ids) + extra,
        prompt=len(prompt_ids) + extra,
        audio_end=audio_end,
        answer=answer,
        audio_tokens=sum(expansions),
    )


def _audio_samples(family: ModuleType, processor: Any, row: dict) -> list[int]:
    paths = _audio_paths(row["messages"])
    duration = row.get("audio_duration")
    if len(paths) == 1 and duration:
        seconds = min(float(duration), family.max_audio_seconds(processor))
        return [int(round(seconds * family.SAMPLING_RATE))]
    return [len(w) for w in load_row_audio(family, processor, row)]


def length_verdict(lengths: TokenLength, max_length: int | None) -> str | None:
    """None when the sample fits (possibly with a shortened answer), else the reason to drop it."""
    if max_length is None or lengths.total <= max_length:
        return None
    if lengths.audio_end > max_length:
        return CUTS_AUDIO
    if lengths.prompt >= max_length:
        return NO_ROOM_FOR_ANSWER
    return None


def filter_by_length(
    family: str | ModuleType, processor: Any, rows: list[dict], max_length: int | None
) -> tuple[list[int], list[dict]]:
    """Pre-filter for the recipe: indices of rows that fit, and [{id, reason}] for those dropped."""
    keep, skipped = [], []
    for i, row in enumerate(rows):
        try:
            reason = length_verdict(sample_token_length(family, processor, row), max_length)
        except ValueError as e:
            reason = TEMPLATE_MISMATCH if TEMPLATE_MISMATCH in str(e) else str(e)
        if reason is None:
            keep.append(i)
        else:
            skipped.append({"id": row.get("id"), "reason": reason})
    return keep, skipped


@dataclass
class AudioChatCollator:
    """Sample rows -> input_ids, attention_mask, labels and the family's AUDIO_FEATURE_KEYS.

    Labels are IGNORE_INDEX everywhere except the assistant turn and its TURN_END_TOKEN. Rows that
    cannot fit `max_length` without cutting the prompt are dropped and counted in `skipped`. The
    processor's expansion of each row is checked against `sample_token_length` (some models, e.g.
    Qwen3-Omni, silently drop audio when placeholders and features disagree).
    """

    family: Any  # family module or name
    processor: Any
    max_length: int | None = None
    # Shared with the loader workers' copies of this collator (common.shared_counts).
    counts: SharedCounts = field(default_factory=lambda: SharedCounts([*DROP_REASONS, ANSWERS_TRUNCATED]))

    def __post_init__(self) -> None:
        self.family = as_family(self.family)

    @property
    def skipped(self) -> Counter:
        """Dropped samples by reason, over this process and its loader workers."""
        return Counter({r: n for r, n in self.counts.as_dict().items() if r in DROP_REASONS and n})

    @property
    def answers_truncated(self) -> int:
        return self.counts.get(ANSWERS_TRUNCATED)

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        kept, texts, audios, spans = [], [], [], []
        for row in rows:
            waves = load_row_audio(self.family, self.processor, row)
            try:
                lengths = sample_token_length(self.family, self.processor, row, [len(w) for w in waves])
            except ValueError as e:
                self._skip(row, TEMPLATE_MISMATCH if TEMPLATE_MISMATCH in str(e) else CLIPS_MISMATCH, e)
                continue
            reason = length_verdict(lengths, self.max_length)
            if reason is not None:
                self._skip(row, reason)
                continue
            kept.append(row)
            texts.append(self.family.render(self.processor, row["messages"], add_generation_prompt=False))
            audios.extend(waves)
            spans.append(lengths)
        if not kept:
            raise ValueError(f"every row of the batch was dropped: {dict(self.skipped)}")
        batch = self.family.encode(self.processor, texts, audios, padding_side="right")
        check_expansion(self.family, self.processor, batch, kept, spans)
        batch["labels"] = self._labels(batch, spans)
        return self._truncate(batch, spans)

    def _skip(self, row: dict, reason: str, detail: object = "") -> None:
        self.counts.add(reason)
        logger.warning(
            "dropping sample %s: %s %s(dropped so far: %s)",
            row.get("id"),
            reason,
            f"({detail}) " if detail else "",
            dict(self.skipped),
        )

    def _labels(self, batch: dict[str, Any], spans: list[TokenLength]) -> Any:
        import torch

        ids = batch["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, span in enumerate(spans):
            # Masked (left as IGNORE_INDEX), and why:
            # - system prompt and user text: given at inference, never generated, so no loss;
            # - audio placeholder run: its positions carry audio embeddings, not tokens to predict;
            # - what the template puts after the turn-end token: generation stops at that token;
            # - padding: not part of any sample (attention_mask is 0 there).
            start, end = span.prompt, span.prompt + span.answer
            labels[i, start:end] = ids[i, start:end]
        if not bool((labels != IGNORE_INDEX).any()):
            raise ValueError("batch has no label tokens: nothing to train on")
        return labels

    def _truncate(self, batch: dict[str, Any], spans: list[TokenLength]) -> dict[str, Any]:
        """Right-truncate to max_length; length_verdict guaranteed the cut lands in an answer."""
        if self.max_length is None or batch["input_ids"].shape[1] <= self.max_length:
            return batch
        self.counts.add(ANSWERS_TRUNCATED, sum(s.total > self.max_length for s in spans))
        for key in ("input_ids", "attention_mask", "labels"):
            batch[key] = batch[key][:, : self.max_length]
        return batch


def check_expansion(
    family: ModuleType, processor: Any, batch: dict[str, Any], rows: list[dict], spans: list[TokenLength]
) -> None:
    """Each row's token count and audio placeholder count must be what `sample_token_length` computed
    from the family's `num_audio_tokens`; otherwise labels would be misaligned. Names the sample."""
    tok = _tokenizer(processor)
    audio_id = tok.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    for i, (row, span) in enumerate(zip(rows, spans, strict=True)):
        n = int(batch["attention_mask"][i].sum())
        placeholders = int((batch["input_ids"][i] == audio_id).sum())
        if n != span.total or placeholders != span.audio_tokens:
            raise RuntimeError(
                f"sample {row.get('id')!r}: the {family.NAME} processor gave {n} tokens with {placeholders} "
                f"{family.AUDIO_PLACEHOLDER} placeholders, but {family.NAME}.num_audio_tokens implies "
                f"{span.total} tokens with {span.audio_tokens}: the family's expansion rule is wrong for "
                "this processor; labels would be misaligned"
            )


def _replace_audio(wave: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "noise":  # same length and loudness, no content
        rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        return (rng.standard_normal(len(wave)) * rms).astype(np.float32)
    if mode == "silence":
        return np.zeros_like(wave)
    return wave


def _without_audio(messages: list[dict]) -> list[dict]:
    return [
        {
            **m,
            "content": m["content"]
            if isinstance(m["content"], str)
            else [b for b in m["content"] if b.get("type") != "audio"],
        }
        for m in messages
    ]


def prompt_messages(row: dict, audio_mode: str = "real") -> list[dict]:
    """The conversation a generation prompt renders: `messages[:-1]`, without its audio blocks under
    audio_mode "none"."""
    messages = _prompt_messages(row["messages"])
    return _without_audio(messages) if audio_mode == "none" else messages


def prompt_audio(
    family: ModuleType, processor: Any, row: dict, *, audio_mode: str = "real", seed: int = 0
) -> list[np.ndarray]:
    """The waveforms a generation prompt carries (16 kHz float32, cut to the window), one per audio
    block: the clips themselves, or noise / silence of their length; none under audio_mode "none".

    Every generation backend (local `generate`, a vLLM or other OpenAI-compatible server) takes the
    audio from here, so they all hear the same samples.
    """
    if audio_mode not in AUDIO_MODES:
        raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {audio_mode!r}")
    if audio_mode == "none":
        return []
    # Per-row generator: a row's noise does not depend on which batch it lands in.
    rng = np.random.default_rng([seed, zlib.crc32(str(row.get("id")).encode())])
    return [_replace_audio(w, audio_mode, rng) for w in load_row_audio(family, processor, row)]


def encode_prompts(
    family: str | ModuleType, processor: Any, rows: list[dict], *, audio_mode: str = "real", seed: int = 0
) -> dict[str, Any]:
    """Left-padded generation inputs from each row's `messages[:-1]`.

    audio_mode: "real"; "noise" (Gaussian, the clip's length and RMS, seeded per row id);
    "silence" (zeros, the clip's length); "none" (the audio block removed from the prompt).
    """
    family = as_family(family)
    texts, audios = [], []
    for row in rows:
        audios.extend(prompt_audio(family, processor, row, audio_mode=audio_mode, seed=seed))
        texts.append(family.render(processor, prompt_messages(row, audio_mode), add_generation_prompt=True))
    return family.encode(processor, texts, audios or None, padding_side="left")
