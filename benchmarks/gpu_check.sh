#!/usr/bin/env bash
# The short GPU check behind benchmarks/RESULTS.md's GPU section, within BUDGET seconds (default 540):
# 1. the feature, model and runtime tests on the GPU (failures summarised as they happen: -x keeps the
#    traceback even if the step's time limit would stop pytest before its summary);
# 2. extraction throughput over DATA_DIR/train: fp32 vs bf16, NCHW vs channels_last;
# 3. naive vs cached training (train_speed.py: all of train/, 20 epochs, default recipe, bf16) at seed 42;
# 4. the training comparison at more seeds, while the budget lasts.
# Logs go to $OUT (default: ./gpu_check).   Usage: benchmarks/gpu_check.sh [DATA_DIR]
set -uo pipefail
DATA=${1:-sample_data/chest_xray}
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
BUDGET=${BUDGET:-540}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - SECONDS < $1 ? BUDGET - SECONDS : $1 )); }  # min(cap, seconds left)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm, accelerate, datasets, pyarrow, huggingface_hub as h
print({m.__name__: m.__version__ for m in (torch, torchvision, timm, accelerate, datasets, pyarrow, h)})"

timeout "$(left 150)" python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/test_features.py \
  tests/test_model.py tests/test_runtime.py 2>&1 | tee "$OUT/pytest.log" | tail -30

timeout "$(left 90)" python3 benchmarks/extraction_speed.py --data_dir "$DATA" --repeat 2 --num_workers 14 2>&1 \
  | tee "$OUT/extraction.log" | grep -v "it/s\]"

train_pair() {
  timeout "$(left 200)" python3 benchmarks/train_speed.py --data_dir "$DATA" --train_subset 0 --epochs 20 \
    --seed "$1" --num_workers 14 --mixed_precision bf16 2>&1 | tee "$OUT/train_speed_seed$1.log"
}
train_pair 42

for seed in 43 44 45; do
  (( BUDGET - SECONDS > 60 )) && train_pair "$seed"
done
echo "gpu_check finished in ${SECONDS}s"
