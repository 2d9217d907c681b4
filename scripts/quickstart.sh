#!/usr/bin/env bash
# The whole loop on a laptop CPU, with a base that already answers and an audio ablation:
#   synthetic data -> prepare (cot_v1, direct_v1) -> tiny random Qwen2-Audio
#   -> stage 1: the base learns the answer format on clips of *other* scenes, merged (chance level)
#   -> stage 2: a direct-answer LoRA and a chain-of-thought LoRA on the real clips
#   -> five evaluations on the same held-out items: base, direct, CoT, CoT without audio, CoT on noise
#   -> one comparison table and chart, summary.json and the verdict of the gates
#      (`python -m scripts.check_quickstart runs/quickstart/summary.json` exits 1 when one fails).
# `make quickstart` runs this.
#
#   SEED=3 bash scripts/quickstart.sh          # another seed: new data, new random init, new runs
#   OUT=runs/qs-seed3 SEED=3 bash scripts/quickstart.sh
#
# Every number it prints can be rerun from the commands echoed below.
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=${SEED:-0}
OUT=${OUT:-runs/quickstart}
DATA=${DATA:-data/quickstart-seed$SEED}
MODEL=${MODEL:-runs/models/tiny-qwen2-audio-seed$SEED}
N_ITEMS=${N_ITEMS:-4000}
BASE_STEPS=${BASE_STEPS:-600}
LORA_STEPS=${LORA_STEPS:-6000}
EVAL_ARGS=(--split test --batch_size 32 --max_new_tokens 64 --seed "$SEED")

export WANDB_MODE=${WANDB_MODE:-offline} WANDB_SILENT=true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One thread: on 2 cores that other work shares, OpenMP threads that spin while waiting for a core
# made training steps up to 10x slower (measured: 0.2 vs 1.8 steps/s at load 8).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

start=$(date +%s)
rm -rf "$OUT"  # a fresh run every time: eval.run would otherwise resume into the old predictions
step() { echo; echo "==> [$(( $(date +%s) - start ))s] $*"; }
run() { echo "+ $*"; "$@"; }

step "1/8 synthetic benchmark ($N_ITEMS items, real 16 kHz audio)"
run python -m data_prep.synth --out "$DATA/synth" --n "$N_ITEMS" --seed "$SEED"

step "2/8 prepare: cot_v1 and direct_v1 samples of the same items, one grouped held-out split"
for template in cot_v1 direct_v1; do
    run python -m data_prep.prepare --config configs/data/synth_cot.yaml --template "$template" --name "synth_${template%_v1}" \
        --source.path "$DATA/synth/meta.jsonl" --audio_root "$DATA/synth" --out_dir "$DATA/$template" --seed "$SEED"
done
COT="$DATA/cot_v1/latest"
DIRECT="$DATA/direct_v1/latest"

step "3/8 base data: direct_v1 train samples, each with the clip of another scene of its question"
run python -m data_prep.swap_audio --data "$DIRECT" --out "$DATA/base-swapped" --seed "$SEED"

step "4/8 tiny random Qwen2-Audio (seed $SEED)"
# The small local tokenizer makes the model identical on every machine (with or without ../shared)
# and keeps the LM head 150x smaller than the real 151k-token vocabulary. A 5 s window, because the
# synthetic clips are at most 5 s (data_prep.synth.MAX_SECONDS) and Qwen2-Audio's encoder runs over
# the whole padded window (measured with a 4 s window and sdpa attention: 71 vs 46 training
# samples/s against the 10 s default with eager attention).
run python -m scripts.make_tiny_model --family qwen2_audio --out "$MODEL" --seed "$SEED" --tokenizer local --window_seconds 5

step "5/8 stage 1, the base: $BASE_STEPS steps on the swapped-audio data, merged into a plain checkpoint"
run python train.py --config configs/tiny/quickstart_base.yaml --max_steps "$BASE_STEPS" \
    --model_name_or_path "$MODEL" --dataset_dir "$DATA/base-swapped" --output_dir "$OUT/base-adapter" --seed "$SEED"
run python -m scripts.merge_adapter --base "$MODEL" --adapter "$OUT/base-adapter" --out "$OUT/base-model"
BASE="$OUT/base-model"

step "6/8 stage 2: direct LoRA and chain-of-thought LoRA from the base, $LORA_STEPS steps each, side by side"
# Side by side: each training step runs on one thread (OMP_NUM_THREADS=1), so the two runs share the
# 2 cores (measured, seed 0: 13-15 steps/s each vs ~19 alone; the pair done 1.45x sooner than one
# after the other). Their logs go to files; the step counters are printed every 30 s.
pids=() names=()
for name in direct cot; do
    data=$DIRECT; [ "$name" = cot ] && data=$COT
    echo "+ python train.py --config configs/tiny/quickstart.yaml --max_steps $LORA_STEPS --model_name_or_path $BASE" \
        "--dataset_dir $data --output_dir $OUT/$name-adapter --seed $SEED  > $OUT/$name-train.log"
    python train.py --config configs/tiny/quickstart.yaml --max_steps "$LORA_STEPS" \
        --model_name_or_path "$BASE" --dataset_dir "$data" --output_dir "$OUT/$name-adapter" --seed "$SEED" \
        > "$OUT/$name-train.log" 2>&1 &
    pids+=($!) names+=("$name")
done
progress() {  # the trainers' own step counters, from their tqdm lines
    for name in "${names[@]}"; do
        printf '  %s: step %s' "$name" "$(tr '\r' '\n' < "$OUT/$name-train.log" | grep -oE "[0-9]+/$LORA_STEPS" | tail -1 || true)"
    done
    echo "  [$(( $(date +%s) - start ))s]"
}
ticks=0 running=("${!pids[@]}")
while ((${#running[@]})); do
    sleep 1
    ticks=$((ticks + 1))
    still=()
    for i in "${running[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then still+=("$i"); continue; fi
        if ! wait "${pids[$i]}"; then  # fail at once: do not wait minutes for the other run first
            kill "${pids[@]}" 2>/dev/null || true
            tail -n 40 "$OUT/${names[$i]}-train.log"
            echo "stage 2: the ${names[$i]} LoRA failed (the other run was stopped); its log: $OUT/${names[$i]}-train.log"
            exit 1
        fi
    done
    running=("${still[@]}")
    if ((ticks % 30 == 0)); then progress; fi
done
progress

step "7/8 evaluate on the held-out items: base, direct, CoT, CoT without audio, CoT on same-length noise"
run python -m eval.run --model "$BASE" --data "$DIRECT" --out "$OUT/eval-base" "${EVAL_ARGS[@]}"
run python -m eval.run --model "$BASE" --adapter "$OUT/direct-adapter" --data "$DIRECT" --out "$OUT/eval-direct" "${EVAL_ARGS[@]}"
run python -m eval.run --model "$BASE" --adapter "$OUT/cot-adapter" --data "$COT" --out "$OUT/eval-cot" "${EVAL_ARGS[@]}"
run python -m eval.run --model "$BASE" --adapter "$OUT/cot-adapter" --data "$COT" --out "$OUT/eval-cot-no-audio" --audio none "${EVAL_ARGS[@]}"
run python -m eval.run --model "$BASE" --adapter "$OUT/cot-adapter" --data "$COT" --out "$OUT/eval-cot-noise" --audio noise "${EVAL_ARGS[@]}"

step "8/8 compare the five systems; summary.json and the gates (CI: python -m scripts.check_quickstart)"
EVALS=("$OUT/eval-base" "$OUT/eval-direct" "$OUT/eval-cot" "$OUT/eval-cot-no-audio" "$OUT/eval-cot-noise")
run python -m eval.compare "${EVALS[@]}" --out "$OUT/compare" >/dev/null
run python -m scripts.quickstart_summary --base "$OUT/eval-base" --direct "$OUT/eval-direct" --cot "$OUT/eval-cot" \
    --cot_no_audio "$OUT/eval-cot-no-audio" --cot_noise "$OUT/eval-cot-noise" \
    --compare "$OUT/compare" --adapter "$OUT/cot-adapter" --out "$OUT/summary.json"
echo "quickstart finished in $(( $(date +%s) - start ))s"
