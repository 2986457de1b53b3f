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
# SECONDS (it saves its state). Then PACK_DIR/runs-K.tar.gz hold, for each run, its newest
# training state, or the finished run's checkpoint, final and average meta-parameters and
# validation.json, and its log; runs are grouped into archives of at most PACK_MIB MiB (default 15;
# a run larger than that gets an archive of its own). Back on this machine:
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
  run=runs/${names[$i]}
  if [ ! -f "$run/checkpoint.safetensors" ] && ! compgen -G "$run/training_state/state-*.safetensors" > /dev/null; then
    # the time limit came before the run's first saved state (e.g. while Python was starting)
    echo "$0: ${names[$i]} was stopped before it saved any training state; give it more than $secs s" >&2
    status=1
  fi
done
# pack: each run's files whole, runs grouped greedily into archives of at most PACK_MIB (default 15)
PACK_MIB=${PACK_MIB:-15} python - "$pack" "${names[@]}" <<'PY'
import os, sys, tarfile
from pathlib import Path
pack, names = Path(sys.argv[1]), sys.argv[2:]
limit = float(os.environ["PACK_MIB"]) * 2**20
groups, size = [[]], 0
for name in names:
    run = Path("runs", name)
    if (run / "checkpoint.safetensors").is_file():  # finished: its files, not its final state
        files = [run / f for f in ("checkpoint.safetensors", "final.safetensors", "average.safetensors",
                                   "validation.json") if (run / f).is_file()]
    else:
        files = sorted((run / "training_state").glob("state-*.safetensors"))[-1:]  # none: only its log
    files.append(Path("runs", f"{name}.log"))
    n = sum(f.stat().st_size for f in files)
    if groups[-1] and size + n > limit:
        groups.append([])
        size = 0
    groups[-1] += files
    size += n
for k, files in enumerate(groups):
    with tarfile.open(pack / f"runs-{k}.tar.gz", "w:gz") as tar:
        for f in files:
            tar.add(str(f))
PY
ls -l "$pack"
exit $status
