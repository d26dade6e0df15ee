#!/usr/bin/env bash
# Runs a queue of cross-validated study runs one after another in one background process:
# each item FLAGFILE:FOLD trains `--flagfile=FLAGFILE --fold=FOLD` in its own run directory
# runs/real_music_study/<flagfile name>-fold<FOLD>/ (log: runs/real_music_study/logs/NAME.log).
# Two queues share the 2 cores (one process each). Rerun the same command to resume: finished
# runs (a result.json in the flagfile's --results_dir) are skipped, an interrupted one continues
# from its checkpoint; packs carried from another machine (tools/carry_runs.py --action=save,
# under benchmarks/results/real_music/unfinished/) are restored first.
# Environment: THREADS (TF intra-op threads, default 1), NICE (default 0), PYTHON.
#   bash tools/run_study_queue.sh vgg configs/real_music_repeat_scratch.flags:0 configs/real_music_axes.flags:0
#   bash tools/run_study_queue.sh musicnn configs/real_music_repeat_musicnn.flags:2
# Where a run stands: python -m tftag.main --flagfile=FLAGFILE --mode=status \
#   --run_dir=runs/real_music_study/<flagfile name>-fold<FOLD>
# Stop it (each run checkpoints at its exact step): kill -TERM -- -<the pid it prints>; then
# python -m tools.carry_runs --action=save and commit benchmarks/results/real_music/unfinished/.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ $# -ge 2 ] || { echo "usage: $0 NAME FLAGFILE:FOLD [FLAGFILE:FOLD ...]" >&2; exit 2; }
name=$1; shift
for item in "$@"; do
  flagfile=${item%:*}; fold=${item##*:}
  [ -f "$flagfile" ] || { echo "$item: no flagfile $flagfile" >&2; exit 2; }
  [[ "$fold" =~ ^[0-9]+$ ]] || { echo "$item: the fold must be a number (FLAGFILE:FOLD)" >&2; exit 2; }
done
mkdir -p runs/real_music_study/logs
log=runs/real_music_study/logs/$name.log
"$python" -m tools.carry_runs --action=restore
# setsid: its own session and (kernel autogroup scheduling) its own CPU group, whose nice is set
# too, so NICE ranks it against other sessions and not only inside its group.
TFTAG_NUM_THREADS=${THREADS:-1} TF_NUM_INTRAOP_THREADS=${THREADS:-1} TF_NUM_INTEROP_THREADS=1 setsid nohup \
  bash -c '
    echo "$1" >/proc/self/autogroup 2>/dev/null
    python=$2; shift 2
    for item in "$@"; do
      flagfile=${item%:*}; fold=${item##*:}
      run_dir=runs/real_music_study/$(basename "$flagfile" .flags)-fold$fold
      echo "== $(date -u +%FT%TZ) $flagfile fold $fold -> $run_dir"
      nice -n "${NICE:-0}" "$python" -m tftag.main --flagfile="$flagfile" --fold="$fold" \
        --run_dir="$run_dir" || { rc=$?; echo "== exit $rc"; [ $rc -eq 143 ] && exit $rc; }
    done
    echo "== $(date -u +%FT%TZ) queue done"' _ "${NICE:-0}" "$python" "$@" >>"$log" 2>&1 &
echo "queue $name: pid $!, log $log"
