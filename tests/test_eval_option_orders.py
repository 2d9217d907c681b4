"""Option-order robustness: rotated prompts and the statistics over orders (no model needed)."""

from __future__ import annotations

import pytest

from data_prep.schema import Record
from data_prep.templates import get_template, render_sample
from eval.run import EvalError, option_order_stats, prediction_row, rotate_sample

CHOICES = ["a dog", "a cat", "a bird", "a horse"]


def _sample(answer: str = "a bird", item_id: str = "x") -> dict:
    rec = Record(id=item_id, audio_path="a.wav", question="What is heard?", choices=list(CHOICES),
                 answer=answer, modality="sound", category="Perception Layer")  # fmt: skip
    return render_sample(rec, template=get_template("cot_v1"), system_prompt="s", audio_path="/a.wav",
                         audio_duration=None, seed=0, shuffle=False, missing_thinking="direct")  # fmt: skip


def test_rotation_moves_the_options_and_keeps_everything_else():
    s = _sample()
    text = s["messages"][1]["content"][1]["text"]
    for r in range(4):
        rot = rotate_sample(s, r)
        assert rot["choices"] == CHOICES[r:] + CHOICES[:r]
        assert (
            rot["choices"][rot["answer_index"]] == "a bird"
            and rot["answer_letter"] == "ABCD"[rot["answer_index"]]
        )
        assert [CHOICES[j] for j in rot["permutation"]] == rot["choices"]
        new = rot["messages"][1]["content"][1]["text"]
        assert (
            new.startswith("What is heard?\n(A) " + rot["choices"][0])
            and new.split("\n")[-1] == text.split("\n")[-1]
        )
        assert (
            rot["messages"][0] == s["messages"][0]
            and rot["messages"][1]["content"][0] == s["messages"][1]["content"][0]
        )
    assert rotate_sample(s, 4)["choices"] == CHOICES  # fewer options than orders: rotations repeat
    assert s["choices"] == CHOICES  # the input sample is untouched
    broken = {
        **s,
        "messages": [s["messages"][0], {"role": "user", "content": [{"type": "text", "text": "Q?"}]}, {}],
    }
    with pytest.raises(EvalError, match="'x'.*options block"):
        rotate_sample(broken, 1)


def _preds(answers: list[str], rotation: int) -> list[dict]:
    """One item per answer; the model always says option A under this rotation."""
    out = []
    for i, answer in enumerate(answers):
        s = rotate_sample(_sample(answer, f"id{i}"), rotation)
        out.append(prediction_row(s, {"output": "<answer>A</answer>", "n_prompt_tokens": 1, "n_new_tokens": 1,
                                      "truncated": False}, "real"))  # fmt: skip
    return out


def test_stats_mean_spread_and_all_orders():
    # A model that always answers "A" is right exactly when the rotation puts the answer first.
    answers = ["a dog", "a cat", "a dog", "a bird"]
    orders = [_preds(answers, r) for r in range(3)]
    stats = option_order_stats(orders)
    assert stats["orders"] == 3 and stats["n_items"] == 4 and stats["metric"] == "choice_acc"
    assert stats["per_order_accuracy"] == [50.0, 25.0, 25.0]
    assert stats["mean_accuracy"] == pytest.approx(100 / 3, abs=1e-3)
    assert stats["std_accuracy"] == pytest.approx(11.7851, abs=1e-3)
    assert stats["all_orders_correct"] == 0.0
    # Letter-only answers never satisfy MMAR's rule, under any order.
    assert stats["by_metric"]["mmar_acc"]["per_order_accuracy"] == [0.0, 0.0, 0.0]
    steady = option_order_stats([_preds(["a dog"] * 2, 0), _preds(["a dog"] * 2, 0)])
    assert steady["all_orders_correct"] == 100.0 and steady["std_accuracy"] == 0.0
