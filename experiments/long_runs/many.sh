#!/usr/bin/env bash
# Continue several long runs at once, one core each, for a fixed time; then pack their newest
# states (and finished runs' files) into a few archives, for a machine with many cores that is
# lent for a short while (e.g. the device machine of the tool library, whose $OUT takes at most
# 8 files of 16 MiB):
#
#   experiments/long_runs/many.sh SECONDS PACK_DIR NAME [NAME ...]
#
# (RUNS_YAML=FILE: names from another list than runs.yaml.)
# Each NAME (a run of runs.yaml) runs `run.py train NAME` in runs/NAME, stopped by SIGTERM after
# SECONDS (it saves its state). Then PACK_DIR/runs-K.tar.gz each hold the runs/NAME folders of
# up to 3 runs: the newest training state, or the finished run's checkpoint, final and average
# meta-parameters and validation.json, and the log. Back on this machine:
#
#   for f in PACK_DIR/runs-*.tar.gz; do tar xzf "$f"; done
#   python experiments/long_runs/run.py collect NAME      # for each NAME
#
# A state resumes bit for bit only on the same kind of machine; on another it continues the same
# run with other rounding, which the collected README should say.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 SECONDS PACK_DIR NAME [NAME ...]" >&2
  exit 2
fi
secs=$1; pack=$2; shift 2
case $secs in ''|*[!0-9]*) echo "$0: SECONDS must be a positive integer, got '$secs'" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
list=${RUNS_YAML:-$here/runs.yaml}  # another list of runs (the tests use one)
mkdir -p runs "$pack"
for name in "$@"; do  # refuse an unknown name before anything starts
  python - "$list" "$name" <<'PY'
import sys, yaml
runs = yaml.safe_load(open(sys.argv[1]))
if sys.argv[2] not in runs:
    sys.exit(f"many.sh: {sys.argv[2]} is not a run of runs.yaml")
PY
done
names=("$@")
pids=()
for name in "${names[@]}"; do
  OMP_NUM_THREADS=1 timeout -s TERM "$secs" python "$here/run.py" train "$name" --runs "$list" > "runs/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  # 0: finished; 124: stopped by the time limit, its state saved; anything else is a failure
  wait "${pids[$i]}" || { rc=$?; [ "$rc" -eq 124 ] || { echo "$0: ${names[$i]} exited with $rc" >&2; status=1; }; }
done
for ((k = 0; k < ${#names[@]}; k += 3)); do
  files=()
  for name in "${names[@]:k:3}"; do
    files+=("runs/$name.log")
    if [ -f "runs/$name/checkpoint.safetensors" ]; then  # finished: its files, not its final state
      for f in checkpoint.safetensors final.safetensors average.safetensors validation.json; do
        if [ -f "runs/$name/$f" ]; then files+=("runs/$name/$f"); fi
      done
    else
      newest=$(ls runs/"$name"/training_state/state-*.safetensors 2>/dev/null | tail -1 || true)
      if [ -n "$newest" ]; then files+=("$newest"); fi
    fi
  done
  tar czf "$pack/runs-$((k / 3)).tar.gz" "${files[@]}"
done
ls -l "$pack"
exit $status
