#!/usr/bin/env bash
# Runs the converged real-music study (configs/real_music_study.flags) in the background: one
# process per fold (default folds 0 1 2), each in runs/real_music_study/fold<k>/ with its log in
# runs/real_music_study/logs/. Rerun the same command to resume: finished runs (a result.json in
# benchmarks/results/real_music/runs/) are skipped, an interrupted one continues from its last
# epoch. Environment: THREADS (TF intra-op threads per process, default 1: three processes share
# 2 cores), NICE (default 0), PYTHON (default .venv/bin/python), STUDY_FLAGS (more flags, e.g.
# the order of the models: a session that may end before a long MUSICNN run finishes can run
# the short VGG-CNN runs first; the runs and their results are the same in any order).
# Unfinished runs carried from another machine (tools/carry_runs.py --action=save, committed
# under benchmarks/results/real_music/unfinished/) are restored first and continue where they
# stopped.
#   bash tools/run_real_music_study.sh        # all folds
#   bash tools/run_real_music_study.sh 1 2    # some folds
#   STUDY_FLAGS=--models=vgg,musicnn bash tools/run_real_music_study.sh 0 1
# Where it stands (every run done / started / not started, passes and hours left):
#   .venv/bin/python -m tftag.main --flagfile=configs/real_music_study.flags --mode=status
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
folds=("$@")
[ ${#folds[@]} -eq 0 ] && folds=(0 1 2)
mkdir -p runs/real_music_study/logs
"$python" -m tools.carry_runs --action=restore
for k in "${folds[@]}"; do
  log=runs/real_music_study/logs/fold$k.log
  # setsid gives the process its own session and, under the kernel's autogroup scheduling
  # (/proc/sys/kernel/sched_autogroup_enabled), its own scheduling group: CPU time is shared
  # between groups first, so `nice` alone only ranks a process inside its group and NICE would
  # change nothing beside other sessions. The group's nice (/proc/self/autogroup) is set too.
  TFTAG_NUM_THREADS=${THREADS:-1} TF_NUM_INTRAOP_THREADS=${THREADS:-1} TF_NUM_INTEROP_THREADS=1 setsid nohup \
    bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"' "${NICE:-0}" \
    "$python" -m tftag.main --flagfile=configs/real_music_study.flags --fold="$k" \
    --run_dir="runs/real_music_study/fold$k" ${STUDY_FLAGS:-} >>"$log" 2>&1 &
  echo "fold $k: pid $!, log $log"
done
