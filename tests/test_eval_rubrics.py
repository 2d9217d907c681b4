"""eval.rubrics against a real chat-completions server on 127.0.0.1 with scripted judgments."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval import rubrics

ENV = ["Mountain Canyon", "Dense Forest", "Open Grassland", "City Streets"]
RUBRIC = [
    {"name": "Cue: wind", "scoring_point": "1 point if wind is heard.", "note": "", "choices": [0, 1]},
    {
        "name": "Conclusion",
        "scoring_point": "1 point if open land is inferred.",
        "note": "",
        "choices": [0, 1],
    },
]


def _judgment(*scores: int, wrap: bool = True) -> str:
    body = json.dumps(
        [{"name": c["name"], "score": s, "justification": "ok"} for c, s in zip(RUBRIC, scores)]
    )
    return f"Here is my evaluation:\n```json\n{body}\n```" if wrap else body


class Scripted:
    """The judge's replies in order: ("ok", text) | ("429",) | ("500",) | ("slow", text)."""

    def __init__(self, replies: list[tuple]):
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next(self, request: dict) -> tuple:
        with self.lock:
            self.requests.append(request)
            return self.replies.pop(0) if self.replies else ("500",)


def _server(script: Scripted):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 - http.server's naming
            assert self.path.endswith("/chat/completions"), self.path
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request["_auth"] = self.headers.get("Authorization")
            kind, *rest = script.next(request)
            if kind == "429":
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            if kind == "500":
                return self._send(500, {"error": {"message": "boom"}})
            if kind == "slow":
                time.sleep(1.5)  # longer than the client's timeout
            message = {"role": "assistant", "content": rest[0]}
            self._send(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": request["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })  # fmt: skip

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def judge_server():
    servers = []

    def start(replies: list[tuple]) -> tuple[str, Scripted]:
        script = Scripted(replies)
        server = _server(script)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", script

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _run_dir(root: Path, outputs: dict[str, str]) -> Path:
    """An eval.run dir whose items carry MMAR records with a rubric; the answer is Open Grassland."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, output) in enumerate(outputs.items()):
        record = {
            "id": name, "question": f"Where was clip {name} recorded?", "choices": ENV,
            "answer": "Open Grassland", "modality": "sound", "category": ["Perception Layer", "Cultural Layer"][i % 2],
            "sub-category": "Environment", "thinking": "Wind, no reverb, so open land.", "rubric": RUBRIC,
        }  # fmt: skip
        rows.append({
            "id": name, "question": record["question"], "choices": ENV, "answer": "Open Grassland",
            "modality": "sound", "category": record["category"], "sub_category": "Environment",
            "output": output, "source_record": json.dumps(record),
        })  # fmt: skip
    (root / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "metrics.json").write_text(json.dumps({"n_items": len(rows)}))
    return root


RIGHT = "<think>I hear wind and no echo, so open land.</think>\n<answer>Open Grassland</answer>"
OUTPUTS = {
    "right1": RIGHT,
    "wrong": "<think>Echoes everywhere.</think><answer>Mountain Canyon</answer>",
    "letter": "<think>Wind.</think><answer>C</answer>",  # right option, but 0 under the official rule
    "right2": RIGHT,
}


def _cfg(url: str, **kw) -> rubrics.JudgeConfig:
    return rubrics.JudgeConfig(url=url, model="judge-7b", api_key="EMPTY", **{"timeout": 0.5, **kw})


def test_parse_judgment_and_middle_three_mean():
    assert rubrics.parse_judgment(_judgment(1, 0), RUBRIC)[0] == 0.5
    assert rubrics.parse_judgment(_judgment(1, 1, wrap=False), RUBRIC)[0] == 1.0
    for bad in ("no json here", _judgment(1), _judgment(1, 2), json.dumps([{"name": "x"}, {"name": "y"}])):
        with pytest.raises(rubrics.MalformedJudgment):
            rubrics.parse_judgment(bad, RUBRIC)
    assert rubrics.middle_mean([1.0, 0.0, 0.5, 0.5, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert rubrics.middle_mean([0.2, 0.9]) == pytest.approx(0.55)


def test_scripted_judge_retries_and_scores(judge_server, tmp_path):
    replies = [
        ("429",), ("ok", _judgment(1, 1)), ("ok", "I think it is fine."), ("ok", _judgment(0, 1)),
        ("ok", _judgment(1, 0)), ("slow", _judgment(1, 1)), ("ok", _judgment(0, 0)), ("ok", _judgment(1, 1)),
    ] + [("ok", _judgment(1, 1))] * 5  # fmt: skip
    url, script = judge_server(replies)
    run_dir = _run_dir(tmp_path / "run", OUTPUTS)
    sleeps: list[float] = []
    summary = rubrics.run_rubrics(run_dir, _cfg(url, backoff=0.01), progress=False, sleep=sleeps.append)
    # right1: runs 1.0, 0.5, 0.5, 0.0, 1.0 (after a 429, a malformed reply and a timeout) -> mean of
    # the middle three; right2: 1.0; wrong and letter: 0 without a judgment.
    rows = {r["id"]: r for r in map(json.loads, (run_dir / "rubrics.jsonl").read_text().splitlines())}
    assert rows["right1"]["run_scores"] == [1.0, 0.5, 0.5, 0.0, 1.0]
    assert rows["right1"]["score"] == pytest.approx(2 / 3)
    assert rows["right2"]["score"] == 1.0 and rows["right2"]["judged"]
    assert not rows["wrong"]["judged"] and not rows["letter"]["judged"] and rows["letter"]["score"] == 0.0
    assert all(r["judge_model"] == "judge-7b" for r in rows.values())
    # Wrong answers are never sent; every request is temperature 0, seed 42, the judge model.
    sent = " ".join(json.dumps(r) for r in script.requests)
    assert "clip wrong" not in sent and "clip letter" not in sent
    assert len(script.requests) == 13 and {
        (r["temperature"], r["seed"], r["model"]) for r in script.requests
    } == {(0, 42, "judge-7b")}
    assert sleeps[0] == 0.0  # Retry-After: 0 honoured; the other retries back off exponentially
    assert summary["overall"]["score"] == pytest.approx(100 * (2 / 3 + 1.0) / 4, abs=1e-3)
    assert summary["overall"]["judged_score"] == pytest.approx(100 * (2 / 3 + 1.0) / 2, abs=1e-3)
    assert summary["category"]["Perception Layer"]["judged"] == 1 and summary["judge"]["model"] == "judge-7b"
    assert json.loads((run_dir / "metrics.json").read_text())["rubrics"]["overall"] == summary["overall"]
    assert "| Perception Layer | 2 | 1 |" in "\n".join(rubrics.table_lines(summary))


def test_down_endpoint_errors_and_keeps_finished_work_then_resumes(judge_server, tmp_path):
    run_dir = _run_dir(tmp_path / "run", OUTPUTS)
    url, script = judge_server([("ok", _judgment(1, 1))] * 5)  # right1 judged, then only 500s
    with pytest.raises(
        rubrics.RubricsError, match=r"after 3 attempts: server error 500.*3 of 4 item\(s\) are finished"
    ):
        rubrics.run_rubrics(run_dir, _cfg(url, max_retries=2), progress=False, sleep=lambda s: None)
    done = [json.loads(x)["id"] for x in (run_dir / "rubrics.jsonl").read_text().splitlines()]
    assert done == ["right1", "wrong", "letter"]
    # A kill mid-write leaves a torn line: it is dropped and that item judged again.
    with open(run_dir / "rubrics.jsonl", "a") as f:
        f.write('{"id": "right2", "sco')
    url2, script2 = judge_server([("ok", _judgment(0, 1))] * 5)
    summary = rubrics.run_rubrics(run_dir, _cfg(url2), progress=False, sleep=lambda s: None)
    assert len(script2.requests) == 5 and "clip right2" in script2.requests[0]["messages"][1]["content"]
    assert summary["n_items"] == 4 and summary["overall"]["judged"] == 2


def test_unreachable_judge_is_a_clear_error(tmp_path, capsys):
    run_dir = _run_dir(tmp_path / "run", {"wrong": OUTPUTS["wrong"], "right1": RIGHT})
    argv = ["--run", str(run_dir), "--judge_url", "http://127.0.0.1:9/v1", "--judge_model", "m",
            "--max_retries", "1", "--backoff", "0", "--timeout", "1"]  # fmt: skip
    assert rubrics.main(argv) == 2
    err = capsys.readouterr().err
    assert "judge http://127.0.0.1:9/v1 (model m) failed for item 'right1' after 2 attempts" in err
    assert "1 of 2 item(s) are finished" in err and "rerun the same command" in err


def test_missing_rubric_and_foreign_metadata_are_errors(tmp_path, judge_server):
    run_dir = _run_dir(tmp_path / "run", {"right1": RIGHT})
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"id": "another-benchmark-item", "rubric": RUBRIC}) + "\n")
    with pytest.raises(rubrics.RubricsError, match=r"1 of the run's 1 id\(s\) are missing.*\['right1'\]"):
        rubrics.run_rubrics(run_dir, _cfg("http://127.0.0.1:9/v1"), meta=meta, progress=False)
    rows = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    record = json.loads(rows[0]["source_record"])
    record["rubric"] = []
    rows[0]["source_record"] = json.dumps(record)
    (run_dir / "predictions.jsonl").write_text(json.dumps(rows[0]) + "\n")
    url, _ = judge_server([])
    with pytest.raises(rubrics.RubricsError, match=r"item 'right1': field 'rubric'"):
        rubrics.run_rubrics(run_dir, _cfg(url), progress=False)


def test_real_mmar_rubrics_fit_the_prompt(mmar_meta):
    """Every real MMAR item has a rubric the judge prompt and the reply parser accept."""
    items = [json.loads(x) for x in mmar_meta.read_text(encoding="utf-8").splitlines()]
    for item in items:
        rubric = rubrics._check_rubric(item)
        reply = json.dumps([{"name": c["name"], "score": max(c["choices"])} for c in rubric])
        assert rubrics.parse_judgment(reply, rubric)[0] == 1.0
        assert item["question"] in rubrics.judge_prompt(item, "thinking", item["answer"])


def test_cli_prints_the_table_records_the_judge_and_logs_to_wandb(
    judge_server, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("JUDGE_KEY", "sk-local")
    run_dir = _run_dir(tmp_path / "run", {"right1": RIGHT, "wrong": OUTPUTS["wrong"]})
    url, script = judge_server([("ok", _judgment(1, 0))] * 5)
    argv = ["--run", str(run_dir), "--judge_url", url, "--judge_model", "judge-7b", "--api_key_env", "JUDGE_KEY",
            "--wandb"]  # fmt: skip
    assert rubrics.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| all | 2 | 1 | 25.00 | 50.00 |" in printed and "judge: judge-7b" in printed
    assert json.loads((run_dir / "rubrics.json").read_text())["judge"]["model"] == "judge-7b"
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert len(script.requests) == 5 and script.requests[0]["_auth"] == "Bearer sk-local"  # key from the env
