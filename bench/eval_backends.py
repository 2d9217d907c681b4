"""eval.run's backends side by side: batched `generate` in this process vs a vLLM server.

    python -m bench.eval_backends [--quick] [--tokenizer local|qwen2] [--eager]

Both runs go through `eval.run` on the same tiny Qwen2-Audio (2 heads of 32, 30 s window: what
vLLM's CPU build serves), the same 200 synthetic items, CoT prompts, greedy, 128 new tokens, fp32:
`--backend hf` (batch 16, eval.run's default) and `--backend openai` against a vLLM server the bench
starts from .venv-vllm (16 requests in flight, eval.run's default). The server's start-up is timed
apart from the items/s (a user pays it once per run); its prefix and multimodal caches are off, so
nothing is answered from a cache. `identical_frac` is the share of items whose answer is the same
token for token. Where vLLM's time goes comes from its own /metrics (queue, prefill, decode).
On a 2-core CPU with a 64-wide model neither backend can show what vLLM does on a GPU (continuous
batching of a memory-bound decode); the figure here is the price or gain of the HTTP path on CPU.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from pathlib import Path

from bench._common import emit, parse_args, print_table, real_tokenizer_if_present, synth_dataset, workdir

FULL = {"items": 200, "max_new_tokens": 128}
QUICK = {"items": 16, "max_new_tokens": 16}
SERVER_PHASES = ("queue", "prefill", "decode")


def _add_arguments(parser) -> None:
    parser.add_argument("--tokenizer", choices=("auto", "local", "qwen2"), default="auto",
                        help="auto = the real Qwen2 vocabulary when ../shared has it, else the 1k local one")  # fmt: skip
    parser.add_argument(
        "--eager", action="store_true", help="start vLLM with --enforce-eager (no torch.compile)"
    )


def served_tiny_model(work, seed: int, tokenizer: str):
    from models import get_family

    out = work / f"served-qwen2-audio-{tokenizer}"
    if not (out / "config.json").exists():
        get_family("qwen2_audio").make_tiny(
            out, seed=seed, tokenizer=tokenizer, window_seconds=30, head_dim=32
        )
    return out


def timed_run(argv: list[str], out: Path) -> float:
    """Seconds of one `eval.run` into a fresh `out` (a kept one would resume and time nothing)."""
    from eval import run

    shutil.rmtree(out, ignore_errors=True)
    argv = [*argv, "--out", str(out)]
    start = time.perf_counter()
    run.run(run.parse_config(run.EvalConfig, argv))
    return time.perf_counter() - start


def server_seconds(root_url: str) -> dict[str, float]:
    """Total seconds per request phase from vLLM's Prometheus /metrics."""
    text = urllib.request.urlopen(f"{root_url}/metrics", timeout=30).read().decode()
    out = {}
    for phase in SERVER_PHASES:
        match = re.search(
            rf"^vllm:request_{phase}_time_seconds_sum\{{[^}}]*\}} ([0-9.e+-]+)$", text, flags=re.M
        )
        out[phase] = float(match.group(1)) if match else float("nan")
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, _add_arguments)
    size = QUICK if args.quick else FULL
    from common.io import read_jsonl
    from common.vllm_server import VLLMServer

    if args.tokenizer == "auto":  # --quick: the 1k vocabulary, whose server starts faster
        tokenizer = "local" if args.quick else real_tokenizer_if_present()
    else:
        tokenizer = args.tokenizer
    with workdir(args.workdir) as work:
        model = served_tiny_model(work, args.seed, tokenizer)
        # holdout: every synthetic item lands in the test split
        data = synth_dataset(
            work, size["items"], args.seed, "--split.mode", "holdout", "--family", "qwen2_audio"
        )
        common = ["--model", str(model), "--data", str(data), "--split", "test", "--limit", str(size["items"]),
                  "--max_new_tokens", str(size["max_new_tokens"]), "--seed", str(args.seed)]  # fmt: skip
        t_hf = timed_run([*common, "--backend", "hf"], work / "hf")
        extra = ["--enforce-eager"] if args.eager or args.quick else []
        started = time.perf_counter()
        server = VLLMServer(model, log_path=work / "vllm.log", served_model_name="bench", seed=args.seed,
                            prefix_caching=False, mm_processor_cache=False, extra_args=extra)  # fmt: skip
        with server:
            t_start = time.perf_counter() - started
            remote = ["--backend", "openai", "--base_url", server.base_url, "--served_model", "bench"]
            t_vllm = timed_run([*common, *remote], work / "vllm")
            phases = server_seconds(server.root_url)
        hf = {r["id"]: r for r in read_jsonl(work / "hf" / "predictions.jsonl")}
        vllm = {r["id"]: r for r in read_jsonl(work / "vllm" / "predictions.jsonl")}
    n = len(hf)
    differing = sorted(k for k in hf if hf[k]["output"] != vllm[k]["output"])
    n_new = sum(r["n_new_tokens"] for r in hf.values())
    print(f"{n} items, max_new_tokens={size['max_new_tokens']}, tiny Qwen2-Audio (2 x 32 heads, 30 s window), "
          f"fp32 CPU, tokenizer {tokenizer}; vLLM {'eager' if extra else 'compiled'}, start-up {t_start:.1f} s")  # fmt: skip
    print_table(
        ["backend", "seconds", "items/s", "new tokens/s"],
        [
            ("hf (batch 16)", t_hf, n / t_hf, n_new / t_hf),
            ("vllm (16 in flight)", t_vllm, n / t_vllm, n_new / t_vllm),
        ],
    )
    print("vLLM server time per request phase (summed over requests, s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))  # fmt: skip
    print(
        f"identical answers: {n - len(differing)}/{n}" + (f" (differ: {differing[:10]})" if differing else "")
    )
    result = {
        "bench": "eval_backends",
        "hf_items_per_s": round(n / t_hf, 3),
        "vllm_items_per_s": round(n / t_vllm, 3),
        "speedup": round(t_hf / t_vllm, 3),
        "identical_frac": round((n - len(differing)) / n, 4),
        "differing_items": differing,
        "vllm_startup_s": round(t_start, 1),
        "vllm_server_phase_s": {k: round(v, 2) for k, v in phases.items()},
        "items": n,
        "max_new_tokens": size["max_new_tokens"],
        "new_tokens": n_new,
        "tokenizer": tokenizer,
        "vllm_compiled": not extra,
        "quick": args.quick,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
