"""MMAR's official correctness rule, reproduced exactly (quirks included).

The official `evaluation.py` compares sets of lowercase word tokens (`\\b\\w+\\b`): a prediction is
correct iff it contains every token of the answer and no token that belongs only to a distractor.
Consequences we keep on purpose, so our numbers are comparable with published MMAR scores:
- a letter-only prediction ("B") scores 0 (its token "b" is not the answer text);
- a chain of thought that names a distractor scores 0;
- a distractor with exactly the answer's token set ("dog then cat" vs "cat then dog") is ignored,
  so either wording counts as correct;
- an empty prediction scores 0.
Apply it to `answer_prediction`, the final answer exactly as the model wrote it
(`answer_prediction_of`): the `<answer>` span, or the whole output when it has no tags. Nothing
is mapped or cleaned first, so `C` scores 0 and an answer that names a distractor's words scores 0,
as in MMAR's own `evaluation.py` on the same text. (`choice_acc` is the robust reading.)
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\b\w+\b")
# The last answer block; an unclosed one (output cut by max_new_tokens) runs to the end.
_ANSWER_SPAN = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)


def answer_prediction_of(output: str | None) -> str:
    """The final answer verbatim: the last `<answer>...</answer>` content, else the whole output."""
    text = output or ""
    spans = _ANSWER_SPAN.findall(text)
    return (spans[-1] if spans else text).strip()


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
