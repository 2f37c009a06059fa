#!/usr/bin/env bash
# The paper's comparisons on a real model and real data: IPA vs LoRA vs DoRA on
# SmolLM2-135M-Instruct, fine-tuned on WordNet questions (ipa wordnet-tasks), with the
# ablations of the paper's §4.3 and the two baselines, then `ipa report`.
#
#   scripts/wordnet-grid.sh [zero-shot|main|scale|ablations|baselines|report|all]   (default: all)
#
# Every run is resumable: stop it at any time and start the script again; finished runs are
# skipped (their eval/accuracy.json exists, in RUNS or in the ARCHIVE), unfinished ones
# continue from their checkpoint. `report` copies every finished run's records (no weights)
# into ARCHIVE and reports from there, so a grid can be spread over machines: keep ARCHIVE.
# Sizes come from the environment (defaults sized for two CPU cores; docs/results.md says why):
#   RUNS (runs/wordnet-grid), ARCHIVE (docs/results/wordnet/runs), IPA (the ipa binary;
#   default target/release/ipa), SEEDS ("0 1 2"), RANK (8), TRAIN_PER_TASK (160),
#   TEST_PER_TASK (80), MIN_COUNT (10), EPOCHS (1), BATCH (8), MICRO (4), CUTOFF (192),
#   DISTRACTORS (far), DEFINITION_ANSWER (word), LR (5e-4), WARMUP (5), VAL (40), MASK_PROMPT (1: the loss on the response only),
#   BEAMS (1), BACKEND (flex).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-runs/wordnet-grid}"
ARCHIVE="${ARCHIVE:-docs/results/wordnet/runs}"
IPA="${IPA:-target/release/ipa}"
SEEDS="${SEEDS:-0 1 2}"
RANK="${RANK:-8}"
TRAIN_PER_TASK="${TRAIN_PER_TASK:-160}"
TEST_PER_TASK="${TEST_PER_TASK:-80}"
MIN_COUNT="${MIN_COUNT:-10}"
DISTRACTORS="${DISTRACTORS:-far}"
DEFINITION_ANSWER="${DEFINITION_ANSWER:-word}"
EPOCHS="${EPOCHS:-1}"
BATCH="${BATCH:-8}"
MICRO="${MICRO:-4}"
CUTOFF="${CUTOFF:-192}"
LR="${LR:-5e-4}"
WARMUP="${WARMUP:-5}"
VAL="${VAL:-40}"
MASK_PROMPT="${MASK_PROMPT:-1}"
BEAMS="${BEAMS:-1}"
BACKEND="${BACKEND:-flex}"
TASKS="wordnet_definitions,wordnet_hypernyms"
TARGETS="q_proj,k_proj,v_proj,up_proj,down_proj"
WHAT="${1:-all}"

if [ ! -x "$IPA" ]; then
    echo "wordnet-grid: $IPA is not built (cargo build --release, or set IPA=...)" >&2
    exit 1
fi
mkdir -p "$RUNS"
# The model through a link in RUNS, so the records name it by a path relative to the clone.
MODEL="$RUNS/SmolLM2-135M-Instruct.Q4_1.gguf"
ln -sfn "$(bash scripts/fetch-models.sh smollm2 | tail -n 1)" "$MODEL"
DATA="$RUNS/data"

# The task set: the same words and questions for every run.
if [ ! -f "$DATA/train.json" ]; then
    "$IPA" wordnet-tasks --seed 0 --train-per-task "$TRAIN_PER_TASK" \
        --test-per-task "$TEST_PER_TASK" --min-count "$MIN_COUNT" --distractors "$DISTRACTORS" \
        --definition-answer "$DEFINITION_ANSWER" --out "$DATA"
fi

# evaluate MODEL RUN_DIR [ADAPTER]: the test sets into RUN_DIR/eval.
evaluate() {
    local model="$1" out="$2/eval"
    [ -f "$out/accuracy.json" ] && return 0
    local adapter=()
    [ -n "${3:-}" ] && adapter=(--adapter "$3")
    "$IPA" eval --backend "$BACKEND" --model "$model" "${adapter[@]}" --data-dir "$DATA/dataset" \
        --tasks "$TASKS" --num-beams "$BEAMS" --max-new-tokens 16 --out "$out" --overwrite --quiet
}

# run NAME SEED FLAGS...: train (resuming) then evaluate into RUNS/NAME/seed-SEED.
run() {
    local name="$1" seed="$2"
    shift 2
    local out="$RUNS/$name/seed-$seed"
    if [ -f "$out/eval/accuracy.json" ] || [ -f "$ARCHIVE/$name/seed-$seed/eval/accuracy.json" ]; then
        echo "== $name seed $seed: done"
        return 0
    fi
    echo "== $name seed $seed"
    local extra=()
    [ -f "$out/train_config.json" ] && extra+=(--resume)
    [ "$MASK_PROMPT" = 1 ] && extra+=(--mask-prompt)
    "$IPA" train --backend "$BACKEND" --model "$MODEL" --data "$DATA/train.json" \
        --cutoff "$CUTOFF" --epochs "$EPOCHS" --batch-size "$BATCH" --micro-batch-size "$MICRO" \
        --learning-rate "$LR" --warmup-steps "$WARMUP" --val-set-size "$VAL" \
        --seed "$seed" --out "$out" "${extra[@]}" --quiet "$@"
    if [ -d "$out/model" ]; then
        # Full or q/v fine-tuning: the result is a model folder.
        evaluate "$out/model" "$out"
    else
        evaluate "$MODEL" "$out" "$out/adapter"
    fi
}

zero_shot() {
    [ -f "$ARCHIVE/zero-shot/eval/accuracy.json" ] && return 0
    mkdir -p "$RUNS/zero-shot"
    echo "== zero-shot"
    evaluate "$MODEL" "$RUNS/zero-shot"
}

main() {
    for seed in $SEEDS; do
        run lora "$seed" --method lora --rank "$RANK" --targets "$TARGETS"
        run lora-frozen "$seed" --method lora --train-projector false --rank "$RANK" --targets "$TARGETS"
        run ipa "$seed" --method ipa --rank "$RANK" --targets "$TARGETS"
        run ipa-trained "$seed" --method ipa --train-projector --rank "$RANK" --targets "$TARGETS"
        run dora "$seed" --method lora --dora --rank "$RANK" --targets "$TARGETS"
        run ipa-dora "$seed" --method ipa --dora --rank "$RANK" --targets "$TARGETS"
    done
}

ablations() {
    local seed
    seed="$(echo "$SEEDS" | cut -d' ' -f1)"
    # Figure 4a: rank sweep, IPA frozen vs LoRA frozen (equal trainable parameters).
    for r in 2 4 16 32; do
        run "rank/ipa-r$r" "$seed" --method ipa --rank "$r" --targets "$TARGETS"
        run "rank/lora-frozen-r$r" "$seed" --method lora --train-projector false --rank "$r" \
            --targets "$TARGETS"
    done
    # Figure 4b: the share of the training data the fit reads.
    for f in 0.01 1.0; do
        run "fit-fraction/ipa-f$f" "$seed" --method ipa --rank "$RANK" --fit-fraction "$f" \
            --targets "$TARGETS"
    done
    # Table 3: the fit algorithm.
    for a in rsvd gha covariance; do
        run "algorithm/ipa-$a" "$seed" --method ipa --rank "$RANK" --algorithm "$a" \
            --targets "$TARGETS"
    done
}

# IPA frozen with LoRA's update scale (alpha/r = 2 instead of the authors' 0.25): whether a gap
# between IPA and LoRA at this budget is the projector or the smaller step.
scale() {
    for seed in $SEEDS; do
        run ipa-scale2 "$seed" --method ipa --scaling 2 --rank "$RANK" --targets "$TARGETS"
    done
    # The rank sweep again at that scale, against LoRA frozen's (first seed).
    local seed
    seed="$(echo "$SEEDS" | cut -d' ' -f1)"
    for r in 2 4 16 32; do
        run "rank/ipa-scale2-r$r" "$seed" --method ipa --scaling 2 --rank "$r" --targets "$TARGETS"
    done
}

baselines() {
    local seed
    seed="$(echo "$SEEDS" | cut -d' ' -f1)"
    # Every weight moves here, so the step is the one full fine-tuning uses (run reads LR).
    local LR=1e-5
    run weights-qv "$seed" --method weights --targets q_proj,v_proj
    run full "$seed" --method full
    # At 35 steps 1e-5 barely moves them: the same at 1e-4.
    LR=1e-4
    run weights-qv-lr1e-4 "$seed" --method weights --targets q_proj,v_proj
    run full-lr1e-4 "$seed" --method full
}

report() {
    # Every finished run's records into the archive, then the report of everything archived.
    "$IPA" report "$RUNS" --out "$RUNS/report" --archive "$ARCHIVE" --no-plots >/dev/null
    "$IPA" report "$ARCHIVE" --out "$(dirname "$ARCHIVE")"
    echo "report: $(dirname "$ARCHIVE")/report.md"
}

case "$WHAT" in
    zero-shot) zero_shot ;;
    main) main ;;
    scale) scale ;;
    ablations) ablations ;;
    baselines) baselines ;;
    report) report ;;
    all) zero_shot; main; baselines; scale; ablations; report ;;
    *) echo "usage: $0 [zero-shot|main|scale|ablations|baselines|report|all]" >&2; exit 2 ;;
esac
