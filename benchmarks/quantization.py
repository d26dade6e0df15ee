r"""How low can the bits go: storage codecs and TFLite precisions, with the ROC-AUC each costs.

    .venv/bin/python -m benchmarks.quantization --name=synthetic                  # built-in corpus
    .venv/bin/python -m benchmarks.quantization --name=real_music \
        --dataset_dir=runs/real_music/dataset --float32_sweep=runs/real_music      # reuse its runs

Steps (each resumes; rerun the same command after an interruption):
1. Data: the float32 dataset (``--dataset_dir``, else the built-in corpus is extracted) is
   transcoded to every codec of ``--codecs`` (:mod:`tftag.storage.transcode`): the same clips, splits
   and labels, only the stored bytes differ.
2. Training: ``configs/quantize_sweep.flags`` (``--recipe``) is run as a sweep on each codec's
   dataset (``--loss=distill`` when the data has teacher labels). ``--float32_sweep`` reuses a
   finished float32 sweep of the same recipe (its run keys and training settings are checked).
3. TFLite: every float32 run's best model is converted at ``--precisions``
   (:mod:`tftag.delivery.tflite`; int8 calibrated on ``--representative_clips`` training clips) and
   evaluated through the interpreter on the whole test split (every patch of every clip), with
   the file's bytes, latency (ms per clip, 1 thread) and max |Δp| against the Keras model.
4. Report into ``--out_dir/<name>/``: ``storage.csv/.md`` (bytes per clip and test ROC-AUC per
   resolution × codec, Δ and t-test p against float32 storage), ``tflite.csv/.md`` (bytes,
   latency, ROC-AUC / PR-AUC per resolution × precision, Δ and paired t-test p against the
   float32 model), ``lowest.json`` (the lowest cost without a significant loss) and
   ``quantization.png`` (ROC-AUC vs bytes, one marker per codec / precision).
Prints one JSON line with the lowest settings and the wall time of each step.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODEC_MARKERS = {"float32": "o", "float16": "s", "uint8": "^"}
PRECISION_MARKERS = {"float32": "o", "float16": "s", "dynamic": "D", "int8": "^"}
FLOAT32 = "float32"


def define_flags() -> None:
    """The benchmark's flags (defined only when it runs as a program)."""
    flags.DEFINE_string("name", "synthetic", "Name of the study (results go to --out_dir/NAME).")
    flags.DEFINE_string("work_dir", None, "Datasets, sweeps and TFLite files (default "
                        "runs/quantization/NAME).")
    flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results", "quantization"),
                        "Where the tables and the plot are written (NAME/ below it).")
    flags.DEFINE_string("dataset_dir", None, "The float32 dataset; default: extract the built-in "
                        "corpus (--num_clips, at the recipe's resolutions) into --work_dir.")
    flags.DEFINE_integer("num_clips", 240, "Built-in corpus clips (without --dataset_dir).")
    flags.DEFINE_string("float32_sweep", None, "A finished float32 sweep of the same recipe to "
                        "reuse as the baseline (e.g. runs/real_music); default: run it.")
    flags.DEFINE_list("codecs", ["float16", "uint8"], "Storage codecs besides float32.")
    flags.DEFINE_list("precisions", ["float32", "float16", "dynamic", "int8"], "TFLite precisions.")
    flags.DEFINE_string("recipe", os.path.join(ROOT, "configs", "quantize_sweep.flags"),
                        "The sweep flagfile run on each codec's dataset.")
    flags.DEFINE_integer("representative_clips", 100, "int8 calibration clips (training split).")
    flags.DEFINE_integer("latency_clips", 5, "Test clips timed per TFLite file.")
    flags.DEFINE_float("alpha", 0.05, "Significance level of 'no significant loss'.")
    flags.DEFINE_float("max_drop", 1.0, "Also required of 'no loss': the mean ROC-AUC at most this "
                       "many points below the baseline.")
    flags.DEFINE_bool("report_only", False, "Only rebuild the report from finished runs.")
    flags.DEFINE_bool("only_tflite", False, "Only the TFLite step on the float32 runs (e.g. in "
                      "a second process while the codec sweeps train); no report.")
    flags.DEFINE_bool("reverse", False, "TFLite step over the runs in reverse order (a second "
                      "--only_tflite process then meets the first in the middle).")


# ----------------------------------------------------------------------------- steps


def _run(cmd: list[str], log: str) -> None:
    """Runs a tftag command, appending its output to ``log``; a failure names the log."""
    logging.info("running %s", " ".join(cmd[2:]))
    with open(log, "a", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, "-m", *cmd[1:]] if cmd[0] == "python" else cmd,
                              cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:4])} ... exited {proc.returncode}: see {log}")


def recipe_resolutions(recipe: str) -> tuple[list[str], list[str]]:
    """(VGG resolutions, MUSICNN resolutions) named by the recipe flagfile."""
    vgg, musicnn = [], []
    for line in open(recipe, encoding="utf-8"):
        line = line.strip()
        for name, out in (("vgg", vgg), ("musicnn", musicnn)):
            if line.startswith(f"--sweep_model={name}:"):
                for part in line.split(":", 1)[1].split(","):
                    if part.startswith("resolutions="):
                        out.extend(part.split("=", 1)[1].split("+"))
    return vgg, musicnn


def float32_dataset(work: str) -> str:
    """``--dataset_dir``, or the built-in corpus extracted at every base the recipe needs."""
    if FLAGS.dataset_dir:
        return FLAGS.dataset_dir
    vgg, musicnn = recipe_resolutions(FLAGS.recipe)
    n_mels = sorted({int(r.split("-mel")[1].split("-")[0]) for r in vgg + musicnn}, reverse=True)
    hops = sorted({int(r.split("-hop")[1].split("-")[0]) for r in vgg + musicnn})
    run_dir = os.path.join(work, "float32")
    if not os.path.exists(os.path.join(run_dir, "dataset", "dataset.json")):
        _run(["python", "tftag.main", "--mode=extract", f"--run_dir={run_dir}",
              f"--num_clips={FLAGS.num_clips}", "--clip_seconds=30", "--sr=16000",
              f"--n_mels={','.join(map(str, n_mels))}", f"--hop_factors={','.join(map(str, hops))}",
              "--compressions=log", "--duration=29.1", "--clips_per_shard=64",
              "--direct_num_workers=2"], os.path.join(work, "log.txt"))
    return os.path.join(run_dir, "dataset")


def codec_datasets(source: str, work: str) -> dict[str, str]:
    """{codec: dataset dir}: float32 is the source, the others transcoded from it."""
    from tftag.storage import transcode

    out = {FLOAT32: source}
    for codec in FLAGS.codecs:
        target = os.path.join(work, codec, "dataset")
        if not os.path.exists(os.path.join(target, "dataset.json")):
            transcode.transcode_dataset(source, target, codec)
        out[codec] = target
    return out


def run_sweeps(datasets: dict[str, str], work: str) -> dict[str, str]:
    """{codec: sweep dir} after running the recipe on each codec's dataset."""
    from tftag.storage import data

    sweeps = {}
    for codec, dataset in datasets.items():
        if codec == FLOAT32 and FLAGS.float32_sweep:
            sweeps[codec] = FLAGS.float32_sweep
            continue
        sweep_dir = os.path.join(work, codec)
        teacher = "teacher" in data.load_dataset_info(dataset).raw
        if not FLAGS.report_only:
            _run(["python", "tftag.main", f"--flagfile={FLAGS.recipe}", f"--dataset_dir={dataset}",
                  f"--run_dir={sweep_dir}", f"--export_dir={os.path.join(work, 'export-' + codec)}",
                  f"--loss={'distill' if teacher else 'bce'}"], os.path.join(work, "log.txt"))
        sweeps[codec] = sweep_dir
    return sweeps


def load_runs(sweep_dir: str, keys: set[str] | None = None) -> list[dict]:
    """The finished runs of a sweep (result.json), with their directory."""
    runs = []
    for path in sorted(glob.glob(os.path.join(sweep_dir, "runs", "*", "result.json"))):
        key = os.path.basename(os.path.dirname(path))
        if keys is None or key in keys:
            runs.append(dict(json.load(open(path, encoding="utf-8")), key=key,
                             run_dir=os.path.dirname(path)))
    return runs


def check_recipe(sweeps: dict[str, str]) -> None:
    """A reused float32 sweep must have trained with the codec sweeps' settings."""
    settings = {}
    for codec, sweep_dir in sweeps.items():
        train = json.load(open(os.path.join(sweep_dir, "configs.json"), encoding="utf-8"))["train"]
        settings[codec] = {k: train.get(k) for k in ("batch_size", "epochs", "steps_per_epoch",
                                                     "learning_rate", "loss", "valid_patches")}
    first = next(iter(settings.values()))
    for codec, s in settings.items():
        if s != first:
            raise ValueError(f"--float32_sweep: training settings differ ({codec}: {s} vs {first})")


def tflite_results(run: dict, dataset_dir: str, cache_dir: str) -> dict:
    """TFLite files of one float32 run at every precision: bytes, latency, metrics, max |Δp|."""
    from tftag import evaluate, patches, train
    from tftag.delivery import tflite
    from tftag.experiment import Experiment
    from tftag.features import MelConfig

    cache = os.path.join(cache_dir, run["key"] + ".json")
    if os.path.exists(cache):
        done = json.load(open(cache, encoding="utf-8"))
        if set(FLAGS.precisions) <= set(done["precisions"]):
            return done
    mel = MelConfig(run["sr"], run["n_mels"], run["hop_factor"], run["compression"])
    sweep_dir = os.path.dirname(os.path.dirname(run["run_dir"]))  # <sweep>/runs/<key>
    plan = {mc.name: mc for mc, _, _ in Experiment.load(sweep_dir).sweep_plan()}
    if run["model"] not in plan:
        raise ValueError(f"{run['key']}: model {run['model']!r} is not in {sweep_dir}/configs.json")
    model_config = plan[run["model"]]
    if (model_config.patch_frames(mel) != run.get("patch_frames")
            or model_config.width != run["width"]):
        raise ValueError(f"{run['key']}: result.json (patch_frames {run.get('patch_frames')}, "
                         f"width {run['width']}) does not match {sweep_dir}/configs.json")
    model = train.load_best(run["run_dir"], dataset_dir, mel, model_config)
    window = run.get("patch_frames") or mel.n_frames
    keras = evaluate.predict_clips(model, dataset_dir, mel, "test", run.get("patch_frames"))
    reference = evaluate.macro_metrics(keras.labels, keras.probabilities)
    representative = (patches.windows(tflite.dataset_mels(dataset_dir, mel, "train",
                                                          FLAGS.representative_clips),
                                      window).reshape(-1, window, mel.n_mels)
                      if "int8" in FLAGS.precisions else None)  # the model's own inputs
    timing = tflite.dataset_mels(dataset_dir, mel, "test", FLAGS.latency_clips)
    out = {"key": run["key"], "keras_roc_auc": reference.roc_auc, "keras_pr_auc": reference.pr_auc,
           "precisions": {}}
    for precision in FLAGS.precisions:
        content = tflite.convert(model, (window, mel.n_mels), precision,
                                 representative if precision == "int8" else None)
        lite = tflite.TFLiteModel(content, num_threads=1)
        got = evaluate.predict_clips(lite, dataset_dir, mel, "test")
        metrics = evaluate.macro_metrics(got.labels, got.probabilities)
        out["precisions"][precision] = {
            "bytes": len(content), "latency_ms": round(tflite.latency_ms(lite, timing), 3),
            "roc_auc": metrics.roc_auc, "pr_auc": metrics.pr_auc,
            "max_abs_diff": float(np.abs(got.probabilities - keras.probabilities).max()),
            "integer_only": tflite.integer_only(content) if precision == "int8" else None}
        logging.info("%s %s: %d bytes, ROC-AUC %.4f (Keras %.4f)", run["key"], precision,
                     len(content), metrics.roc_auc, reference.roc_auc)
    os.makedirs(cache_dir, exist_ok=True)
    from tftag.runs import runfiles

    runfiles.write_json_atomic(cache, out)
    return out


# ----------------------------------------------------------------------------- report


def _p(a: list[float], b: list[float], paired: bool) -> float | None:
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (paired and len(a) != len(b)):
        return None
    if paired and np.abs(np.subtract(a, b)).max() < 1e-6:
        return None  # the same numbers (float32 TFLite vs Keras): nothing to test
    p = (stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b)).pvalue
    return None if np.isnan(p) else round(float(p), 4)


def storage_rows(sweeps: dict[str, str], keys: set[str]) -> list[dict]:
    """Per (model, resolution, codec): bytes per clip, ROC-AUC over repeats, Δ and p vs float32."""
    runs = {codec: load_runs(d, keys) for codec, d in sweeps.items()}
    rows = []
    groups = sorted({(r["model"], r["resolution"]) for r in runs[FLOAT32]},
                    key=lambda g: (g[0], -_bytes_of(runs[FLOAT32], g)))
    for model, resolution in groups:
        base = [r["test_roc_auc"] for r in runs[FLOAT32] if (r["model"], r["resolution"]) == (model, resolution)]
        for codec in sweeps:
            rs = [r for r in runs[codec] if (r["model"], r["resolution"]) == (model, resolution)]
            if not rs:
                continue
            roc = [r["test_roc_auc"] for r in rs]
            rows.append({"model": model, "resolution": resolution, "codec": codec,
                         "bits": 8 * rs[0]["storage_bytes"] // (_frames(rs[0]) * rs[0]["n_mels"]),
                         "bytes_per_clip": rs[0]["storage_bytes"], "runs": len(rs),
                         "roc_auc": round(100 * float(np.mean(roc)), 2),
                         "roc_auc_std": round(100 * float(np.std(roc, ddof=1)), 2) if len(roc) > 1 else None,
                         "pr_auc": round(100 * float(np.mean([r["test_pr_auc"] for r in rs])), 2),
                         "delta_vs_float32": round(100 * (np.mean(roc) - np.mean(base)), 2),
                         "p_vs_float32": None if codec == FLOAT32 else _p(roc, base, paired=False)})
    return rows


def _frames(run: dict) -> int:
    from tftag.features import MelConfig

    return MelConfig(run["sr"], run["n_mels"], run["hop_factor"], run["compression"]).n_frames


def _bytes_of(runs: list[dict], group: tuple) -> int:
    return next(r["storage_bytes"] for r in runs if (r["model"], r["resolution"]) == group)


def tflite_rows(results: list[dict], runs: list[dict]) -> list[dict]:
    """Per (model, resolution, precision): file bytes, latency, metrics, Δ and paired p vs Keras."""
    by_key = {r["key"]: r for r in runs}
    rows = []
    groups = sorted({(by_key[t["key"]]["model"], by_key[t["key"]]["resolution"]) for t in results},
                    key=lambda g: (g[0], -_bytes_of(runs, g)))
    for model, resolution in groups:
        ts = [t for t in results if (by_key[t["key"]]["model"], by_key[t["key"]]["resolution"]) == (model, resolution)]
        base = [t["keras_roc_auc"] for t in ts]
        for precision in FLAGS.precisions:
            ps = [t["precisions"][precision] for t in ts]
            roc = [p["roc_auc"] for p in ps]
            rows.append({"model": model, "resolution": resolution, "precision": precision,
                         "runs": len(ps), "bytes": ps[0]["bytes"],
                         "latency_ms": round(float(np.median([p["latency_ms"] for p in ps])), 2),
                         "roc_auc": round(100 * float(np.mean(roc)), 2),
                         "pr_auc": round(100 * float(np.mean([p["pr_auc"] for p in ps])), 2),
                         "keras_roc_auc": round(100 * float(np.mean(base)), 2),
                         "delta_vs_float32": round(100 * (np.mean(roc) - np.mean(base)), 2),
                         "p_vs_float32": _p(roc, base, paired=True),
                         "max_abs_diff": round(max(p["max_abs_diff"] for p in ps), 5),
                         "integer_only": (all(p["integer_only"] for p in ps)
                                          if precision == "int8" else None)})
    return rows


def lowest(storage: list[dict], lite: list[dict], runs: list[dict], sweeps: dict[str, str]) -> dict:
    """The lowest (bands, hop, bits) and (bands, hop, precision) with no significant loss against
    the float32 baseline at full resolution (the recipe's first VGG resolution): p ≥ alpha (or
    untestable with a mean at or above it) and a mean at most ``--max_drop`` points below."""
    from scipy import stats

    vgg, _ = recipe_resolutions(FLAGS.recipe)
    full = vgg[0]
    base_runs = [r["test_roc_auc"] for r in runs if r["model"] == "vgg" and r["resolution"] == full]
    base = 100 * float(np.mean(base_runs))

    def ok(values: list[float]) -> tuple[bool, float | None]:
        mean = 100 * float(np.mean(values))
        p = (float(stats.ttest_ind(values, base_runs).pvalue)
             if len(values) > 1 and len(base_runs) > 1 else None)
        return (mean >= base - FLAGS.max_drop and (p is None or np.isnan(p) or p >= FLAGS.alpha
                                                   or mean >= base)), p

    out = {"baseline": {"resolution": full, "codec": FLOAT32, "roc_auc": round(base, 2)}}
    candidates = []
    for codec, sweep_dir in sweeps.items():
        for resolution in vgg:
            values = [r["test_roc_auc"] for r in load_runs(sweep_dir) if r["model"] == "vgg"
                      and r["resolution"] == resolution]
            if not values:
                continue
            good, p = ok(values)
            row = next(r for r in storage if r["resolution"] == resolution and r["codec"] == codec
                       and r["model"] == "vgg")
            if good:
                candidates.append((row["bytes_per_clip"], resolution, codec, row["roc_auc"], p))
    if candidates:
        b, resolution, codec, roc, p = min(candidates)
        out["storage"] = {"resolution": resolution, "codec": codec, "bytes_per_clip": b,
                          "roc_auc": roc, "p_vs_baseline": None if p is None else round(p, 4)}
    lite_ok = [r for r in lite if r["model"] == "vgg"
               and r["delta_vs_float32"] >= -FLAGS.max_drop
               and (r["p_vs_float32"] is None or r["p_vs_float32"] >= FLAGS.alpha)]
    if lite_ok:
        best = min(lite_ok, key=lambda r: r["bytes"])
        out["model"] = {k: best[k] for k in ("resolution", "precision", "bytes", "latency_ms",
                                              "roc_auc", "delta_vs_float32", "p_vs_float32")}
        if "storage" in out:  # the TFLite precisions that keep no loss at the lowest storage resolution
            at = [r for r in lite_ok if r["resolution"] == out["storage"]["resolution"]]
            if at:
                smallest = min(at, key=lambda r: r["bytes"])
                out["combined"] = {"resolution": out["storage"]["resolution"],
                                   "codec": out["storage"]["codec"],
                                   "precision": smallest["precision"],
                                   "bytes_per_clip": out["storage"]["bytes_per_clip"],
                                   "model_bytes": smallest["bytes"]}
    return out


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (None shown as –)."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join("–" if r.get(c) is None else str(r[c]) for c in columns)
                          + " |\n" for r in rows)


def plot(storage: list[dict], lite: list[dict], path: str, title: str) -> str:
    """ROC-AUC vs stored bytes per clip (one marker per codec) and vs TFLite bytes (per precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for codec, marker in CODEC_MARKERS.items():
        rs = [r for r in storage if r["codec"] == codec]
        if rs:
            axes[0].scatter([r["bytes_per_clip"] / 1024 for r in rs], [r["roc_auc"] for r in rs],
                            marker=marker, label=codec, alpha=0.8)
    for r in (r for r in storage if r["codec"] == FLOAT32):
        axes[0].annotate(f"{r['model']} {r['resolution'].split('-', 1)[1].rsplit('-', 1)[0]}",
                         (r["bytes_per_clip"] / 1024, r["roc_auc"]), fontsize=6)
    axes[0].set(xscale="log", xlabel="stored KiB per clip (log)", ylabel="test ROC-AUC %",
                title="storage codec")
    for precision, marker in PRECISION_MARKERS.items():
        rs = [r for r in lite if r["precision"] == precision]
        if rs:
            axes[1].scatter([r["bytes"] / 1024 for r in rs], [r["roc_auc"] for r in rs],
                            marker=marker, label=precision, alpha=0.8)
    axes[1].set(xscale="log", xlabel="TFLite model KiB (log)", ylabel="test ROC-AUC %",
                title="TFLite precision")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    from tftag.runs import runfiles

    return runfiles.save_figure_atomic(fig, path, dpi=90)


def main(argv):
    del argv
    from tftag.runs import runfiles

    timings = {}
    work = FLAGS.work_dir or os.path.join(ROOT, "runs", "quantization", FLAGS.name)
    os.makedirs(work, exist_ok=True)
    vgg, musicnn = recipe_resolutions(FLAGS.recipe)
    wanted = {("vgg", r) for r in vgg} | {("musicnn", r) for r in musicnn}
    start = time.perf_counter()
    if FLAGS.only_tflite:
        datasets = {FLOAT32: float32_dataset(work)}
        sweeps = {FLOAT32: FLAGS.float32_sweep or os.path.join(work, FLOAT32)}
    else:
        datasets = codec_datasets(float32_dataset(work), work)
    timings["data_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    if not FLAGS.only_tflite:
        sweeps = run_sweeps(datasets, work)
        check_recipe(sweeps)
    timings["sweeps_s"] = round(time.perf_counter() - start, 1)
    base_runs = [r for r in load_runs(sweeps[FLOAT32]) if (r["model"], r["resolution"]) in wanted]
    keys = {r["key"] for r in base_runs}
    start = time.perf_counter()
    lite_results = [tflite_results(r, datasets[FLOAT32], os.path.join(work, "tflite"))
                    for r in (base_runs[::-1] if FLAGS.reverse else base_runs)]
    timings["tflite_s"] = round(time.perf_counter() - start, 1)
    if FLAGS.only_tflite:
        print(json.dumps({"benchmark": "quantization", "name": FLAGS.name, "tflite_runs":
                          len(lite_results), **timings}))
        return
    storage = storage_rows(sweeps, keys)
    lite = tflite_rows(lite_results, base_runs)
    out = os.path.join(FLAGS.out_dir, FLAGS.name)
    os.makedirs(out, exist_ok=True)
    runfiles.write_csv_atomic(os.path.join(out, "storage.csv"), storage, list(storage[0]))
    runfiles.write_csv_atomic(os.path.join(out, "tflite.csv"), lite, list(lite[0]))
    runfiles.write_text_atomic(os.path.join(out, "storage.md"), markdown(
        storage, ["model", "resolution", "codec", "bits", "bytes_per_clip", "runs", "roc_auc",
                  "roc_auc_std", "pr_auc", "delta_vs_float32", "p_vs_float32"]))
    runfiles.write_text_atomic(os.path.join(out, "tflite.md"), markdown(
        lite, ["model", "resolution", "precision", "bytes", "latency_ms", "roc_auc", "pr_auc",
               "delta_vs_float32", "p_vs_float32", "max_abs_diff", "integer_only"]))
    best = lowest(storage, lite, base_runs, sweeps)
    runfiles.write_json_atomic(os.path.join(out, "lowest.json"), best)
    plot(storage, lite, os.path.join(out, "quantization.png"),
         f"{FLAGS.name}: ROC-AUC vs bytes ({len(base_runs)} float32 runs)")
    print(json.dumps({"benchmark": "quantization", "name": FLAGS.name, "lowest": best,
                      "runs": {c: len(load_runs(d, keys)) for c, d in sweeps.items()},
                      **timings}, sort_keys=True))


FLAGS = flags.FLAGS

if __name__ == "__main__":
    define_flags()
    app.run(main)
