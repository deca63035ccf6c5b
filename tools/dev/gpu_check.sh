#!/usr/bin/env bash
# The GPU figures in one run on one GPU, most valuable first, within BUDGET_S (default 480 s,
# 8 minutes) from the start: a step starts only with at least MIN_STEP_S (default 30) seconds of
# the budget left, and runs at most its own limit or what is left, whichever is less. Every
# benchmark prints its rows as it goes, so a step cut short still leaves the rows it finished.
#   1. smoke: a small input, three configs, bfloat16 AMP; stops everything if it fails;
#   2. multi-scale deformable attention, forward + backward, Deformable DETR's encoder and decoder
#      at 800x1333, batch 2: the Triton kernel (checked against the pure-PyTorch path first), the
#      pure-PyTorch path, the official pure-PyTorch form and, if it imports here (it cannot be
#      downloaded: it must have been built), the official CUDA operator; time and peak memory
#      (tools/dev/benchmark_deform_attn.py); float32, then bfloat16 in step 6;
#   3. training-step peak memory at batch 1, Deformable DETR-R50 against DETR-R50 (the step table);
#   4. training throughput and step memory at batch 2, 4 and 8 against Hugging Face's DETR /
#      Deformable DETR with the same weights and inputs, float32 (benchmark_detection.py --peer hf);
#   5. the same in bfloat16 autocast, with the T2T and DeiT configs (ours alone: HF's detectors take
#      timm ResNets only);
#   6. deformable attention in bfloat16;
#   7. backbone inference, bfloat16 autocast against float32 and against timm / HF;
#   8. the Deformable DETR and DETR step tables at batch 1, float32 and bfloat16 AMP; bfloat16 and
#      float16 logits against float32 (bf16_check.py); the DETR table in float16; the tests that
#      have GPU paths: as far as the budget goes.
# The summary (OUT/summary.md) has a row per step, then the figures of every benchmark step (its log).
#   tools/dev/gpu_check.sh [OUT_DIR]        (default work_dirs/gpu_check)
#   DRY_RUN=1 tools/dev/gpu_check.sh        prints the commands without running them (any machine)
#   FMNIST=DIR                              Fashion-MNIST's folder, if not the Debian package's
set -u
cd "$(dirname "$0")/../.."  # the repository root: the commands below name paths from there
OUT=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python}
BUDGET_S=${BUDGET_S:-480}
MIN_STEP_S=${MIN_STEP_S:-30}
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.md"
if [ -z "${DRY_RUN:-}" ]; then
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to $PY (torch missing or torch.cuda.is_available() False; PYTHON=... picks the interpreter); run it on a GPU machine, or DRY_RUN=1 to list the steps" >&2
    exit 2
  fi
  mkdir -p "$OUT"
  { nvidia-smi -L; "$PY" -c 'import torch; print("torch", torch.__version__)'
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1; } > "$OUT/machine.txt" 2>&1
  { echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ)"; echo; sed 's/^/    /' "$OUT/machine.txt"; echo
    echo "| step | result | seconds |"; echo "|---|---|---|"; } > "$SUMMARY"
fi
FIGURES=()  # the steps whose logs go into the summary
step() {  # step NAME LIMIT_S COMMAND...: runs it, logs to OUT/NAME.log, one summary row
  local name=$1 limit=$2; shift 2
  if [ -n "${DRY_RUN:-}" ]; then echo "$name: timeout $limit $*"; return 0; fi
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt "$MIN_STEP_S" ]; then
    echo "| $name | skipped: ${left} s of the ${BUDGET_S} s budget left | 0 |" >> "$SUMMARY"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local result=ok
  [ $rc -eq 124 ] && result="cut at ${limit} s (rows so far in $name.log)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && result="FAILED rc=$rc (see $name.log)"
  echo "| $name | $result | $((SECONDS - start)) |" >> "$SUMMARY"
  return $rc
}
figures() { FIGURES+=("$@"); }
DETR=$(printf 'configs/detr_%s.py,' r50 t2t deit vit deepvit cait cpvt ceit cvt); DETR=${DETR%,}
DEFORM=configs/deformable_detr_r50.py,configs/deformable_detr_t2t.py,configs/deformable_detr_deit.py
TABLE=("$PY" tools/benchmark_detection.py --step-table --device cuda --variants shipped)
MSDA=("$PY" tools/dev/benchmark_deform_attn.py --device cuda --modes fwd+bwd --batch 2 --repeat 10)
PEER=("$PY" tools/benchmark_detection.py --peer hf --train-only --device cuda --size 800 1333 --batch-size 2,4,8 --steps 3)
R50S=configs/detr_r50.py,configs/deformable_detr_r50.py

step smoke 90 "${TABLE[@]}" --configs configs/detr_r50.py,configs/detr_t2t.py,configs/deformable_detr_deit.py \
  --size 320 480 --steps 2 --amp bfloat16 || { [ -n "${DRY_RUN:-}" ] || cat "$SUMMARY" "$OUT/smoke.log"; exit 3; }
step msda-fp32 120 "${MSDA[@]}"; figures msda-fp32
step memory-b1 75 "${TABLE[@]}" --configs "$R50S" --size 800 1333 --steps 5; figures memory-b1
step peer-fp32 150 "${PEER[@]}" --configs "$R50S"; figures peer-fp32
step peer-bf16 180 "${PEER[@]}" --amp bfloat16 \
  --configs "$R50S,configs/detr_t2t.py,configs/detr_deit.py,configs/deformable_detr_t2t.py"; figures peer-bf16
step msda-bf16 60 "${MSDA[@]}" --dtype bfloat16; figures msda-bf16
step backbones-bf16 100 "$PY" tools/benchmark.py --device cuda --dtype bfloat16 --vs-float32 --no-linear-mix --batch-size 64 \
  --rounds 5 --iters 10 --no-memory --json "$OUT/backbones.json"; figures backbones-bf16
step deformable-fp32 90 "${TABLE[@]}" --configs "$DEFORM" --size 800 1333 --steps 10; figures deformable-fp32
step deformable-bf16 90 "${TABLE[@]}" --configs "$DEFORM" --size 800 1333 --steps 10 --amp bfloat16; figures deformable-bf16
step detr-fp32 220 "${TABLE[@]}" --configs "$DETR" --size 800 1333 --steps 10; figures detr-fp32
step detr-bf16 220 "${TABLE[@]}" --configs "$DETR" --size 800 1333 --steps 10 --amp bfloat16; figures detr-bf16
step logits-bf16 40 "$PY" tools/dev/bf16_check.py --device cuda --images 64 --root "${FMNIST:-/usr/share/datasets/fashion-mnist}"; figures logits-bf16
step logits-fp16 40 "$PY" tools/dev/bf16_check.py --device cuda --images 64 --dtype float16 --root "${FMNIST:-/usr/share/datasets/fashion-mnist}"; figures logits-fp16
step detr-fp16 220 "${TABLE[@]}" --configs "$DETR" --size 800 1333 --steps 10 --amp float16; figures detr-fp16
step tests-gpu-paths 60 "$PY" -m pytest -q -x tests/zoo/test_bfloat16.py -m "not slow"
[ -n "${DRY_RUN:-}" ] && exit 0
for name in "${FIGURES[@]}"; do
  [ -s "$OUT/$name.log" ] || continue
  { echo; echo "## $name"; echo; echo '```text'; grep -v ' - mmengine - ' "$OUT/$name.log"; echo '```'; } >> "$SUMMARY"
done
cat "$SUMMARY"
