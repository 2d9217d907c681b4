"""Map a model's free-text output to one of the options.

Order (first that gives an unambiguous answer wins):
1. the last `<answer>...</answer>` block (its content may be a letter, option text or "(B) text");
2. the last `\\boxed{...}` (R1-style reasoning models: `Final Answer: \\boxed{B}`, `\\boxed{\\text{B}}`);
3. an explicit answer statement: `Answer: B`, `the answer is (B)`, `答案：B`, `选B`, ...; the
   last such statement counts (models correct themselves), and its text may also be option text;
4. a formatted letter (`(B)`, `B.`, `B)`, `Option B`, or an output that is just `B`); several
   different formatted letters are ambiguous and fall through;
5. exactly one option text contained in the output (an option found only inside a longer
   matched option does not count, so "forest" inside "dense forest" is not a second answer);
6. otherwise no answer.

Lowercase letters are accepted only where the context makes them explicit (`answer: b`,
`the answer is: b`, `\\boxed{b}`, a bare `b`), never as a stray word ("the answer is a man speaking" is not option A). The function is
pure and regex-only because GRPO calls it on every rollout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

LETTERS = "ABCDEFGHIJ"
Method = Literal["answer_tag", "boxed", "letter", "option_text", "none"]
# Every method, in the order tried: metrics.json counts answers per method in this order.
METHODS: tuple[str, ...] = ("answer_tag", "boxed", "letter", "option_text", "none")


@dataclass(frozen=True)
class Extraction:
    """The chosen option (index into the displayed choices, its letter) and how it was found."""

    index: int | None
    letter: str | None
    method: Method


NONE = Extraction(None, None, "none")

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_THINK_END = re.compile(r"</think>", re.IGNORECASE)
# An explicit answer statement; the text after it (to the end of the line) is parsed as a span.
_CUE = re.compile(
    r"(?:\b(?i:final\s+answer|correct\s+answer|answer|correct\s+(?:option|choice))(?![A-Za-z])"
    r"(?:\s+(?i:to\s+(?:the|this)\s+question))?"
    r"[*_\s]*(?:(?i:is|would\s+be|should\s+be|will\s+be)[*_\s]*)?[:：=]?[*_\s]*(?:(?i:option|choice)\s*)?"
    r"|\b(?i:I\s+(?:would\s+)?(?:choose|pick|select)|my\s+(?:choice|answer)\s+is)[*_\s]*(?:(?i:option)\s*)?"
    r"|(?:正确)?答案\s*(?:应该|应|应当)?\s*(?:是|为|選|选)?\s*[:：]?\s*(?:选项)?"
    r"|正确选项\s*(?:是|为)?\s*[:：]?\s*"
    r"|选择?\s*)"
)
_SPAN_END = re.compile(r"[\n\r]")
# A letter at the start of a span: "B", "(B)", "B.", "B) text", "（B）".
_SPAN_LETTER = re.compile(r"^[(（\[]?([A-Ja-j])(?:[)）\]]|(?=[.,;:!?。，；：、]|\s|$))")
_LOWER_OK_AFTER = re.compile(r"^[)）\]]?\s*(?:$|[.,;:!?。，；：、*])")
_HEDGE = re.compile(r"^[(（\[]?[A-J][)）\]]?\s*(?:(?i:or|and)|/|或|和|,|、)\s*[(（\[]?([A-J])(?![A-Za-z])")
_FORMATTED = re.compile(
    r"[(（]([A-J])[)）]|(?<![A-Za-z0-9])([A-J])[.)](?=\s|$)"
    r"|(?<![A-Za-z])(?i:option|choice)\s*[(（]?([A-J])(?![A-Za-z0-9])"
)
# `\boxed{B}`, `\boxed{\text{B}}`: one level of nested braces is enough for answers.
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_TEX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_BARE = re.compile(r"^\s*[*_\"'`]*\s*[(（\[]?([A-Ja-j])[)）\]]?\s*[.。]?\s*[*_\"'`]*\s*$")
_WS = re.compile(r"\s+")
_TRAIL_PUNCT = " \t.,;:!?。，；：！？\"'`*_"


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def _letter_index(letter: str, n_choices: int) -> int | None:
    idx = LETTERS.find(letter.upper())
    return idx if 0 <= idx < n_choices else None


def _from_letter(letter: str, n: int, method: Method) -> Extraction | None:
    idx = _letter_index(letter, n)
    return None if idx is None else Extraction(idx, LETTERS[idx], method)


def _from_index(idx: int, method: Method) -> Extraction:
    return Extraction(idx, LETTERS[idx], method)


def _option_prefix(span_norm: str, choices: list[str]) -> int | None:
    """The longest option whose text starts the span (followed by a non-word character)."""
    best, best_len = None, 0
    for i, choice in enumerate(choices):
        opt = _norm(choice).rstrip(_TRAIL_PUNCT)
        if not opt or not span_norm.startswith(opt):
            continue
        rest = span_norm[len(opt) :]
        if rest and opt[-1].isascii() and opt[-1].isalnum() and (rest[0].isalnum() or rest[0] == "_"):
            continue
        if len(opt) > best_len:
            best, best_len = i, len(opt)
    return best


def _parse_span(span: str, choices: list[str], method: Method) -> Extraction | None | Literal[False]:
    """Parse the text after an answer cue or inside an answer tag.

    Returns an Extraction, None when the span says nothing parsable, or False when it hedges
    between two letters ("A or B"), which ends the search with no answer.
    """
    span = span.strip().strip("*_\"'`“”‘’ ")
    if not span:
        return None
    idx = _option_prefix(_norm(span), choices)
    if idx is not None:
        return _from_index(idx, "option_text" if method == "letter" else method)
    m = _SPAN_LETTER.match(span)
    if not m:
        return None
    letter = m.group(1)
    if letter.islower() and not _LOWER_OK_AFTER.match(span[m.end(1) :]):
        return None  # "the answer is a man speaking": an article, not option A
    hedge = _HEDGE.match(span.upper() if letter.islower() else span)
    if hedge and hedge.group(1) != letter.upper():
        return False
    return _from_letter(letter, len(choices), method)


def _from_cues(text: str, choices: list[str], method: Method) -> Extraction | None | Literal[False]:
    """The last answer statement in `text` that parses (earlier ones were often revised)."""
    for m in reversed(list(_CUE.finditer(text))):
        rest = text[m.end() :]
        end = _SPAN_END.search(rest)
        got = _parse_span(rest[: end.start()] if end else rest, choices, method)
        if got is not None:
            return got
    return None


def _from_formatted(text: str, n: int) -> Extraction | None:
    bare = _BARE.match(text)
    if bare:
        return _from_letter(bare.group(1), n, "letter")
    letters = {a or b or c for a, b, c in _FORMATTED.findall(text)}
    letters = {x for x in letters if _letter_index(x, n) is not None}
    if len(letters) == 1:
        return _from_letter(letters.pop(), n, "letter")
    return None


def _option_spans(text_norm: str, opt: str) -> list[tuple[int, int]]:
    # Word boundaries only where the option starts/ends with an ASCII word character, so that
    # Chinese options (no spaces between words) still match inside a sentence.
    left = r"(?<![a-z0-9_])" if opt[0].isascii() and (opt[0].isalnum() or opt[0] == "_") else ""
    right = r"(?![a-z0-9_])" if opt[-1].isascii() and (opt[-1].isalnum() or opt[-1] == "_") else ""
    return [m.span() for m in re.finditer(left + re.escape(opt) + right, text_norm)]


def _from_option_text(text: str, choices: list[str], method: Method) -> Extraction | None:
    text_norm = _norm(text)
    spans: dict[int, list[tuple[int, int]]] = {}
    for i, choice in enumerate(choices):
        opt = _norm(choice).rstrip(_TRAIL_PUNCT)
        if opt:
            found = _option_spans(text_norm, opt)
            if found:
                spans[i] = found
    all_spans = [(s, e, i) for i, ss in spans.items() for s, e in ss]
    # An option counts if one of its occurrences is not inside a longer option's occurrence.
    counted = {
        i
        for s, e, i in all_spans
        if not any(j != i and s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, j in all_spans)
    }
    if len(counted) == 1:
        return _from_index(counted.pop(), method)
    return None


def _from_boxed(text: str, choices: list[str], method: Method) -> Extraction | None | Literal[False]:
    """The option inside `\\boxed{...}`; boxes naming two different options are ambiguous."""
    found: list[Extraction] = []
    for content in _BOXED.findall(text):
        span = _TEX_WRAP.sub(r"\1", content)
        got = _parse_span(span, choices, method)
        if got is None:
            got = _from_formatted(span, len(choices))
            got = got and Extraction(got.index, got.letter, method)
        if got is False:
            return False  # "\\boxed{A or B}"
        if got is not None:
            found.append(got)
    if len({x.index for x in found}) > 1:
        return False
    return found[-1] if found else None


def _search(text: str, choices: list[str]) -> Extraction | None | Literal[False]:
    got = _from_boxed(text, choices, "boxed")
    if got is not None:
        return got
    got = _from_cues(text, choices, "letter")
    if got is not None:
        return got
    return _from_formatted(text, len(choices)) or _from_option_text(text, choices, "option_text")


def _from_answer_tag(output: str, choices: list[str]) -> Extraction | None | Literal[False]:
    blocks = _ANSWER_TAG.findall(output)
    if not blocks:
        return None
    content = blocks[-1]
    got = _parse_span(content, choices, "answer_tag")
    if got is None:
        got = _from_boxed(content, choices, "answer_tag")
    if got is None:
        got = _from_cues(content, choices, "answer_tag")
    if got is None:
        got = _from_formatted(content, len(choices))
        got = got and Extraction(got.index, got.letter, "answer_tag")
    if got is None:
        got = _from_option_text(content, choices, "answer_tag")
    return got


def extract_choice(output: str, choices: list[str]) -> Extraction:
    """Find which of `choices` (displayed order, letters A..) the output picks; see module doc."""
    if not output or not output.strip() or not choices:
        return NONE
    got = _from_answer_tag(output, choices)
    if got is False:
        return NONE
    if got is not None:
        return got
    # Text after the reasoning block is the answer proper; the reasoning often names distractors.
    parts = _THINK_END.split(output)
    tail = parts[-1] if len(parts) > 1 else ""
    for text in ([tail] if tail.strip() else []) + [output]:
        got = _search(text, choices)
        if got is False:
            return NONE
        if got is not None:
            return got
    return NONE


def option_text(choices: list[str], ext: Extraction) -> str:
    """The chosen option's text (the MMAR `answer_prediction`), or "" when nothing was chosen."""
    return choices[ext.index] if ext.index is not None else ""
