#!/usr/bin/env bash
# Commits each finished run of a cross-validated study as it lands, so a lost machine loses only
# unfinished runs: every RESULTS_DIR/<run>/ whose result.json exists and is not committed yet is
# committed on its own (with the folds.json beside it), every INTERVAL seconds (default 120).
#   setsid nohup bash benchmarks/commit_results_loop.sh benchmarks/results/real_music/runs &
set -uo pipefail
cd "$(dirname "$0")/.."
results_dir=${1:-benchmarks/results/real_music/runs}
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
  sleep "${INTERVAL:-120}"
done
