"""The quickstart's summary (scripts.quickstart_summary) and its gates (scripts.check_quickstart).

Predictions are written by hand, so every accuracy, instruction-following rate and p-value below
is known in advance; each gate is broken on its own and must be the one reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.check_quickstart import check, verdict_lines
from scripts.check_quickstart import main as check_main
from scripts.quickstart_summary import SYSTEMS, summarize
from scripts.quickstart_summary import main as summary_main

N = 300  # held-out items, two options each: random guessing is 50%


def _write_run(folder: Path, correct: int, parsed: int = N, start: int = 0) -> Path:
    """An eval.run-like dir: items start..start+correct-1 right, the first `parsed` ones parsable."""
    assert start + correct <= parsed
    folder.mkdir(parents=True)
    rows = [
        {
            "id": f"item-{i:03d}",
            "choices": ["yes", "no"],
            "answer_index": 0,
            "pred_index": (0 if start <= i < start + correct else 1) if i < parsed else None,
            "choice_correct": start <= i < start + correct,
        }
        for i in range(N)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _runs(tmp_path: Path, **overrides: tuple[int, ...]) -> dict[str, Path]:
    """A passing quickstart (base at chance, CoT 85%, CoT without audio at chance), with overrides."""
    spec = {
        "base": (150, 290),
        "direct": (240, 300),
        "cot": (255, 300),
        "cot_no_audio": (140, 280),
        "cot_noise": (20, 40),
    }
    spec.update(overrides)
    return {name: _write_run(tmp_path / name, *spec[name]) for name in SYSTEMS}


def test_summary_fields_and_numbers(tmp_path: Path) -> None:
    s = summarize(_runs(tmp_path))
    assert s["n_test"] == N and s["random"] == pytest.approx(50.0)
    assert s["pre"] == {"choice_acc": 50.0} and s["post"] == {"choice_acc": 85.0}
    assert set(s["systems"]) == set(SYSTEMS)
    assert s["systems"]["base"]["instruction_following"] == pytest.approx(100 * 290 / 300)
    assert s["systems"]["cot_noise"] == {
        "choice_acc": pytest.approx(100 * 20 / 300),
        "instruction_following": pytest.approx(100 * 40 / 300),
        "p_vs_random": pytest.approx(1.0),
    }
    # Nested "first k right": base-only wins are 0, CoT-only wins 105 -> McNemar p = 2 * 0.5**105.
    assert s["mcnemar_p"] == pytest.approx(2 * 0.5**105)
    assert s["cot_vs_no_audio_p"] == pytest.approx(2 * 0.5**115)
    assert s["direct_vs_cot_p"] == pytest.approx(2 * 0.5**15)
    assert s["post_vs_random_p"] < 1e-30 and 0.3 < s["pre_vs_random_p"] < 0.6
    assert check(s) == []


@pytest.mark.parametrize(
    ("overrides", "broken"),
    [
        ({"base": (150, 260)}, "base instruction following 86.7%"),  # a base that does not answer
        ({"base": (180, 300)}, "base choice_acc 60.0% is above random"),  # a base that already listens
        # Far above random (p ~ 3e-4) but, item by item, not significantly above the base (p ~ 0.05).
        ({"cot": (180, 300, 90)}, "CoT 60.0% vs base 50.0%: not above it"),
        ({"cot_no_audio": (190, 300)}, "CoT without audio 63.3% is above random"),  # answers from text
    ],
)
def test_each_gate_fails_on_its_own(tmp_path: Path, overrides: dict, broken: str) -> None:
    problems = check(summarize(_runs(tmp_path, **overrides)))
    assert len(problems) == 1 and problems[0].startswith(broken), problems


def test_no_audio_must_be_below_with_audio(tmp_path: Path) -> None:
    # Without audio: at chance (53%, p ~ 0.13) but not significantly below CoT's 60% (p ~ 0.16).
    problems = check(
        summarize(_runs(tmp_path, base=(130, 300), cot=(180, 300), cot_no_audio=(160, 300, 100)))
    )
    assert [p.split(":")[0] for p in problems] == ["CoT without audio 53.3% vs with audio 60.0%"]


def test_cot_must_beat_random_strongly(tmp_path: Path) -> None:
    # Far above a bad base (McNemar p tiny) but only p ~ 0.004 against guessing.
    problems = check(summarize(_runs(tmp_path, base=(130, 300), cot=(172, 300), cot_no_audio=(120, 300))))
    assert len(problems) == 1 and problems[0].startswith("CoT vs random p="), problems


def test_old_summary_is_refused() -> None:
    assert check({"pre": {"choice_acc": 0.0}, "post": {"choice_acc": 80.0}})[0].startswith(
        "summary has no 'systems'"
    )


def test_direct_vs_cot_reported_not_gated(tmp_path: Path) -> None:
    s = summarize(_runs(tmp_path, direct=(270, 300)))
    assert check(s) == []
    assert verdict_lines(s, [])[-1].startswith(
        "direct vs CoT (not gated): direct 90.0%, CoT 85.0%: direct by 5.0 pp"
    )


def test_mismatched_items_are_refused(tmp_path: Path) -> None:
    runs = _runs(tmp_path)
    rows = (runs["cot"] / "predictions.jsonl").read_text().splitlines()
    (runs["cot"] / "predictions.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(SystemExit, match="cover different items"):
        summarize(runs)


def test_cli_writes_summary_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = _runs(tmp_path / "ok")
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "comparison.md").write_text("| table |\n")
    out = tmp_path / "summary.json"
    args = [x for name, path in runs.items() for x in (f"--{name}", str(path))]
    assert (
        summary_main([*args, "--compare", str(compare), "--adapter", str(tmp_path), "--out", str(out)]) == 0
    )
    assert "OK: base 50.0%" in capsys.readouterr().out
    assert check_main([str(out)]) == 0
    bad = json.loads(out.read_text())
    bad["systems"]["base"]["instruction_following"] = 10.0
    out.write_text(json.dumps(bad))
    assert check_main([str(out)]) == 1
    assert check_main([str(tmp_path / "missing.json")]) == 1
