"""MMAR-Rubrics: an LLM judge scores the model's reasoning against each item's rubric.

    export OPENAI_API_KEY=...        # or any key your endpoint wants; a local server takes anything
    python -m eval.rubrics --run runs/eval/sft --judge_url https://api.openai.com/v1 \
        --judge_model gpt-4o-2024-11-20 [--meta MMAR-meta.jsonl] [--wandb]

The scoring follows the Interspeech 2026 Audio Reasoning Challenge (ddlBoJack/MMAR
`code/evaluation_rubrics.py`):
- only items whose `answer_prediction` (the `<answer>` span as written) is correct under MMAR's
  official rule are judged; the others score 0 and are never sent to the judge;
- the judge sees the question, the correct answer, the reference reasoning, the item's rubric
  (criteria with their allowed points) and the model's `thinking_prediction`, and replies with a
  JSON list of {name, score, justification}, one per criterion; an item's score for one judge run
  is the points given over the points possible;
- 5 judge runs at temperature 0 with seed 42; the item's score is the mean of the middle three;
- reported as the mean over all items (x100, wrong answers at 0, the challenge's number) and over
  the judged items only, per modality, category (layer) and sub-category.

Any OpenAI-compatible chat-completions endpoint works (OpenAI, a local vLLM or SGLang server).
429s back off exponentially (honouring Retry-After), timeouts, 5xx and malformed replies are
retried; each finished item is appended to `<out>/rubrics.jsonl` at once, so a rerun resumes.
An endpoint that stays down ends with a clear error after the retries; finished items stay.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.io import JsonlAppender, atomic_write_json, read_complete_jsonl
from common.logging_utils import setup_logging
from common.openai_retry import RetriesExhausted, with_retries
from eval.export import thinking_of
from eval.metrics import UNKNOWN
from eval.mmar import answer_prediction_of, mmar_correct

log = logging.getLogger(__name__)

JUDGE_RUNS = 5
SEED = 42
TEMPERATURE = 0.0
GROUPS = (("modality", "modality"), ("category", "category"), ("sub-category", "sub_category"))
SYSTEM_PROMPT = (
    "You are an impartial, careful evaluator. Judge a model's reasoning about an audio question "
    "strictly against the ground truth and the scoring rubric you are given."
)
_JSON_LIST = re.compile(r"\[\s*\{.*\}\s*\]", re.DOTALL)


class RubricsError(RuntimeError):
    """Bad input (no rubric, ids missing from the metadata) or a judge that cannot be reached."""


class MalformedJudgment(ValueError):
    """A judge reply that is not the JSON list the rubric asks for."""


@dataclass(frozen=True)
class JudgeConfig:
    url: str
    model: str
    api_key: str
    runs: int = JUDGE_RUNS
    timeout: float = 120.0
    max_retries: int = 6  # per judge call, for 429 / timeout / 5xx / malformed replies
    backoff: float = 1.0  # seconds before the first retry, doubled each time (capped at 60 s)


# ----------------------------------------------------------------------------- prompt and reply


def judge_prompt(item: dict, thinking_prediction: str, answer_prediction: str) -> str:
    """The user message: ground truth, the rubric with the required reply format, the submission."""
    criteria = "\n".join(
        f"- Criterion {c['name']!r}: {c['scoring_point']} Allowed scores: {c['choices']}."
        for c in item["rubric"]
    )
    reply = json.dumps(
        [
            {"name": c["name"], "score": f"one of {c['choices']}", "justification": "..."}
            for c in item["rubric"]
        ],
        ensure_ascii=False,
    )
    return (
        f"Question: {item['question']}\nCorrect answer: {item['answer']}\n"
        f"Reference reasoning: {item.get('thinking') or ''}\n\n"
        f"Score the model's reasoning on each criterion:\n{criteria}\n\n"
        "Reply with only a JSON list, one object per criterion in this order, shaped like:\n"
        f"{reply}\n(justification: under 50 words, citing the model's reasoning)\n\n"
        f"Model's reasoning:\n{thinking_prediction}\nThe answer is {answer_prediction}."
    )


def parse_judgment(text: str, rubric: list[dict]) -> tuple[float, list[dict]]:
    """(points given / points possible, per-criterion scores); MalformedJudgment if unusable."""
    match = _JSON_LIST.search(text or "")
    try:
        got = json.loads(match.group(0) if match else text)
    except (json.JSONDecodeError, TypeError) as e:
        raise MalformedJudgment(f"not JSON: {e}") from None
    if not isinstance(got, list) or len(got) != len(rubric):
        raise MalformedJudgment(f"expected a list of {len(rubric)} criteria, got {str(got)[:80]!r}")
    total = possible = 0.0
    criteria = []
    for entry, crit in zip(got, rubric):
        score = entry.get("score") if isinstance(entry, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score not in crit["choices"]:
            raise MalformedJudgment(f"criterion {crit['name']!r}: score {score!r} not in {crit['choices']}")
        total += score
        possible += max(crit["choices"])
        criteria.append({"name": crit["name"], "score": score})
    return (total / possible if possible else 0.0), criteria


def middle_mean(scores: list[float]) -> float:
    """Mean of the scores without the lowest and the highest (the middle three of five)."""
    ordered = sorted(scores)
    kept = ordered[1:-1] if len(ordered) >= 3 else ordered
    return statistics.fmean(kept)


# ----------------------------------------------------------------------------- judge calls


class Judge:
    """One judge endpoint; `ask` returns a parsed judgment, retrying what is worth retrying."""

    def __init__(self, cfg: JudgeConfig, sleep: Callable[[float], None] = time.sleep):
        from openai import OpenAI

        self.cfg = cfg
        self.sleep = sleep
        # The client's own retries are off: ours know about malformed replies and count attempts.
        self.client = OpenAI(base_url=cfg.url, api_key=cfg.api_key, timeout=cfg.timeout, max_retries=0)

    def ask(self, prompt: str, rubric: list[dict], item_id: str) -> tuple[float, list[dict]]:
        import openai

        def call() -> tuple[float, list[dict]]:
            reply = self.client.chat.completions.create(
                model=self.cfg.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": prompt},
                ],
                temperature=TEMPERATURE,
                seed=SEED,
            )
            return parse_judgment(reply.choices[0].message.content or "", rubric)

        try:
            return with_retries(
                call, label=f"item {item_id}", max_retries=self.cfg.max_retries, backoff=self.cfg.backoff,
                also_retry=(MalformedJudgment,), sleep=self.sleep,
            )  # fmt: skip
        except openai.APIStatusError as e:  # a 4xx other than 429: retrying cannot help
            raise RubricsError(f"item {item_id!r}: judge refused the request ({e.status_code}): {e}") from e
        except RetriesExhausted as e:
            raise RubricsError(
                f"judge {self.cfg.url} (model {self.cfg.model}) failed for item {item_id!r} {e}"
            ) from e


# ----------------------------------------------------------------------------- items


def _check_rubric(item: dict) -> list[dict]:
    rubric = item.get("rubric")
    ok = isinstance(rubric, list) and rubric and all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("scoring_point"), str)
        and isinstance(c.get("choices"), list) and c["choices"]
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c["choices"])
        for c in rubric
    )  # fmt: skip
    if not ok:
        raise RubricsError(
            f"item {item.get('id')!r}: field 'rubric' must be a non-empty list of "
            "{name, scoring_point, choices: [numbers]} (pass --meta MMAR-meta.jsonl, which has it)"
        )
    return rubric


def load_items(run_dir: Path, meta: Path | None) -> list[dict]:
    """The run's items: the benchmark record (rubric, thinking, ...) plus the model's output."""
    preds = (
        read_complete_jsonl(run_dir / "predictions.jsonl") if (run_dir / "predictions.jsonl").exists() else []
    )
    if not preds:
        raise RubricsError(f"{run_dir}: no predictions.jsonl (is this an eval.run output dir?)")
    by_meta: dict[str, dict] = {}
    if meta is not None:
        by_meta = {r["id"]: r for r in read_complete_jsonl(meta) if isinstance(r, dict) and "id" in r}
        missing = [p["id"] for p in preds if p["id"] not in by_meta]
        if missing:
            raise RubricsError(
                f"{meta}: {len(missing)} of the run's {len(preds)} id(s) are missing (metadata of another "
                f"benchmark?): {missing[:10]}"
            )
    items = []
    for p in preds:
        raw = p.get("source_record")
        record = json.loads(raw) if isinstance(raw, str) and raw else {}
        record.update({k: v for k, v in by_meta.get(p["id"], {}).items() if k not in record or k == "rubric"})
        items.append(
            {
                **record,
                "id": p["id"],
                "question": record.get("question", p.get("question")),
                "answer": p["answer"],
                "choices": p["choices"],
                "modality": p.get("modality") or record.get("modality") or UNKNOWN,
                "category": p.get("category") or record.get("category") or UNKNOWN,
                "sub_category": p.get("sub_category") or record.get("sub-category") or UNKNOWN,
                "output": p.get("output") or "",
            }
        )
    return items


def score_item(item: dict, judge: Judge, runs: int) -> dict:
    """One rubrics.jsonl line; the judge is called only when the answer is right."""
    answer_prediction = answer_prediction_of(item["output"])
    correct = mmar_correct(item["answer"], answer_prediction, item["choices"])
    row = {k: item[k] for k in ("id", "modality", "category", "sub_category")}
    row.update(correct=correct, judged=False, score=0.0, run_scores=[], criteria=[])
    if not correct:
        return row  # the official rule: a wrong answer scores 0 without a judgment
    rubric = _check_rubric(item)
    prompt = judge_prompt(item, thinking_of(item["output"]), answer_prediction)
    for _ in range(runs):
        score, criteria = judge.ask(prompt, rubric, item["id"])
        row["run_scores"].append(score)
        row["criteria"].append(criteria)
    row.update(judged=True, score=middle_mean(row["run_scores"]))
    return row


# ----------------------------------------------------------------------------- summary


def _cell(rows: list[dict]) -> dict:
    judged = [r["score"] for r in rows if r["judged"]]
    return {
        "score": round(100 * statistics.fmean(r["score"] for r in rows), 4),
        "judged_score": round(100 * statistics.fmean(judged), 4) if judged else None,
        "n": len(rows),
        "judged": len(judged),
    }


def summarize(rows: list[dict], judge: dict) -> dict:
    """rubrics.json: overall and per modality / category / sub-category, and how it was judged."""
    out: dict = {"judge": judge, "n_items": len(rows), "overall": _cell(rows)}
    for name, key in GROUPS:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r[key], []).append(r)
        out[name] = {v: _cell(rs) for v, rs in sorted(groups.items())}
    return out


def table_lines(summary: dict) -> list[str]:
    """The per-layer table printed at the end."""
    lines = [
        "| scope | n | judged (correct) | rubric score (all items) | rubric score (judged) |",
        "|---|---|---|---|---|",
    ]

    def line(name: str, c: dict) -> str:
        judged = "—" if c["judged_score"] is None else f"{c['judged_score']:.2f}"
        return f"| {name} | {c['n']} | {c['judged']} | {c['score']:.2f} | {judged} |"

    lines.append(line("all", summary["overall"]))
    lines += [line(layer, c) for layer, c in summary["category"].items()]
    return lines


# ----------------------------------------------------------------------------- run


def _done(path: Path, judge_model: str) -> dict[str, dict]:
    done = {}
    for r in read_complete_jsonl(path) if path.exists() else []:
        if r.get("judge_model") != judge_model:
            raise RubricsError(
                f"{path} holds judgments by {r.get('judge_model')!r}, not {judge_model!r}; use another --out"
            )
        done.setdefault(r["id"], r)
    return done


def run_rubrics(run_dir: str | Path, cfg: JudgeConfig, *, meta: str | Path | None = None,
                out: str | Path | None = None, progress: bool = True,
                sleep: Callable[[float], None] = time.sleep) -> dict:  # fmt: skip
    """Judge every item of an eval run (resuming), write rubrics.json, add it to metrics.json."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir
    items = load_items(run_dir, Path(meta) if meta else None)
    path = out / "rubrics.jsonl"
    done = _done(path, cfg.model)
    todo = [it for it in items if it["id"] not in done]
    log.info("%d items, %d already judged or scored, %d to go", len(items), len(done), len(todo))
    judge = Judge(cfg, sleep=sleep)
    bar = tqdm(total=len(items), initial=len(done), desc="rubrics", unit="item", disable=not progress)
    try:
        with JsonlAppender(path) as sink:
            for item in todo:
                row = {**score_item(item, judge, cfg.runs), "judge_model": cfg.model}
                sink.write(row)
                done[row["id"]] = row
                bar.update(1)
    except RubricsError as e:
        raise RubricsError(f"{e}. {len(done)} of {len(items)} item(s) are finished in {path}; "
                           "rerun the same command to resume") from e  # fmt: skip
    finally:
        bar.close()
    rows = [done[it["id"]] for it in items]
    info = {"url": cfg.url, "model": cfg.model, "runs": cfg.runs, "temperature": TEMPERATURE, "seed": SEED}
    summary = summarize(rows, info)
    atomic_write_json(out / "rubrics.json", summary)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():  # eval.compare and W&B read the rubric scores from there
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        metrics["rubrics"] = summary
        atomic_write_json(metrics_path, metrics)
    return summary


def _log_wandb(project: str, run_dir: Path, summary: dict) -> None:
    import wandb

    from common.tracking import wandb_mode

    run = wandb.init(project=project, name=f"rubrics-{run_dir.name}", job_type="rubrics", dir=str(run_dir),
                     config={"judge": summary["judge"]}, mode=wandb_mode())  # fmt: skip
    logged = {"eval/rubrics/overall": summary["overall"]["score"]}
    logged.update({f"eval/rubrics/{k}": c["score"] for k, c in summary["category"].items()})
    run.log(logged)
    run.finish()


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m eval.rubrics", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="eval run dir (predictions.jsonl)")
    ap.add_argument("--judge_url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    ap.add_argument("--judge_model", required=True, help="judge model name (recorded in the output)")
    ap.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key")
    ap.add_argument("--meta", help="MMAR-meta.jsonl, when the run's records lack the rubric")
    ap.add_argument("--out", help="where rubrics.jsonl / rubrics.json go (default: the run dir)")
    ap.add_argument("--judge_runs", type=int, default=JUDGE_RUNS, help="judge runs per item (official: 5)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request")
    ap.add_argument("--max_retries", type=int, default=6, help="retries per judge call")
    ap.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    ap.add_argument("--wandb", action="store_true", help="log the rubric scores to W&B")
    ap.add_argument("--wandb_project", default="audio-reasoning-tuner")
    args = ap.parse_args(argv)
    # A local server takes any key; the OpenAI API refuses a wrong one with a clear 401.
    cfg = JudgeConfig(url=args.judge_url, model=args.judge_model, api_key=os.environ.get(args.api_key_env) or "EMPTY",
                      runs=args.judge_runs, timeout=args.timeout, max_retries=args.max_retries,
                      backoff=args.backoff)  # fmt: skip
    try:
        summary = run_rubrics(args.run, cfg, meta=args.meta, out=args.out)
    except RubricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in table_lines(summary):
        print(line)
    print(f"judge: {cfg.model} at {cfg.url}, {cfg.runs} runs, temperature 0, seed {SEED}; middle-three mean")
    if args.wandb:
        _log_wandb(args.wandb_project, Path(args.run), summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
