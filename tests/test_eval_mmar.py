"""The official MMAR token rule, quirks included."""

from __future__ import annotations

import json

from eval.mmar import mmar_correct, string_match, tokenize

ENV = ["Mountain Canyon", "Dense Forest", "Open Grassland", "City Streets"]


def test_tokenize_lowercase_words():
    assert tokenize("Open-Grassland, 2 birds!") == {"open", "grassland", "2", "birds"}


def test_exact_text_correct():
    assert string_match("Open Grassland", "Open Grassland", ENV)
    assert string_match("Open Grassland", "open grassland.", ENV)


def test_wrong_option_text():
    assert not string_match("Open Grassland", "Dense Forest", ENV)


def test_letter_only_scores_zero():
    assert not string_match("Open Grassland", "C", ENV)
    assert not string_match("Open Grassland", "(C)", ENV)


def test_cot_naming_a_distractor_scores_zero():
    cot = "It is not a dense forest because there is no reverb, so open grassland."
    assert not string_match("Open Grassland", cot, ENV)


def test_cot_naming_only_the_answer_counts():
    assert string_match("Open Grassland", "I think the answer is open grassland", ENV)


def test_distractor_with_the_answers_token_set_counts_as_correct():
    choices = ["dog then cat", "cat then dog", "only a bird"]
    # The official rule drops a distractor whose token set equals the answer's, so the
    # *wrong* ordering is scored correct.
    assert string_match("dog then cat", "cat then dog", choices)


def test_shared_tokens_are_not_penalised():
    choices = ["a male speaker", "a female speaker"]
    assert string_match("a male speaker", "male", choices) is False  # 'a', 'speaker' missing
    assert string_match("a male speaker", "a male speaker", choices)


def test_empty_and_missing_prediction():
    assert not string_match("Open Grassland", "", ENV)
    assert not mmar_correct("Open Grassland", None, ENV)
    assert mmar_correct("Open Grassland", "Open Grassland", ENV)


def test_chinese_options():
    choices = ["男性", "女性"]
    assert string_match("女性", "女性", choices)
    assert not string_match("女性", "男性", choices)


def test_real_mmar_items_with_own_answer_text(mmar_meta):
    """Every real MMAR item scores its own answer text correct and a distractor's text wrong,
    except where the distractor shares the answer's token set (the documented 20 items)."""
    same_set = 0
    for line in mmar_meta.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        assert string_match(item["answer"], item["answer"], item["choices"])
        for c in item["choices"]:
            if c != item["answer"] and string_match(item["answer"], c, item["choices"]):
                same_set += 1
                assert tokenize(c) == tokenize(item["answer"]) or tokenize(item["answer"]) <= tokenize(c)
    assert same_set >= 20
