#!/usr/bin/env bash
# Commits each finished run of a cross-validated study as it lands, so a lost machine loses only
# unfinished runs: every RESULTS_DIR/<run>/ whose result.json exists and is not committed yet is
# committed on its own (with the folds.json beside it), every INTERVAL seconds (default 120).
# Every CARRY_INTERVAL seconds (default 3600; 0 = never) it also packs the unfinished runs
# (tools/carry_runs.py --action=save: checkpoints of runs that have not finished, so the next
# machine continues them) and commits CARRY_DIR (default <results_dir>/../unfinished) if changed.
#   setsid nohup bash tools/commit_results_loop.sh benchmarks/results/real_music/runs &
set -uo pipefail
cd "$(dirname "$0")/.."
results_dir=${1:-benchmarks/results/real_music/runs}
carry_dir=${CARRY_DIR:-$(dirname "$results_dir")/unfinished}
last_carry=$(date +%s)
while true; do
  for result in "$results_dir"/*/result.json; do
    [ -e "$result" ] || continue
    run=$(dirname "$result")
    [ -n "$(git status --porcelain -- "$run")" ] || continue
    paths=("$run")
    [ -e "$results_dir/folds.json" ] && paths+=("$results_dir/folds.json")
    for attempt in 1 2 3 4 5; do  # another git command may hold the index lock for a moment
      git add -- "${paths[@]}" && git commit -q -m "$(basename "$results_dir"): run $(basename "$run") finished" -- "${paths[@]}" && break
      sleep 5
    done
  done
  if [ "${CARRY_INTERVAL:-3600}" -gt 0 ] && [ $(( $(date +%s) - last_carry )) -ge "${CARRY_INTERVAL:-3600}" ]; then
    last_carry=$(date +%s)
    ${PYTHON:-.venv/bin/python} -m tools.carry_runs --action=save --results_dir="$results_dir" \
      --carry_dir="$carry_dir" ${CARRY_FLAGS:-} >/dev/null \
      && git add -A -- "$carry_dir" 2>/dev/null \
      && { git diff --cached --quiet -- "$carry_dir" \
           || git commit -q -m "$(basename "$(dirname "$results_dir")"): unfinished runs carried (checkpoints)" -- "$carry_dir"; }
  fi
  sleep "${INTERVAL:-120}"
done
