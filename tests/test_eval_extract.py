"""Answer extraction on realistic model outputs (CoT, letters in many styles, Chinese, hedges)."""

from __future__ import annotations

import time

import pytest

from eval.extract import extract_choice, option_text

ENV = ["Mountain Canyon", "Dense Forest", "Open Grassland", "City Streets"]
ANIMALS = ["Dog barking", "Cat meowing", "Bird singing"]
FOREST = ["Forest", "Dense Forest", "Desert"]  # one option is a substring of another
ZH = ["男性", "女性"]
YESNO = ["Yes", "No"]
COUNT = ["2", "3", "4", "5"]
ORDER = ["dog then cat", "cat then dog", "only a dog"]
TEN = [f"{n} beeps" for n in range(1, 11)]  # A..J

# (output, choices, expected index or None, expected method)
CASES = [
    # 1. <answer> blocks (the training template's format)
    (
        "<think>The throat singing suggests open land.</think>\n<answer>Open Grassland</answer>",
        ENV,
        2,
        "answer_tag",
    ),
    (
        "<think>Not a canyon: no echo. Not a forest.</think>\n<answer>Open Grassland</answer>",
        ENV,
        2,
        "answer_tag",
    ),
    ("<answer>C</answer>", ENV, 2, "answer_tag"),
    ("<answer>(B) Dense Forest</answer>", ENV, 1, "answer_tag"),
    ("<answer> b </answer>", ENV, 1, "answer_tag"),
    ("<answer>open grassland.</answer>", ENV, 2, "answer_tag"),
    ("<answer>The answer is D</answer>", ENV, 3, "answer_tag"),
    ("<answer>I think it is city streets</answer>", ENV, 3, "answer_tag"),
    ("<answer>A</answer> wait <answer>B</answer>", ENV, 1, "answer_tag"),
    ("<think>long reasoning about the forest</think><answer>Open Gras", ENV, None, "none"),
    ("<think>It is barking.</think><answer>Dense Forest</answer>", FOREST, 1, "answer_tag"),
    ("<answer>Forest</answer>", FOREST, 0, "answer_tag"),
    ("<answer>3</answer>", COUNT, 1, "answer_tag"),
    ("<answer>女性</answer>", ZH, 1, "answer_tag"),
    ("<answer>A or B</answer>", ENV, None, "none"),
    # 2. explicit answer statements
    ("The answer is B.", ENV, 1, "letter"),
    ("Answer: C", ENV, 2, "letter"),
    ("answer: c", ENV, 2, "letter"),
    ("**Answer:** (D)", ENV, 3, "letter"),
    ("Final answer: A) Mountain Canyon", ENV, 0, "letter"),
    ("The correct answer is option B because of the dense reverb.", ENV, 1, "letter"),
    ("I would choose C.", ENV, 2, "letter"),
    ("答案：B", ENV, 1, "letter"),
    ("答案是C。", ENV, 2, "letter"),
    ("根据音频中的鸟鸣声，我选B", ENV, 1, "letter"),
    ("正确答案为 (A)", ENV, 0, "letter"),
    ("Option A mentions canyons but there is no echo. Option B fits. The answer is B.", ENV, 1, "letter"),
    ("The answer is A. Wait, listening again, the answer is C.", ENV, 2, "letter"),
    ("The answer is Open Grassland, not (A).", ENV, 2, "option_text"),
    ("the answer is a man speaking calmly", ANIMALS, None, "none"),
    ("The answer is A or B, I am not sure.", ENV, None, "none"),
    ("Answer: G", ENV, None, "none"),  # out of range letter
    ("答案：男性", ZH, 0, "option_text"),
    # 3. formatted letters
    ("B", ENV, 1, "letter"),
    ("b", ENV, 1, "letter"),
    ("(C)", ENV, 2, "letter"),
    ("C. Open Grassland", ENV, 2, "letter"),
    ("D) City Streets", ENV, 3, "letter"),
    ("I hear traffic and horns, so (D).", ENV, 3, "letter"),
    ("Comparing (A) and (D), the horns point to streets.", ENV, None, "none"),
    ("A dog barking, twice.", ANIMALS, 0, "option_text"),  # article "A", then option text
    # 4. option text
    ("It sounds like city streets with traffic.", ENV, 3, "option_text"),
    ("This is clearly a dense forest environment.", FOREST, 1, "option_text"),
    ("The clip was recorded in a forest.", FOREST, 0, "option_text"),
    ("It is not a dog barking; it is a cat meowing.", ANIMALS, None, "none"),
    ("说话人是女性。", ZH, 1, "option_text"),
    ("Yes.", YESNO, 0, "option_text"),
    ("There are 3 knocks.", COUNT, 1, "option_text"),
    ("<think>First the dog then the cat.</think>\nI heard cat then dog.", ORDER, 1, "option_text"),
    # 5. reasoning-model final answers: boxed, "Option X", lowercase after an explicit cue
    ("\\boxed{B}", ENV, 1, "boxed"),
    ("<think>Reverb is long.</think>\nFinal Answer: \\boxed{B}", ENV, 1, "boxed"),
    ("**Final Answer**\n\\boxed{\\text{C}}", ENV, 2, "boxed"),
    ("\\boxed{c}", ENV, 2, "boxed"),
    ("\\boxed{Open Grassland}", ENV, 2, "boxed"),
    ("Option (A) has echo, but the answer is \\boxed{D}", ENV, 3, "boxed"),
    ("\\boxed{B}, to be sure: \\boxed{B}", ENV, 1, "boxed"),
    ("\\boxed{A} or \\boxed{B}", ENV, None, "none"),  # two options boxed: ambiguous
    ("\\boxed{A or B}", ENV, None, "none"),
    ("<answer>\\boxed{C}</answer>", ENV, 2, "answer_tag"),
    ("Option B", ENV, 1, "letter"),
    ("After listening twice I pick Option C.", ENV, 2, "letter"),
    ("Option A is unlikely; Option B fits better.", ENV, None, "none"),  # names two options
    ("the answer is: b", ENV, 1, "letter"),
    ("The answer is: (c)", ENV, 2, "letter"),
    ("Final answer: d.", ENV, 3, "letter"),
    ("the answer is: a man speaking", ANIMALS, None, "none"),  # an article, not option A
    ("option b sounds right", ENV, None, "none"),  # lowercase without an answer cue
    ("<answer>G</answer>", TEN, 6, "answer_tag"),  # letters up to J
    ("Answer: J", TEN, 9, "letter"),
    # 6. nothing usable
    ("", ENV, None, "none"),
    ("   \n ", ENV, None, "none"),
    ("I cannot listen to audio.", ENV, None, "none"),
    ("The sound is ambiguous.", ENV, None, "none"),
]


def test_table_is_large_enough():
    assert len(CASES) >= 70


@pytest.mark.parametrize(("output", "choices", "index", "method"), CASES)
def test_extract_choice(output, choices, index, method):
    got = extract_choice(output, choices)
    assert (got.index, got.method) == (index, method), got
    assert got.letter == (None if index is None else "ABCDEFGHIJ"[index])


def test_option_text_and_none():
    assert option_text(ENV, extract_choice("Answer: B", ENV)) == "Dense Forest"
    assert option_text(ENV, extract_choice("no idea", ENV)) == ""


def test_pure_and_fast():
    text = "<think>" + "The sound has rain, wind and some birds. " * 40 + "</think>\nSo the answer is (C)."
    start = time.perf_counter()
    for _ in range(200):
        assert extract_choice(text, ENV).index == 2
    assert (time.perf_counter() - start) / 200 < 0.01  # GRPO scores every rollout with it
