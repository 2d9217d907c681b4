"""MMAR's official correctness rule, reproduced exactly (quirks included).

The official `evaluation.py` compares sets of lowercase word tokens (`\\b\\w+\\b`): a prediction is
correct iff it contains every token of the answer and no token that belongs only to a distractor.
Consequences we keep on purpose, so our numbers are comparable with published MMAR scores:
- a letter-only prediction ("B") scores 0 (its token "b" is not the answer text);
- a chain of thought that names a distractor scores 0;
- a distractor with exactly the answer's token set ("dog then cat" vs "cat then dog") is ignored,
  so either wording counts as correct;
- an empty prediction scores 0.
Apply it to `answer_prediction`, the chosen option's *text*, not to the raw output.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\b\w+\b")


def tokenize(text: str) -> set[str]:
    """Lowercase word tokens, as the official scorer computes them."""
    return set(_TOKEN.findall(str(text).lower()))


def string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    """The official MMAR `string_match(answer, prediction, choices)`."""
    prediction_tokens = tokenize(prediction)
    answer_tokens = tokenize(answer)
    if not prediction_tokens:
        return False
    incorrect_tokens: set[str] = set()
    for choice in choices:
        choice_tokens = tokenize(choice)
        # Quirk kept: a distractor with the answer's exact token set contributes nothing.
        if choice_tokens != answer_tokens:
            incorrect_tokens.update(choice_tokens - answer_tokens)
    return answer_tokens.issubset(prediction_tokens) and prediction_tokens.isdisjoint(incorrect_tokens)


def mmar_correct(answer: str, answer_prediction: str | None, choices: list[str]) -> bool:
    """`string_match` that treats a missing prediction as wrong (the official script skips it)."""
    if answer_prediction is None:
        return False
    return string_match(answer, answer_prediction, choices)
