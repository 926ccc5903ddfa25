#!/usr/bin/env bash
# The search-speed measurements of the README ("How close to the GPU's peak", "How the search scales",
# "Search cost, measured") in one go, on a host with 2 GPUs (one GPU: the 1-vs-2 run and the sharding test
# are skipped). Results go to bench/results/; GPU clocks, power and temperature are logged once a second
# beside them, so that a slowdown with two workers can be told apart from a clock drop.
#
#   bash bench/search_speed_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=bench/results
LOGS=${LOGS:-cache/search-speed-study}
mkdir -p "$RESULTS" "$LOGS"
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
[ "$GPUS" -ge 1 ] || { echo "needs a CUDA GPU"; exit 1; }

nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu \
    --format=csv -l 1 >"$LOGS/gpu_clocks.csv" 2>&1 &
CLOCKS=$!
trap 'kill $CLOCKS 2>/dev/null || true' EXIT

# achieved FLOP/s of candidate evaluation against the measured bf16 matmul peak
# (transformers' own Mamba-2 norms and the fused ones), with the profile of where the GPU time goes
CUDA_VISIBLE_DEVICES=0 python bench/flops.py --random-mamba2 64x2560 --norms stock,fused --batch-sizes 4,16,32 \
    --windows 32 --seq-len 1024 --candidates 6 --profile >"$LOGS/flops.log" 2>&1 || echo "flops: see its log"

# naive against optimised search on the two pretrained models, same dtype and settings for both (bfloat16), with the
# fused loss and with PyTorch's (SHEDDER_FUSED_LOSS=0; for smollm2-135m also a profile of two optimised steps)
for model in smollm2-135m smollm2-hybrid; do
    targets=block,attn,mlp
    [ "$model" = smollm2-hybrid ] && targets=block,ssm,attn,mlp
    for loss in fused stock; do
        profile=""
        [ "$model-$loss" = smollm2-135m-stock ] && profile="--profile-steps 2"
        suffix=""
        [ "$loss" = stock ] && suffix=_stock-loss
        SHEDDER_FUSED_LOSS=$([ "$loss" = fused ] && echo 1 || echo 0) CUDA_VISIBLE_DEVICES=0 python bench/search_cost.py \
            --model "$model" --device cuda --dtype bfloat16 --targets "$targets" --steps 6 --tokens 32768 --seq-len 1024 \
            --batch-size 4 $profile >"$RESULTS/search_cost_cuda_bf16_$model$suffix.json" \
            2>"$LOGS/search_cost_$model$suffix.log" || echo "search_cost $model $loss: see its log"
    done
done

if [ "$GPUS" -ge 2 ]; then
    # the same search on 1 and 2 Ray workers (one GPU each), same plan required; and its first step on both GPUs
    # at once without Ray, one process each, to tell a slowdown of the host from one of Ray
    python bench/ray_scaling.py --workers 1,2 --local --concurrent-local --random-mamba2 64x2560 --dtype bfloat16 --windows 32 \
        --seq-len 1024 --batch-size 4 --targets block,ssm --steps 2 >"$LOGS/ray_scaling.log" 2>&1 || echo "ray_scaling: see its log"
    # a replica spread over both GPUs gives one GPU's numbers and plan
    python -m pytest -q tests/test_sharding.py -p no:cacheprovider >"$LOGS/sharding.log" 2>&1 || true
fi
cp "$LOGS/gpu_clocks.csv" "$RESULTS/gpu_clocks_search_speed_study.csv"
tail -n 3 "$LOGS"/*.log
