"""Verifiable rewards for GRPO: small pure functions with trl's reward signature.

trl calls each reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)`
where every dataset column (here `choices`, `answer_index`, ...) arrives as a list with one entry
per completion, and expects one float per completion back. The weighted sum is trl's job
(`GRPOConfig.reward_weights`); `reward_functions` pairs each function with its weight from the
config, so the YAML key `grpo.reward_weights.<name>` is the only place a weight lives.

- accuracy: 1 when the option extracted by `eval.extract.extract_choice` (the very extractor the
  benchmark uses) is the dataset's `answer_index`, else 0. The correct option comes from the
  dataset, never from the model.
- format: 1 when the output is `<think>...</think>` then `<answer>...</answer>` with nothing after
  but whitespace, each tag exactly once and neither block empty, else 0.
- length: 0 within the thinking budget, `-penalty_per_unit * excess` beyond it, floored at -1 so
  one rambling rollout cannot drown the accuracy signal of its group.
- overlong: DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13) on the completion's tokens,
  computed by trl's own `get_soft_overlong_punishment`: 0 up to `max_completion_length - buffer`
  tokens, then linearly down to -1 at `max_completion_length` (where generation cuts it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from eval.extract import extract_choice

Completion = str | list[dict[str, Any]]
RewardFunc = Callable[..., list[float]]

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT = re.compile(r"\s*<think>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>\s*", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
# A CJK character is a word of its own (Chinese has no spaces between words).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"  # kana, CJK ideographs, hangul
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def completion_text(completion: Completion) -> str:
    """The generated text, whether trl passes a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content blocks: keep the text ones (branch on `type`)
            parts.extend(b.get("text") or "" for b in content if b.get("type") == "text")
    return "".join(parts)


def accuracy_reward(
    completions: Sequence[Completion],
    choices: Sequence[list[str]],
    answer_index: Sequence[int],
    **kwargs: Any,
) -> list[float]:
    """1.0 where the extracted option's text is the correct option's text, else 0.0.

    Compared by text, as eval's choice_acc does: a benchmark item may list the answer twice (MMAU
    has `four / nine / fourteen / fourteen`), and then either letter is right.
    """
    rewards = []
    for completion, options, correct in zip(completions, choices, answer_index, strict=True):
        picked = extract_choice(completion_text(completion), list(options)).index
        rewards.append(1.0 if picked is not None and options[picked] == options[int(correct)] else 0.0)
    return rewards


def is_well_formatted(text: str) -> bool:
    """Non-empty `<think>...</think>` then non-empty `<answer>...</answer>`, then only whitespace.

    An empty think block does not count: it would pay the format reward for skipping the reasoning.
    """
    if any(text.count(tag) != 1 for tag in TAGS):  # also rules out nested or repeated blocks
        return False
    m = _FORMAT.fullmatch(text)
    return m is not None and bool(m.group("think").strip()) and bool(m.group("answer").strip())


def format_reward(completions: Sequence[Completion], **kwargs: Any) -> list[float]:
    """1.0 for outputs in the think-then-answer format, else 0.0."""
    return [1.0 if is_well_formatted(completion_text(c)) else 0.0 for c in completions]


def count_words(text: str) -> int:
    """Whitespace-separated words, each CJK character counted as one word."""
    return len(_WORD.findall(text))


def thinking_text(text: str) -> str:
    """The reasoning part: inside `<think>` if present, else everything before `<answer>`."""
    m = _THINK.search(text)
    if m:
        return m.group(1)
    return text.split("<answer>", 1)[0]


def length_penalty(
    completions: Sequence[Completion],
    budget: int = 200,
    penalty_per_unit: float = 0.0,
    count: Callable[[str], int] = count_words,
    **kwargs: Any,
) -> list[float]:
    """0 within `budget` units of thinking, else `-penalty_per_unit * excess`, floored at -1.

    `count` measures the thinking (words by default; `grpo.main` passes the tokenizer's count).
    """
    rewards = []
    for c in completions:
        excess = max(0, count(thinking_text(completion_text(c))) - budget)
        rewards.append(-min(1.0, penalty_per_unit * excess))
    return rewards


def overlong_penalty(
    completion_ids: Sequence[Sequence[int]],
    max_completion_length: int = 256,
    buffer: int | None = None,
    **kwargs: Any,
) -> list[float]:
    """DAPO's soft overlong punishment per completion, in [-1, 0]; `buffer` None = a fifth of the
    maximum (DAPO: 4,096 of 20,480 tokens). trl's ids include the stop token it generated."""
    from trl.rewards import get_soft_overlong_punishment

    cache = buffer if buffer is not None else max(1, max_completion_length // 5)
    return get_soft_overlong_punishment(max_completion_length, cache)(list(completion_ids))


REWARDS: dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "length": length_penalty,
    "overlong": overlong_penalty,
}


def reward_functions(
    weights: dict[str, float],
    *,
    thinking_budget: int = 200,
    length_penalty_per_unit: float = 0.0,
    count: Callable[[str], int] = count_words,
    max_completion_length: int = 256,
    overlong_buffer: int | None = None,
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions named in `weights` (config order) and their weights, for trl.

    Zero-weight functions are kept: they cost microseconds and their mean still shows in W&B.
    """
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known: {sorted(REWARDS)}")
    funcs: list[RewardFunc] = []
    for name in weights:
        func = REWARDS[name]
        if name == "length":
            # partial keeps trl's metric name (`rewards/length_penalty/mean`)
            func = functools.partial(
                length_penalty, budget=thinking_budget, penalty_per_unit=length_penalty_per_unit, count=count
            )
        if name == "overlong":
            func = functools.partial(
                overlong_penalty, max_completion_length=max_completion_length, buffer=overlong_buffer
            )
        funcs.append(func)
    return funcs, [float(w) for w in weights.values()]


def weighted_total(per_func: dict[str, list[float]], weights: dict[str, float]) -> list[float]:
    """Sum of weighted rewards per completion (what trl computes; used by tests and reports)."""
    n = len(next(iter(per_func.values())))
    return [sum(weights[name] * per_func[name][i] for name in weights) for i in range(n)]
