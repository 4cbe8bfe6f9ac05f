#!/usr/bin/env bash
# The short GPU check behind benchmarks/RESULTS.md's GPU section: extraction throughput (fp32 vs bf16,
# NCHW vs channels_last), then cached and naive training runs with --mixed_precision bf16 on the bundled
# sample, then the feature, model and runtime tests on the GPU. Logs go to $OUT (default: ./gpu_check).
set -uo pipefail
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/extraction_speed.py --repeat 20 --num_workers 12 2>&1 | tee "$OUT/extraction.log" | grep -v "it/s\]"
for views in 3 0; do
  SECONDS=0
  python3 -m trainer --data_dir sample_data/chest_xray --no_pretrained --mixed_precision bf16 \
    --num_train_epochs 3 --num_workers 8 --cache_views $views --output_dir "/tmp/gpu_run_$views" \
    > "$OUT/train_cache_views_$views.log" 2>&1
  echo "cache_views=$views: exit $?, ${SECONDS}s"; grep -E "^test_(accuracy|roc_auc) |Error" "$OUT/train_cache_views_$views.log" | tail -4
done
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_features.py tests/test_model.py tests/test_runtime.py 2>&1 \
  | tee "$OUT/pytest.log" | tail -15
