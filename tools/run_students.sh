#!/usr/bin/env bash
# Trains and ships the final students of configs/real_music_students.flags (issue 24), one
# resolution after another, in the background: runs/students/vgg-<n_mels>x<hop>/ (log beside
# it), then --mode=ship into tftag/models/weights/tftag_vgg_<n_mels>x<hop>/. Rerun the same
# command to resume: a run continues from its last epoch, a shipped model is left alone.
# Environment: THREADS (TF intra-op threads, default 1), NICE (default 0), PYTHON, OVERWRITE=1
# (train on and re-ship a model that is shipped already, e.g. after the recipe changed: its run
# continues from its checkpoint, --mode=ship --overwrite replaces the package's folder).
#   bash tools/run_students.sh 96x1 48x2 32x4 8x4 8x10
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ $# -gt 0 ] || { echo "usage: $0 N_MELSxHOP ... (e.g. 96x1 32x4)" >&2; exit 2; }
mkdir -p runs/students
(
  for shape in "$@"; do
    n_mels=${shape%x*} hop=${shape#*x}
    run=runs/students/vgg-$shape
    [ -e "tftag/models/weights/tftag_vgg_$shape/card.json" ] && [ -z "${OVERWRITE:-}" ] && continue
    TFTAG_NUM_THREADS=${THREADS:-1} TF_NUM_INTRAOP_THREADS=${THREADS:-1} TF_NUM_INTEROP_THREADS=1 nice -n "${NICE:-0}" \
      "$python" -m tftag.main --flagfile=configs/real_music_students.flags \
      --resolutions="sr16000-mel$n_mels-hop$hop-log" --run_dir="$run" >>"$run.log" 2>&1
    nice -n "${NICE:-0}" "$python" -m tftag.main --mode=ship --run_dir="$run" \
      ${OVERWRITE:+--overwrite} >>"$run.log" 2>&1
    echo "shipped tftag_vgg_$shape ($run.log)"
  done
) >>runs/students/students.log 2>&1 &
echo "training ${*}: pid $!, log runs/students/students.log"
