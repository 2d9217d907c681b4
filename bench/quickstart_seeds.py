"""The quickstart over several seeds: does every gate hold, not just on one lucky init?

    python -m bench.quickstart_seeds --seeds 0,1,2,3,4

Each seed reruns `scripts/quickstart.sh` end to end with SEED=<s> (new synthetic data, new split,
new random init, new training order, new audio swap for the base) into
runs/quickstart-seeds/seed<s>, then reads its summary.json and applies scripts.check_quickstart.
Prints a table (choice accuracy in %, instruction following in brackets where it matters) and, as
the last line, one JSON object. About 11-15 min per seed on 2 cores (4,000 items, 600 held out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.paths import REPO_ROOT
from scripts.check_quickstart import check


def run_seed(seed: int, root: Path) -> dict:
    out = root / f"seed{seed}"
    env = dict(os.environ, SEED=str(seed), OUT=str(out), DATA=str(root / f"data-seed{seed}"))
    # The script calls `python`: make it this interpreter (the venv's), not whatever PATH has first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    start = time.time()
    log = root / f"seed{seed}.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            ["bash", "scripts/quickstart.sh"], cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        return {"seed": seed, "ok": False, "error": f"quickstart exited {proc.returncode}, see {log}"}
    summary = json.loads((out / "summary.json").read_text())
    problems = check(summary)
    return {
        "seed": seed,
        "ok": not problems,
        "problems": problems,
        "minutes": (time.time() - start) / 60,
        "load_avg_15min": os.getloadavg()[2],  # the box is shared: minutes mean little without it
        **summary,
    }


HEADER = (
    f"{'seed':>4}  {'base (IF)':>12}  {'direct':>6}  {'CoT':>6}  {'no audio (IF)':>13}  {'noise (IF)':>12}  "
    f"{'random':>6}  {'CoT>base p':>10}  {'CoT>rand p':>10}  {'blind<CoT p':>11}  {'dir/CoT p':>9}  {'min':>5}  ok"
)


def _row(r: dict) -> str:
    s = r["systems"]

    def acc_if(name: str) -> str:
        return f"{s[name]['choice_acc']:.1f} ({s[name]['instruction_following']:.0f})"

    return (
        f"{r['seed']:>4}  {acc_if('base'):>12}  {s['direct']['choice_acc']:>6.1f}  {s['cot']['choice_acc']:>6.1f}  "
        f"{acc_if('cot_no_audio'):>13}  {acc_if('cot_noise'):>12}  {r['random']:>6.1f}  {r['mcnemar_p']:>10.2g}  "
        f"{r['post_vs_random_p']:>10.2g}  {r['cot_vs_no_audio_p']:>11.2g}  {r['direct_vs_cot_p']:>9.2g}  "
        f"{r['minutes']:>5.1f}  {r['ok']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--root", type=Path, default=REPO_ROOT / "runs/quickstart-seeds")
    args = p.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    print(HEADER, flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run_seed(seed, args.root)
        results.append(r)
        print(_row(r) if "systems" in r else f"{seed:>4}  {r.get('error') or r['problems']}", flush=True)
        for problem in r.get("problems") or []:
            print(f"      FAIL: {problem}", flush=True)
    done = [r for r in results if "systems" in r]

    def column(name: str) -> list[float]:
        return [r["systems"][name]["choice_acc"] for r in done]

    print(json.dumps({
        "bench": "quickstart_seeds",
        "seeds": [r["seed"] for r in results],
        "all_gates_hold": all(r["ok"] for r in results),
        "failed_seeds": [r["seed"] for r in results if not r["ok"]],
        "base_choice_acc": column("base"),
        "base_instruction_following": [r["systems"]["base"]["instruction_following"] for r in done],
        "direct_choice_acc": column("direct"),
        "cot_choice_acc": column("cot"),
        "cot_no_audio_choice_acc": column("cot_no_audio"),
        "cot_noise_choice_acc": column("cot_noise"),
        "max_mcnemar_p": max((r["mcnemar_p"] for r in done), default=None),
        "max_post_vs_random_p": max((r["post_vs_random_p"] for r in done), default=None),
        "max_cot_vs_no_audio_p": max((r["cot_vs_no_audio_p"] for r in done), default=None),
        "minutes": [round(r["minutes"], 1) for r in done],
        "load_avg_15min": [round(r["load_avg_15min"], 1) for r in done],
    }))  # fmt: skip
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
