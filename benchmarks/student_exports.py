r"""Every shipped student exported and checked: SavedModel (reloaded, every signature against the
Keras model), the Essentia graph, and TFLite at float16, dynamic and int8, each evaluated
against the Keras model on real-music clips (issue 24, "every shipped model exports").

    .venv/bin/python -m benchmarks.student_exports --dataset_dir=runs/real_music/dataset

Each student goes through ``tftag.delivery.export.export_pretrained`` (what ``--mode=export
--pretrained=NAME --tflite=float16,dynamic,int8 --dataset_dir=DIR`` runs) into a temporary
export root; a failed reload or conversion stops the benchmark with that student's error. Writes
``--out`` (default ``benchmarks/results/tagging/<date>-student-exports.json``) and prints one
JSON line: per student the SavedModel check, the Essentia graph, and per precision the file's
bytes, max |Δp| against the Keras model, latency per clip and whether int8 is integer-only.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", "runs/real_music/dataset",
                    "A dataset whose clips the TFLite files are checked on and int8 calibrates "
                    "on (the study's extraction: every student's resolution is in it).")
flags.DEFINE_list("students", ["all"], "Shipped students to export (all = every one of "
                  "tftag.models.pretrained.students()).")
flags.DEFINE_string("models_dir", None, "Also register the shipped models of this folder.")
flags.DEFINE_list("precisions", ["float16", "dynamic", "int8"], "TFLite precisions.")
flags.DEFINE_integer("representative_clips", 100, "int8: training clips it is calibrated on.")
flags.DEFINE_string("out", None, "JSON written (default benchmarks/results/tagging/"
                    "<date>-student-exports.json).")


def export_student(name: str, export_root: str, dataset_dir: str) -> dict:
    """Exports ``name`` under ``export_root`` and returns its row of the results."""
    from tftag import experiment
    from tftag.delivery import export, export_layout, tflite

    config = experiment.ExportConfig(export_dir=export_root, tflite=tuple(FLAGS.precisions),
                                     representative_clips=FLAGS.representative_clips)
    path = export.export_pretrained(name, config, dataset_dir)["export_path"]
    with open(os.path.join(path, tflite.TFLITE_DIR, tflite.SUMMARY_JSON), encoding="utf-8") as f:
        summary = json.load(f)
    graph = os.path.join(path, export_layout.ESSENTIA_DIR, f"{name}.pb")
    return {
        "savedmodel": "reloaded, every signature checked against the Keras model "
                      "(tftag.delivery.export.check_reload)",
        "essentia_graph": os.path.relpath(graph, path) if os.path.exists(graph) else None,
        "check_clips": summary["check_clips"],
        "interpreter": summary["interpreter"],
        "tflite": {p: {k: row[k] for k in ("bytes", "max_abs_diff", "latency_ms_per_clip",
                                           "integer_only") if k in row}
                   for p, row in summary["files"].items()},
    }


def main(argv):
    del argv
    from tftag.runs import runfiles
    from tftag.models import pretrained

    if FLAGS.models_dir:
        pretrained.add_models_dir(FLAGS.models_dir)
    dataset_dir = os.path.abspath(FLAGS.dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise app.UsageError(f"--dataset_dir={FLAGS.dataset_dir}: no such dataset (make it with "
                             "--mode=extract of configs/real_music_sweep.flags)")
    names = (pretrained.students() if FLAGS.students == ["all"]
             else [pretrained.REGISTRY.check(n, "students") for n in FLAGS.students])
    root = tempfile.mkdtemp(prefix="student-exports-")
    try:
        rows = {name: export_student(name, root, dataset_dir) for name in names}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "student_exports",
        "date": datetime.date.today().isoformat(),
        "command": "python -m tftag.main --mode=export --pretrained=NAME "
                   f"--tflite={','.join(FLAGS.precisions)} --dataset_dir={FLAGS.dataset_dir}",
        "note": "max_abs_diff: largest |probability difference| from the Keras model on "
                "check_clips clips of the dataset's test split",
        "students": rows,
    }
    out = FLAGS.out or os.path.join(ROOT, "benchmarks", "results", "tagging",
                                    f"{result['date']}-student-exports.json")
    runfiles.write_json_atomic(out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
