#!/usr/bin/env bash
# Multi-node LoRA training with the DeepSpeed launcher and an MPI-style hostfile.
#
#   HOSTFILE=hostfile scripts/launch_multinode.sh configs/qwen2_audio_7b/cot_lora.yaml [--key value ...]
#
# hostfile (one line per node, `slots` = GPUs on that node):
#   gpu-node-0 slots=8
#   gpu-node-1 slots=8
# Run it on the first host. Requirements: passwordless ssh from here to every host, pdsh installed,
# this repository and its .venv at the same path on every host (shared filesystem), and the
# prepared dataset readable from all of them. Environment variables for the remote ranks
# (WANDB_API_KEY, NCCL_* ...) go in a `.deepspeed_env` file (KEY=VALUE lines) in this directory
# or in $HOME; DeepSpeed exports them on every node. The global batch grows with the node count:
# per_device_train_batch_size x gradient_accumulation_steps x total GPUs.
# Environment: HOSTFILE (default ./hostfile), NUM_NODES (default: all hosts in the hostfile),
# MASTER_ADDR (default: the first host), MASTER_PORT (default 29500).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 ]]; then
    sed -n '2,20p' "$0"; exit 2
fi
CONFIG=$1; shift
HOSTFILE=${HOSTFILE:-hostfile}
[[ -f "$HOSTFILE" ]] || { echo "hostfile not found: $HOSTFILE (set HOSTFILE=...)" >&2; exit 2; }
NUM_NODES=${NUM_NODES:-$(grep -cvE '^[[:space:]]*(#|$)' "$HOSTFILE")}
MASTER_ADDR=${MASTER_ADDR:-$(grep -vE '^[[:space:]]*(#|$)' "$HOSTFILE" | head -n1 | awk '{print $1}')}
MASTER_PORT=${MASTER_PORT:-29500}

echo "launching $CONFIG on $NUM_NODES node(s) from $HOSTFILE, master $MASTER_ADDR:$MASTER_PORT"
# .venv/bin first on PATH so the remote `python` is this project's interpreter.
export PATH="$PWD/.venv/bin:$PATH"
exec deepspeed --hostfile "$HOSTFILE" --num_nodes "$NUM_NODES" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    train.py --config "$CONFIG" "$@"
