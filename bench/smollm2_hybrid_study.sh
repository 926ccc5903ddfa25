#!/usr/bin/env bash
# smollm2-hybrid used as the paper uses a hybrid, on one GPU (README section "smollm2-hybrid").
#
#   bash bench/smollm2_hybrid_study.sh measure   # search, sensitivity map, accuracy (with SmolLM2), recovery
#   bash bench/smollm2_hybrid_study.sh latency   # then, with the GPU otherwise idle: dense vs extracted timing
#
# One plan serves every row: the multi-stage search of scripts/recover_demo.py (blocks, attention and MLP
# sub-blocks first, then SSMs; 65,536 wiki tokens) is the plan whose accuracy, recovery and latency are
# reported. The jobs of "measure" share the GPU (the models are small); "latency" must run alone.
# Every step resumes from $WORK when run again. Results go to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-cache/hybrid-study}
RESULTS=bench/results
STAGES="block,attn,mlp:2;ssm:2"
PLAN=$WORK/recover/smollm2-hybrid/search/plan.json
EXTRACTED=$WORK/recover/smollm2-hybrid/extracted
mkdir -p "$WORK" "$RESULTS"

measure() {
    python scripts/recover_demo.py --models smollm2-hybrid --stages "smollm2-hybrid=$STAGES" --device cuda \
        --tasks all --limit 300 --work "$WORK/recover" --results "$RESULTS" >"$WORK/recover.log" 2>&1 &
    local recovery=$!
    python -m shedder score --model smollm2-hybrid --dtype float32 --device cuda \
        --kinds block,ssm,attn,mlp,attn_heads,ssm_heads,mlp_channels --calib wiki --tokens 16384 --seq-len 512 \
        --batch-size 32 --out "$RESULTS/sensitivity_smollm2-hybrid.json" >"$WORK/score.log" 2>&1 &
    local score=$!
    # SmolLM2 itself, with the same settings, as the reference row
    python bench/zoo_accuracy.py --models smollm2-135m --device cuda --batch-size 32 --limit 1000 \
        --work "$WORK" >"$WORK/accuracy-smollm2-135m.log" 2>&1 &
    local reference=$!
    until [ -f "$EXTRACTED/config.json" ]; do  # the search is done once its plan is extracted
        kill -0 $recovery 2>/dev/null || { echo "recovery study stopped before its search finished"; exit 1; }
        sleep 5
    done
    python bench/zoo_accuracy.py --models smollm2-hybrid --plan "smollm2-hybrid=$PLAN" --device cuda \
        --batch-size 32 --limit 1000 --work "$WORK" >"$WORK/accuracy-smollm2-hybrid.log" 2>&1
    wait $reference $score $recovery
}

latency() {
    [ -f "$PLAN" ] || PLAN=bench/results/plans/smollm2-hybrid.json  # the measured plan, as committed
    python -m shedder bench --model smollm2-hybrid --plan "$PLAN" --device cuda --dtype bfloat16 \
        --prompt-len 512 --new-tokens 64 --batch-sizes 1 --repeats 20 --warmup 2 \
        --out "$RESULTS/latency_cuda_smollm2-hybrid.json"
}

case "${1:-all}" in
    measure) measure ;;
    latency) latency ;;
    all) measure; latency ;;
    *) echo "usage: $0 [measure|latency|all]"; exit 2 ;;
esac
