#!/bin/bash
# The bundle on one GPU, every stage through its documented commands, in one time-boxed run:
# training (stopped after TRAIN_S seconds; model.pt is the best validation epoch so far), evaluation,
# ckpt_export to TorchScript (run once on the GPU), inference on 16 test images, and benchmarks/bench_gpu.py.
#
# Usage (repository root, the requirements installed):
#     OUT=/tmp/gpu_check benchmarks/gpu_check.sh /data/zhanglab
# Environment: OUT (results folder, required), TRAIN_S (training seconds, 240), TOTAL_S (the whole run, 570),
# BENCH_ARGS (bench_gpu.py's arguments, "--sizes 128 --channels-last off"), WORKERS (--num_workers, 6),
# EXTRA (more config overrides for every stage, e.g. "--img_size 64").
# Writes under OUT: log.txt (stages, environment, return codes, the bench table), train.log, eval.log,
# export_infer.log, and eval/ (metrics.json, scores.csv, plots) and anomaly_scores.csv; the checkpoints stay in
# OUT/work. Every stage is bounded by what is left of TOTAL_S, so the run ends in time even if a stage hangs.
set -u
DATASET=${1:?usage: OUT=dir benchmarks/gpu_check.sh DATASET_DIR}
: "${OUT:?set OUT to the results folder}"
TRAIN_S=${TRAIN_S:-240}
BENCH_ARGS=${BENCH_ARGS:---sizes 128 --channels-last off}
WORKERS=${WORKERS:-6}
EXTRA=${EXTRA:-}
export PYTHONUNBUFFERED=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
W=$OUT/work
LOG=$OUT/log.txt
DEADLINE=$((SECONDS + ${TOTAL_S:-570}))
left() { local r=$((DEADLINE - SECONDS - 5)); [ "$r" -lt 2 ] && r=1; echo $((r < $1 ? r : $1)); }
stage() { echo "=== $(date +%T) $*" | tee -a "$LOG"; }

stage environment
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, monai, ignite; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__, 'ignite', ignite.__version__)"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "flags: $(grep -m1 -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
} >>"$LOG" 2>&1
cd "$ROOT/bundle" || exit 1
M=$W/models

stage "training, $TRAIN_S s"
timeout -s INT -k 20 "$(left "$TRAIN_S")" python -m monai.bundle run training --config_file configs/train.json \
  --logging_file configs/logging.conf --dataset_dir "$DATASET" --num_workers "$WORKERS" --ckpt_dir "$M" \
  --output_dir "$W/runs" $EXTRA >"$OUT/train.log" 2>&1
echo "training rc $? (124: stopped at its time, as planned)" | tee -a "$LOG"
grep "Epoch\[[0-9]*\] Metrics\|best value" "$OUT/train.log" | tail -2 >>"$LOG"

stage evaluation
timeout "$(left 120)" python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']" \
  --logging_file configs/logging.conf --dataset_dir "$DATASET" --ckpt_dir "$M" --eval_output_dir "$OUT/eval" \
  $EXTRA >"$OUT/eval.log" 2>&1
echo "evaluation rc $?" | tee -a "$LOG"

stage "export and inference"
mkdir -p "$W/in"
python - "$DATASET" "$W/in" <<'PY' >>"$LOG" 2>&1
import shutil, sys
sys.path.insert(0, ".")
from scripts.data.datalist import find_datalist
items = find_datalist(sys.argv[1])["test"][:16]
for item in items:
    shutil.copy(item["image"], sys.argv[2])
print(f"{len(items)} test images to infer")
PY
SIZE=$(python -c "import sys; sys.path.insert(0, '.'); from scripts.checkpoint import trained_settings; print(trained_settings('$M/model.pt', 128, None)['img_size'])" 2>>"$LOG")
{
  timeout "$(left 120)" python -m monai.bundle ckpt_export network_def --filepath "$W/model.ts" --ckpt_file "$M/model.pt" \
    --ckpt_path "$M/model.pt" --meta_file configs/metadata.json --config_file configs/inference.json --use_trace true \
    --input_shape "[1, 1, $SIZE, $SIZE]" $EXTRA
  echo "export rc $?"
  timeout "$(left 120)" python -m monai.bundle run --config_file configs/inference.json --logging_file configs/logging.conf \
    --input_dir "$W/in" --output_dir "$W/out" --ckpt_dir "$M" $EXTRA
  echo "inference rc $?"
  timeout "$(left 60)" python - "$W/model.ts" "$SIZE" <<'PY'
import sys, torch
device = "cuda" if torch.cuda.is_available() else "cpu"
module = torch.jit.load(sys.argv[1], map_location=device)
anomaly_map, score = module(torch.rand(2, 1, int(sys.argv[2]), int(sys.argv[2]), device=device))
print(f"TorchScript on {anomaly_map.device}: map {tuple(anomaly_map.shape)}, scores {score.tolist()}")
PY
} >"$OUT/export_infer.log" 2>&1
grep "rc \|TorchScript on" "$OUT/export_infer.log" | tee -a "$LOG"
cp "$W/out/anomaly_scores.csv" "$OUT/" 2>>"$LOG"

cd "$ROOT" || exit 1
stage "bench_gpu.py $BENCH_ARGS"
timeout "$(left 300)" python benchmarks/bench_gpu.py $BENCH_ARGS --json "$OUT/bench_gpu.json" >>"$LOG" 2>&1
echo "bench rc $?" | tee -a "$LOG"
stage done
