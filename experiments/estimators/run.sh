#!/usr/bin/env bash
# The estimator comparison at equal meta-training time (experiments/estimators/README.md): every
# candidate config in this folder, for each meta-seed, meta-trained for SECONDS of wall-clock time
# (validation not counted) in its own one-thread process, all at once (one core each: run it on a
# machine with at least as many cores as processes: 6 configs × 2 meta-seeds = 12 by default).
# All three positional arguments come before any --set.
#
#   experiments/estimators/run.sh OUT [SECONDS=240] [META_SEEDS="0 1"] [--set KEY=VALUE ...]   (--set needs all three before it)
#   python experiments/estimators/curves.py OUT      # the table and the figure
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT_DIR="$1"; SECONDS_EACH="${2:-240}"; SEEDS="${3:-0 1}"; shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$OUT_DIR"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
pids=()
for cfg in "$HERE"/*.yaml; do
  name="$(basename "$cfg" .yaml)"
  for s in $SEEDS; do
    python -m metatele train --config "$cfg" --out "$OUT_DIR/${name}_seed$s" --seed "$s" --device cpu \
      --set max_seconds="$SECONDS_EACH" --wandb disabled --no-progress --save-every 1000000 "$@" \
      > "$OUT_DIR/${name}_seed$s.log" 2>&1 &
    pids+=($!)
  done
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
