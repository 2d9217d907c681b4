"""Reward functions on a table of outputs (pure functions: no model, no data)."""

from __future__ import annotations

import pytest

from train.rewards import (
    accuracy_reward,
    completion_text,
    count_words,
    format_reward,
    length_penalty,
    reward_functions,
    weighted_total,
)

CHOICES = ["a dog barking", "a car horn", "rain on a roof", "a crowd cheering"]
ZH_CHOICES = ["狗叫声", "汽车喇叭", "雨声", "人群欢呼"]

# (output, choices, answer_index, accuracy, format)
TABLE = [
    ("<think>It barks.</think>\n<answer>a dog barking</answer>", CHOICES, 0, 1.0, 1.0),
    ("<think>It barks.</think><answer>A</answer>", CHOICES, 0, 1.0, 1.0),
    ("<think>Honking.</think>\n<answer>a car horn</answer>", CHOICES, 0, 0.0, 1.0),
    ("<think>I cannot tell what this is.</think>\n<answer></answer>", CHOICES, 0, 0.0, 0.0),
    ("<think>Thinking and never answering", CHOICES, 0, 0.0, 0.0),
    ("", CHOICES, 0, 0.0, 0.0),
    ("<answer>a dog barking</answer>", CHOICES, 0, 1.0, 0.0),  # right, but no thinking
    ("<think></think><answer>a dog barking</answer>", CHOICES, 0, 1.0, 0.0),  # empty thinking
    ("<think>barks<answer>a dog barking</answer>", CHOICES, 0, 1.0, 0.0),  # unclosed think
    ("<answer>a dog barking</answer><think>barks</think>", CHOICES, 0, 1.0, 0.0),  # wrong order
    ("<think>x</think><answer>B</answer><answer>A</answer>", CHOICES, 0, 1.0, 0.0),  # two answers
    ("<think>a<think>b</think></think><answer>A</answer>", CHOICES, 0, 1.0, 0.0),  # nested
    ("<think>barks</think>\n<answer>a dog barking</answer> Also maybe a car horn.", CHOICES, 0, 1.0, 0.0),
    ("<think>barks</think><answer>A</answer>\n\n  ", CHOICES, 0, 1.0, 1.0),  # trailing whitespace ok
    ("  \n<think>barks</think>\n\n<answer>A</answer>", CHOICES, 0, 1.0, 1.0),  # leading whitespace ok
    ("The answer is (C).", CHOICES, 2, 1.0, 0.0),  # same extractor as eval: answer statement
    ("<think>听起来像雨滴落在屋顶上。</think>\n<answer>雨声</answer>", ZH_CHOICES, 2, 1.0, 1.0),
    ("<think>这是喇叭声。</think>\n<answer>汽车喇叭</answer>", ZH_CHOICES, 2, 0.0, 1.0),
    ("<think>人群。</think>\n<answer>答案：D</answer>", ZH_CHOICES, 3, 1.0, 1.0),
    ("<think>雨声</think><answer>雨声</answer>后面还有文字", ZH_CHOICES, 2, 1.0, 0.0),
]


@pytest.mark.parametrize("output,choices,answer_index,accuracy,fmt", TABLE)
def test_reward_table(
    output: str, choices: list[str], answer_index: int, accuracy: float, fmt: float
) -> None:
    assert accuracy_reward([output], choices=[choices], answer_index=[answer_index]) == [accuracy]
    assert format_reward([output]) == [fmt]


def test_rewards_accept_trl_conversational_completions() -> None:
    """trl passes `[{"role": "assistant", "content": ...}]` for chat prompts, plus extra columns."""
    text = "<think>barks</think><answer>A</answer>"
    as_messages = [[{"role": "assistant", "content": text}]]
    as_blocks = [[{"role": "assistant", "content": [{"type": "text", "text": text, "path": None}]}]]
    for completions in (as_messages, as_blocks):
        assert completion_text(completions[0]) == text
        kwargs = {"prompts": [[]], "completion_ids": [[1, 2]], "trainer_state": None, "id": ["x"]}
        assert accuracy_reward(completions, choices=[CHOICES], answer_index=[0], **kwargs) == [1.0]
        assert format_reward(completions, **kwargs) == [1.0]


def test_accuracy_uses_dataset_answer_not_the_model() -> None:
    """The same output is right or wrong depending only on the dataset's answer_index."""
    out = ["<think>x</think><answer>B</answer>"] * 4
    assert accuracy_reward(out, choices=[CHOICES] * 4, answer_index=[0, 1, 2, 3]) == [0.0, 1.0, 0.0, 0.0]


def test_accuracy_accepts_either_letter_of_a_duplicated_answer() -> None:
    """MMAU lists some answers twice (four / nine / fourteen / fourteen): the text is the answer."""
    options = ["four", "nine", "fourteen", "fourteen"]
    outs = [f"<answer>{letter}</answer>" for letter in "ABCD"]
    assert accuracy_reward(outs, choices=[options] * 4, answer_index=[2] * 4) == [0.0, 0.0, 1.0, 1.0]


def test_length_penalty() -> None:
    short = "<think>one two three</think><answer>A</answer>"
    long = "<think>" + "word " * 30 + "</think><answer>A</answer>"
    rambling = "word " * 30  # no tags: the whole output counts as thinking
    got = length_penalty([short, long, rambling], budget=10, penalty_per_unit=0.01)
    assert got[0] == 0.0
    assert got[1] == pytest.approx(-0.2) and got[2] == pytest.approx(-0.2)
    assert length_penalty([long], budget=10, penalty_per_unit=1.0) == [-1.0]  # floored at -1
    assert length_penalty([long], budget=10, penalty_per_unit=0.0) == [0.0]  # off by default
    # a custom counter (grpo.main passes the tokenizer's)
    assert length_penalty([short], budget=1, penalty_per_unit=0.5, count=lambda s: 3) == [-1.0]


def test_count_words_counts_chinese_characters() -> None:
    assert count_words("the rain falls") == 3
    assert count_words("听起来像雨") == 5
    assert count_words("rain 雨声 here") == 4


def test_reward_functions_follow_config_weights() -> None:
    funcs, weights = reward_functions(
        {"accuracy": 2.0, "format": 0.5, "length": 1.0}, thinking_budget=2, length_penalty_per_unit=0.1
    )
    assert weights == [2.0, 0.5, 1.0]
    outs = ["<think>a b c d</think><answer>A</answer>", "<answer>B</answer>"]
    cols = {"choices": [CHOICES] * 2, "answer_index": [0, 0]}
    per_func = {name: f(outs, **cols) for name, f in zip(["accuracy", "format", "length"], funcs)}
    assert per_func == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0], "length": [pytest.approx(-0.2), 0.0]}
    assert weighted_total(per_func, {"accuracy": 2.0, "format": 0.5, "length": 1.0}) == [
        pytest.approx(2.3),
        0.0,
    ]
    with pytest.raises(ValueError, match="unknown reward"):
        reward_functions({"acuracy": 1.0})
