"""Versioned chat templates: Record -> one training sample (`messages` + metadata).

A template's text never changes under the same name: change a word, bump the version
(`cot_v2`), so a prepared dataset's hash and its name both say which prompt it holds.

User turn: the audio, the question, lettered options `(A) ...` and an output-format
instruction; a text-only item (no audio) has no audio block and an instruction that does not ask
to listen. Assistant turn: `<think>{thinking}</think>\n<answer>{option text}</answer>` (cot)
or `<answer>{option text}</answer>` (direct). The answer is the option *text*, because the
official MMAR scorer matches answer words, and a letter-only answer scores zero there.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from data_prep.schema import MissingThinkingError, Record

LETTERS = "ABCDEFGHIJ"  # schema.MAX_CHOICES options at most


@dataclass(frozen=True)
class Template:
    name: str
    thinking: bool  # does the assistant turn carry <think>...</think>?
    instruction: str
    text_only_instruction: str  # the same request for an item without audio


TEMPLATES: dict[str, Template] = {
    "cot_v1": Template(
        name="cot_v1",
        thinking=True,
        instruction=(
            "Listen to the audio, think step by step inside <think></think>, then give the text of "
            "the correct option inside <answer></answer>."
        ),
        text_only_instruction=(
            "Think step by step inside <think></think>, then give the text of the correct option "
            "inside <answer></answer>."
        ),
    ),
    "direct_v1": Template(
        name="direct_v1",
        thinking=False,
        instruction="Listen to the audio and give the text of the correct option inside <answer></answer>.",
        text_only_instruction="Give the text of the correct option inside <answer></answer>.",
    ),
}
# The template a cot item without thinking falls back to under `missing_thinking: direct`.
DIRECT_FALLBACK = {"cot_v1": "direct_v1"}


def get_template(name: str) -> Template:
    """Look up a template by its versioned name."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def option_permutation(n: int, *, item_id: str, seed: int, shuffle: bool) -> list[int]:
    """Displayed order of an item's options: identity, or a shuffle seeded by (seed, item id).

    Seeding per item (not one RNG walked over the file) keeps an item's order independent of
    which other items were read, skipped or reordered.
    """
    order = list(range(n))
    if shuffle:
        digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def format_options(choices: list[str]) -> str:
    """`(A) first\n(B) second ...`."""
    return "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def user_text(template: Template, question: str, choices: list[str], *, text_only: bool = False) -> str:
    """The text part of the user turn (the audio part, if any, precedes it)."""
    instruction = template.text_only_instruction if text_only else template.instruction
    return f"{question.strip()}\n{format_options(choices)}\n{instruction}"


def fold_cues(thinking: str, cue: list[str]) -> str:
    """Prepend the annotated cues, so the chain of thought names what to listen for first."""
    cues = [c.strip() for c in cue if c.strip()]
    return f"Key cues: {'; '.join(cues)}.\n{thinking}" if cues else thinking


def target_text(template: Template, answer: str, thinking: str | None) -> str:
    """The assistant turn."""
    if template.thinking:
        if thinking is None:
            raise ValueError(f"template {template.name} needs thinking")
        return f"<think>{thinking.strip()}</think>\n<answer>{answer}</answer>"
    return f"<answer>{answer}</answer>"


_TARGET_RE = re.compile(r"\A(?:<think>(?P<think>.*)</think>\n)?<answer>(?P<answer>.*)</answer>\Z", re.S)


def parse_target(text: str) -> tuple[str | None, str]:
    """Inverse of `target_text`: (thinking or None, answer text); ValueError if it does not parse."""
    m = _TARGET_RE.match(text)
    if m is None:
        raise ValueError(f"not a template target: {text[:80]!r}")
    return m.group("think"), m.group("answer")


def choose_template(template: Template, rec: Record, missing_thinking: str) -> tuple[Template, str | None]:
    """The template actually used for `rec` and its thinking text (None for direct).

    A cot template meeting an item without thinking raises (`fail`, and `skip`, which the
    caller counts as a skip) or falls back to the direct template (`direct`, counted).
    """
    if not template.thinking:
        return template, None
    if rec.thinking is not None:
        return template, rec.thinking
    if missing_thinking == "direct" and template.name in DIRECT_FALLBACK:
        return get_template(DIRECT_FALLBACK[template.name]), None
    hint = "set missing_thinking: direct (fallback) or skip, or use a direct template"
    raise MissingThinkingError(
        f"template {template.name} needs thinking; {hint}", item_id=rec.id, field="thinking"
    )


def render_sample(
    rec: Record,
    *,
    template: Template,
    system_prompt: str,
    audio_path: str | None,
    audio_duration: float | None,
    seed: int,
    shuffle: bool,
    fold_cue: bool = False,
    missing_thinking: str = "fail",
) -> dict:
    """One sample row in the layout of docs/ARCHITECTURE.md; `audio_path` None: a text-only sample."""
    used, thinking = choose_template(template, rec, missing_thinking)
    if thinking is not None:
        thinking = fold_cues(thinking.strip(), rec.cue) if fold_cue else thinking.strip()
    perm = option_permutation(len(rec.choices), item_id=rec.id, seed=seed, shuffle=shuffle)
    shown = [rec.choices[j] for j in perm]
    # With a repeated answer text (MMAU's `four / nine / fourteen / fourteen`) this is the first
    # of its letters; scorers compare the chosen option's text, so either letter counts.
    answer_index = shown.index(rec.answer)
    target = target_text(used, rec.answer, thinking)
    text_only = audio_path is None
    audio = [] if text_only else [{"type": "audio", "path": audio_path}]
    question = {"type": "text", "text": user_text(used, rec.question, shown, text_only=text_only)}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [*audio, question]},
        {"role": "assistant", "content": [{"type": "text", "text": target}]},
    ]
    return {
        "id": rec.id,
        "group": rec.group,
        "source": rec.source,
        "modality": rec.modality,
        "category": rec.category,
        "sub_category": rec.sub_category,
        "tags": list(rec.tags),
        "question": rec.question,
        "choices": shown,
        "answer": rec.answer,
        "answer_index": answer_index,
        "answer_letter": LETTERS[answer_index],
        "permutation": perm,
        "thinking": thinking,
        "template": used.name,
        "target": target,
        "audio_path": audio_path,
        "audio_duration": audio_duration,
        "messages": messages,
        "source_record": json.dumps(rec.original, ensure_ascii=False),
    }
