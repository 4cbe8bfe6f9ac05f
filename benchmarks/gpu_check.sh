#!/usr/bin/env bash
# The short GPU check behind benchmarks/RESULTS.md's GPU section, within BUDGET seconds (default 540):
# 1. tests: the feature, model and runtime tests on the GPU;
# 2. extraction: throughput over DATA_DIR/train, fp32 vs bf16, NCHW vs channels_last;
# 3. train: naive vs cached training (train_speed.py: all of train/, 20 epochs, default recipe) at each of
#    SEEDS while the budget lasts, in MIXED_PRECISION (default bf16; "no" for fp32).
# STEPS picks the steps (default: all three). Logs go to $OUT (default: ./gpu_check).
# Usage: [STEPS="tests train"] [SEEDS="42 43"] [MIXED_PRECISION=no] benchmarks/gpu_check.sh [DATA_DIR]
set -uo pipefail
DATA=${1:-sample_data/chest_xray}
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
BUDGET=${BUDGET:-540} STEPS=${STEPS:-tests extraction train} SEEDS=${SEEDS:-42 43 44 45}
MIXED_PRECISION=${MIXED_PRECISION:-bf16}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - SECONDS < $1 ? BUDGET - SECONDS : $1 )); }  # min(cap, seconds left)
step() { [[ " $STEPS " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm, accelerate, datasets, pyarrow, huggingface_hub as h
print({m.__name__: m.__version__ for m in (torch, torchvision, timm, accelerate, datasets, pyarrow, h)})"

if step tests; then
  # The cache-equivalence and two-process tests alone first (-x --tb=short: a time limit can't swallow the
  # traceback), then the rest of the feature, model and runtime tests.
  features=tests/test_features.py
  alone=(test_cached_and_uncached_paths_train_the_same_head test_two_process_cached_run_evaluates_every_test_image_once)
  for name in "${alone[@]}"; do
    timeout "$(left 100)" python3 -m pytest -x -q --tb=short -p no:cacheprovider "$features::$name" 2>&1 \
      | tee "$OUT/pytest_$name.log" | tail -40
  done
  timeout "$(left 120)" python3 -m pytest -q --tb=short -p no:cacheprovider "$features" tests/test_model.py \
    tests/test_runtime.py "${alone[@]/#/--deselect=$features::}" 2>&1 \
    | tee "$OUT/pytest_rest.log" | tail -40
fi

if step extraction; then
  timeout "$(left 90)" python3 benchmarks/extraction_speed.py --data_dir "$DATA" --repeat 2 --num_workers 14 2>&1 \
    | tee "$OUT/extraction.log" | grep -v "it/s\]"
fi

if step train; then
  for seed in $SEEDS; do  # a pair takes 150-190 s on an H100; start one only if 240 s are left
    (( BUDGET - SECONDS >= 240 )) || break
    timeout 240 python3 benchmarks/train_speed.py --data_dir "$DATA" --train_subset 0 --epochs 20 \
      --seed "$seed" --num_workers 14 --mixed_precision "$MIXED_PRECISION" 2>&1 | tee "$OUT/train_speed_seed$seed.log"
  done
fi
echo "gpu_check finished in ${SECONDS}s"
