#!/usr/bin/env bash
# The README's GPU figures in one run on one GPU, most valuable first, within a time budget:
#   1. a smoke run (small input, three configs, bfloat16 AMP) that stops everything if it fails;
#   2. the detection step table at 800x1333, batch 1, every family's DETR config against DETR-R50,
#      float32 and bfloat16 AMP (benchmark_detection.py --step-table --device cuda [--amp]);
#   3. backbone inference, bfloat16 autocast against float32 and against timm / HF
#      (benchmark.py --device cuda --dtype bfloat16 --vs-float32);
#   4. the Deformable DETR step table (R50, T2T, DeiT), float32 and bfloat16 AMP;
#   5. bfloat16 and float16 logits against float32 on Fashion-MNIST images (bf16_check.py);
#   6. the DETR step table in float16 AMP (mmengine's AmpOptimWrapper, dynamic loss scaling);
#   7. the tests that have GPU paths.
# About 14 minutes on an H200 (one step-table point: about 16 s). A step that would not finish
# inside BUDGET_S (default 1200) seconds from the start is skipped.
#   tools/dev/gpu_check.sh [OUT_DIR]        (default work_dirs/gpu_check)
#   DRY_RUN=1 tools/dev/gpu_check.sh        prints the commands without running them (any machine)
#   FMNIST=DIR                           Fashion-MNIST's folder, if not the Debian package's
set -u
cd "$(dirname "$0")/.."
OUT=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python}
BUDGET_S=${BUDGET_S:-1200}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
if [ -z "${DRY_RUN:-}" ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to $PY (torch missing or torch.cuda.is_available() False; PYTHON=... picks the interpreter); run it on a GPU machine, or DRY_RUN=1 to list the steps" >&2
  exit 2
fi
[ -n "${DRY_RUN:-}" ] || { nvidia-smi -L; "$PY" -c 'import torch; print("torch", torch.__version__)'; } > "$OUT/machine.txt" 2>&1
echo "| step | result | seconds |" > "$SUMMARY"
echo "|---|---|---|" >> "$SUMMARY"
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs to OUT/NAME.log, one summary row
  local name=$1 limit=$2; shift 2
  if [ -n "${DRY_RUN:-}" ]; then echo "$name: timeout $limit $*"; return 0; fi
  if [ $((SECONDS + limit)) -gt "$BUDGET_S" ]; then
    echo "| $name | skipped: ${limit} s would pass the ${BUDGET_S} s budget | 0 |" >> "$SUMMARY"; return 0
  fi
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local result=ok; [ $rc -ne 0 ] && result="FAILED rc=$rc (see $name.log)"
  echo "| $name | $result | $((SECONDS - start)) |" >> "$SUMMARY"
  return $rc
}
DETR=$(printf 'configs/detr_%s.py,' r50 t2t deit vit deepvit cait cpvt ceit cvt); DETR=${DETR%,}
DEFORM=configs/deformable_detr_r50.py,configs/deformable_detr_t2t.py,configs/deformable_detr_deit.py
TABLE=("$PY" tools/benchmark_detection.py --step-table --device cuda --variants shipped)

step smoke 90 "${TABLE[@]}" --configs configs/detr_r50.py,configs/detr_t2t.py,configs/deformable_detr_deit.py \
  --size 320 480 --steps 2 --amp bfloat16 || { cat "$SUMMARY" "$OUT/smoke.log"; exit 3; }
step detr-fp32 220 "${TABLE[@]}" --configs "$DETR" --size 800 1333 --steps 10
step detr-bf16 220 "${TABLE[@]}" --configs "$DETR" --size 800 1333 --steps 10 --amp bfloat16
step backbones-bf16 100 "$PY" tools/benchmark.py --device cuda --dtype bfloat16 --vs-float32 --batch-size 64 \
  --rounds 5 --iters 10 --no-memory --json "$OUT/backbones.json"
step deformable-fp32 90 "${TABLE[@]}" --configs "$DEFORM" --size 800 1333 --steps 10
step deformable-bf16 90 "${TABLE[@]}" --configs "$DEFORM" --size 800 1333 --steps 10 --amp bfloat16
step logits-bf16 40 "$PY" tools/dev/bf16_check.py --device cuda --images 64 --root "${FMNIST:-/usr/share/datasets/fashion-mnist}"
step logits-fp16 40 "$PY" tools/dev/bf16_check.py --device cuda --images 64 --dtype float16 --root "${FMNIST:-/usr/share/datasets/fashion-mnist}"
step detr-fp16 220 "${TABLE[@]}" --configs "$DETR" --size 800 1333 --steps 10 --amp float16
step tests-gpu-paths 60 "$PY" -m pytest -q -x tests/zoo/test_bfloat16.py -m "not slow"
[ -n "${DRY_RUN:-}" ] || cat "$SUMMARY"
