#!/usr/bin/env bash
# The whole loop on a laptop CPU: synthetic data -> prepare -> tiny Qwen2-Audio -> base eval ->
# DeepSpeed LoRA on 2 CPU ranks -> tuned eval -> comparison. `make quickstart` runs this.
#
#   SEED=3 bash scripts/quickstart.sh          # another seed: new data, new random init, new run
#   OUT=runs/qs-seed3 SEED=3 bash scripts/quickstart.sh
#
# Every number it prints can be rerun from the commands echoed below.
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=${SEED:-0}
OUT=${OUT:-runs/quickstart}
DATA=${DATA:-data/quickstart-seed$SEED}
MODEL=${MODEL:-runs/models/tiny-qwen2-audio-seed$SEED}
N_ITEMS=${N_ITEMS:-2000}
EVAL_ARGS=(--split test --batch_size 32 --max_new_tokens 64 --seed "$SEED")

export WANDB_MODE=${WANDB_MODE:-offline} WANDB_SILENT=true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

start=$(date +%s)
rm -rf "$OUT"  # a fresh run every time: eval.run would otherwise resume into the old predictions
step() { echo; echo "==> [$(( $(date +%s) - start ))s] $*"; }
run() { echo "+ $*"; "$@"; }

step "1/7 synthetic benchmark ($N_ITEMS items, real 16 kHz audio)"
run python -m data_prep.synth --out "$DATA/synth" --n "$N_ITEMS" --seed "$SEED"

step "2/7 prepare: cot template, grouped held-out split"
run python -m data_prep.prepare --config configs/data/synth_cot.yaml \
    --source.path "$DATA/synth/meta.jsonl" --audio_root "$DATA/synth" --out_dir "$DATA/prepared" --seed "$SEED"
DATASET="$DATA/prepared/latest"

step "3/7 tiny random Qwen2-Audio (seed $SEED)"
# The small local tokenizer makes the model identical on every machine (with or without ../shared)
# and keeps the LM head 150x smaller than the real 151k-token vocabulary.
run python -m scripts.make_tiny_model --family qwen2_audio --out "$MODEL" --seed "$SEED" --tokenizer local

step "4/7 evaluate the base model (pre)"
run python -m eval.run --model "$MODEL" --data "$DATASET" --out "$OUT/eval-base" "${EVAL_ARGS[@]}"

step "5/7 LoRA fine-tuning: deepspeed train.py on 2 CPU ranks (ZeRO-2, gloo)"
PORT=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# One thread per rank: two ranks on two cores, and OpenMP spinning otherwise slows steps several-fold.
OMP_NUM_THREADS=1 run deepspeed --num_gpus 2 --master_port "$PORT" train.py --config configs/tiny/quickstart.yaml \
    --model_name_or_path "$MODEL" --dataset_dir "$DATASET" --output_dir "$OUT/adapter" --seed "$SEED"

step "6/7 evaluate the tuned adapter (post)"
run python -m eval.run --model "$MODEL" --adapter "$OUT/adapter" --data "$DATASET" --out "$OUT/eval-tuned" "${EVAL_ARGS[@]}"

step "7/7 compare base vs tuned"
run python -m eval.compare "$OUT/eval-base" "$OUT/eval-tuned" --out "$OUT/compare" >/dev/null
run python -m scripts.quickstart_summary --base "$OUT/eval-base" --tuned "$OUT/eval-tuned" \
    --compare "$OUT/compare" --adapter "$OUT/adapter" --out "$OUT/summary.json"
echo "quickstart finished in $(( $(date +%s) - start ))s"
