"""Train an audio LLM with LoRA: `deepspeed train.py --config configs/<model>/<recipe>.yaml [--key value ...]`.

Also runs under `torchrun --nproc_per_node N train.py ...` and as plain `python train.py ...`
(one process). `python train.py --help` lists every config key. The work happens in
`train.sft` (SFT) or `train.grpo` (GRPO), chosen by `training.method`.
"""

import sys

from train import rank_watch
from train.config import load_config
from train.distributed import finish_and_exit, setup_env, skip_cpu_shm_comm_op


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    setup_env(uses_deepspeed=cfg.training.deepspeed is not None)  # before torch is imported
    if cfg.training.deepspeed:
        skip_cpu_shm_comm_op()
    from common.logging_utils import setup_logging

    setup_logging()
    rank_watch.start()  # a dead peer rank stops this one with its name, instead of a hang
    if cfg.training.method == "grpo":
        from train.grpo import main as run
    else:
        from train.sft import main as run
    run(cfg)
    rank_watch.finish()  # wait for the peers (rank 0 may still be in eval_at_end), watching them
    finish_and_exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
