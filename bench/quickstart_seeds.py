"""The quickstart over several seeds: is the improvement robust, not one lucky init?

    python -m bench.quickstart_seeds --seeds 0,1,2,3,4

Each seed reruns `scripts/quickstart.sh` end to end with SEED=<s> (new synthetic data, new split,
new random init, new training order) into runs/quickstart-seeds/seed<s>, then reads its
summary.json. Prints a table and, as the last line, one JSON object. About 6-10 min per seed on 2
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from common.paths import REPO_ROOT
from scripts.check_quickstart import check


def run_seed(seed: int, root: Path) -> dict:
    out = root / f"seed{seed}"
    env = dict(os.environ, SEED=str(seed), OUT=str(out))
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
        **summary,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--root", type=Path, default=REPO_ROOT / "runs/quickstart-seeds")
    args = p.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    print(
        f"{'seed':>4}  {'pre':>6}  {'post':>6}  {'random':>6}  {'McNemar p':>9}  {'vs random p':>11}  {'min':>5}  ok"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run_seed(seed, args.root)
        results.append(r)
        if "pre" in r:
            print(
                f"{seed:>4}  {r['pre']['choice_acc']:>6.1f}  {r['post']['choice_acc']:>6.1f}  {r['random']:>6.1f}  "
                f"{r['mcnemar_p']:>9.2g}  {r['post_vs_random_p']:>11.2g}  {r['minutes']:>5.1f}  {r['ok']}",
                flush=True,
            )
        else:
            print(f"{seed:>4}  {r['error']}", flush=True)
    posts = [r["post"]["choice_acc"] for r in results if "post" in r]
    print(json.dumps({
        "bench": "quickstart_seeds",
        "seeds": [r["seed"] for r in results],
        "all_significant": all(r["ok"] for r in results),
        "post_choice_acc": posts,
        "min_post_choice_acc": min(posts) if posts else None,
        "max_mcnemar_p": max((r["mcnemar_p"] for r in results if "mcnemar_p" in r), default=None),
        "max_post_vs_random_p": max((r["post_vs_random_p"] for r in results if "post_vs_random_p" in r), default=None),
    }))  # fmt: skip
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
