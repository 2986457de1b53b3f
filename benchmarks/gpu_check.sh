#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md), under 5 minutes on one CUDA device:
#   1. the CUDA tests (pytest -m cuda: tests/test_cuda.py);
#   2. `metatele throughput` for both architectures at B = 256 ... 4096;
#   3. 80 s of meta-training on the GPU, a checkpoint, and that checkpoint loaded on the CPU;
#   4. the seconds per meta-step of the generalist (ship/generalist_update_tele) on the GPU, to set
#      against the CPU's (experiments/long_runs/README.md).
# Every figure goes to <out>/gpu_check.md (and the command outputs beside it).
#
#   benchmarks/gpu_check.sh [out]     # out: default $OUT, else ./gpu_check_out
#   DRY_RUN=1 benchmarks/gpu_check.sh /tmp/dry   # the same steps on the CPU with tiny sizes (tests the script)
#
# Each stage runs under its own time limit, and a failing stage is recorded and does not stop
# the later ones; the exit status is 1 if any stage failed.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
REPORT="$OUT_DIR/gpu_check.md"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
cd "$ROOT"

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  DEVICE=cpu; SIZES=(2 4); TRAIN_SECONDS=5; GENERALIST_SECONDS=5; TRAIN_BATCH=2; UNROLLS=1; TEST_LIMIT=120; BENCH_LIMIT=120
else
  # the stages' limits add up to 300 s (a cold CUDA start included); a normal run takes about 200 s
  DEVICE=cuda; SIZES=(256 512 1024 2048 4096); TRAIN_SECONDS=80; GENERALIST_SECONDS=25; TRAIN_BATCH=256; UNROLLS=3; TEST_LIMIT=40; BENCH_LIMIT=35
fi
FAILED=()

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run, keep its output, record the status
  local name="$1" limit="$2"; shift 2
  local log="$OUT_DIR/$name.log" t0=$SECONDS
  echo "== $name: $*" | tee -a "$REPORT"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  grep -v '^USDT' "$log" | tail -n 40 | sed 's/^/    /' >> "$REPORT"
  echo "   ($name: exit $rc, $((SECONDS - t0)) s)" | tee -a "$REPORT"
  [[ $rc == 0 ]] || FAILED+=("$name")
}

{
  echo "# metatele GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "device $DEVICE${DRY_RUN:+ (DRY_RUN=$DRY_RUN)}"
  python -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
             torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo
} > "$REPORT" 2>&1

stage cuda_tests "$TEST_LIMIT" python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
stage bench_paper "$BENCH_LIMIT" python -m metatele throughput --device "$DEVICE" --arch paper \
  --batch-sizes "${SIZES[@]}" --unrolls "$UNROLLS"
stage bench_coordinatewise_update_tele "$BENCH_LIMIT" python -m metatele throughput --device "$DEVICE" \
  --arch coordinatewise --variant update+tele --second-order --distribution gaussian \
  --batch-sizes "${SIZES[@]}" --unrolls "$UNROLLS"
stage train "$((TRAIN_SECONDS + 25))" python benchmarks/gpu_check.py train --device "$DEVICE" \
  --seconds "$TRAIN_SECONDS" --batch-size "$TRAIN_BATCH" --out "$OUT_DIR/train"
stage load_on_cpu 25 env CUDA_VISIBLE_DEVICES= python benchmarks/gpu_check.py load "$OUT_DIR/train/checkpoint.safetensors"
stage train_generalist "$((GENERALIST_SECONDS + 35))" python -m metatele train --config ship/generalist_update_tele \
  --device "$DEVICE" --out "$OUT_DIR/generalist" --set max_seconds="$GENERALIST_SECONDS" --set validation.every=0 \
  --wandb disabled --no-progress

if (( ${#FAILED[@]} )); then
  echo "FAILED stages: ${FAILED[*]}" | tee -a "$REPORT"
  exit 1
fi
echo "all stages passed; figures in $REPORT" | tee -a "$REPORT"
