#!/usr/bin/env bash
# The GPU device checks, one prepared run (GPU image: torch + transformers, no vLLM, Ray or DeepSpeed):
#   training throughput/MFU (cluster/gpu_bench_train.py) and the transformers engine's scoring path
#   (cluster/gpu_bench_score.py) on randomly initialized 1B Llama-shaped models in bf16. JSON files go to $OUT.
# Needs the embedded model's tokenizer in .gpu_carry/tokenizer (carried; see README "Measured on a GPU").
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python3 cluster/gpu_bench_score.py --tokenizer .gpu_carry/tokenizer > "$OUT/score_gpu.json" 2> "$OUT/score_gpu.err"
echo "score rc=$?"
python3 cluster/gpu_bench_train.py --steps 20 --warmup 3 --micro-batch 8 --seq-len 2048 > "$OUT/train_gpu.json" 2> "$OUT/train_gpu.err"
echo "train rc=$?"
cat "$OUT/score_gpu.json" "$OUT/train_gpu.json"
tail -3 "$OUT/score_gpu.err" "$OUT/train_gpu.err"
