#!/usr/bin/env bash
# GPU readiness in one run (< 8 min on one modern GPU): the tests with GPU paths, bf16 and fp16
# AMP training steps of every family's DETR and Deformable DETR config at 800x1333, the backbone
# and detector benchmarks in bf16 with their peers; one summary table at the end.
#   tools/gpu_check.sh [OUT_DIR]        (default work_dirs/gpu_check)
#   DRY_RUN=1 tools/gpu_check.sh        prints the commands without running them (any machine)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
if [ -z "${DRY_RUN:-}" ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to $PY (torch missing or torch.cuda.is_available() False; PYTHON=... picks the interpreter); run it on a GPU machine, or DRY_RUN=1 to list the steps" >&2
  exit 2
fi
FAMILIES="r50 vit deit deepvit cait cpvt cvt ceit t2t"
echo "| step | result | seconds |" > "$SUMMARY"
echo "|---|---|---|" >> "$SUMMARY"
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs to OUT/NAME.log, one summary row
  local name=$1 limit=$2; shift 2
  if [ -n "${DRY_RUN:-}" ]; then echo "$name: timeout $limit $*"; return; fi
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local result=ok; [ $rc -ne 0 ] && result="FAILED rc=$rc (see $name.log)"
  echo "| $name | $result | $((SECONDS - start)) |" >> "$SUMMARY"
}
step tests-gpu-paths 120 "$PY" -m pytest -q -x tests/test_bfloat16.py tests/test_compile.py -k "not t2t" -m "not slow"
for f in $FAMILIES; do
  for kind in detr deformable_detr; do
    for dtype in bfloat16 float16; do
      step "amp-$dtype-${kind}_$f" 60 "$PY" tools/amp_step.py "configs/${kind}_$f.py" --size 800 1333 --dtype $dtype --device cuda
    done
  done
done
step benchmark-bf16 90 "$PY" tools/benchmark.py --device cuda --dtype bfloat16 --rounds 3 --no-memory --json "$OUT/benchmark.json"
step benchmark-detection-hf 90 "$PY" tools/benchmark_detection.py --device cuda --peer hf --configs configs/detr_r50.py,configs/deformable_detr_r50.py --size 800 1333 --steps 3
[ -n "${DRY_RUN:-}" ] || { cat "$SUMMARY"; grep -h "x$\|ratio\|img/s" "$OUT"/benchmark*.log >> "$SUMMARY" 2>/dev/null; }
