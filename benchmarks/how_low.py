r"""The how_low search against the full grid on the same data and per-run budget.

    .venv/bin/python -m benchmarks.how_low --name=synthetic          # built-in corpus (rendered)
    .venv/bin/python -m benchmarks.how_low --name=real_music_fold0 \
        --recipe=configs/how_low_real_music.flags --dataset_dir=runs/real_music/dataset \
        --oracles=pareto --grid_results=benchmarks/results/real_music/runs --grid_fold=0

Steps (each resumes; rerun the same command after an interruption):
1. Data: ``--dataset_dir``, else the built-in corpus of the recipe (``--recipe``,
   ``configs/how_low_quick.flags``) is rendered and extracted into ``--work_dir/corpus``.
2. Search: ``python -m tftag.main --flagfile=<recipe> --mode=how_low`` per oracle of
   ``--oracles`` (``--noexport --repeats=1``, flags after ``--`` appended), each into
   ``--work_dir/search-<oracle>``.
3. Grid: every candidate of the same space (read back from the search's run directory) trained
   to convergence with the same settings (``--epochs`` cap, ``--patience``, seed) by
   :func:`tftag.study.sweep.run_sweep` into ``--work_dir/grid`` — the budget per run of the search's
   top rung (a candidate the search trained to the top is bit-identical to its grid run).
   Or, with ``--grid_results=DIR --grid_fold=k``, read from a cross-validated study's finished
   runs of fold k (:func:`grid_from_results`; the recipe searches that fold with the study's
   recipe: ``--folds``/``--fold``, so both validate on the same clips): grid points = their
   best-epoch validation ROC-AUC and cost, grid compute = their recorded seconds and
   clip-GMACs. Runs the study has not finished are named and the benchmark stops, before the
   search (:func:`missing_study_runs`, from the recipe's plan) and again when reading them.
4. Report into ``--out_dir/<name>/`` and ``--out_dir/summary.json`` (per corpus):
   - ``hypervolume_ratio``: hypervolume of the search's front (its own validation ROC-AUC at the
     fidelity each candidate reached) / the grid's front, in (cost, ROC-AUC) space with the
     reference point (1.1 × the costliest candidate's cost, ROC-AUC 0.5);
     ``hypervolume_ratio_regraded``: the same with the search's front candidates scored by their
     grid (converged) ROC-AUC;
   - ``compute_ratio``: training + validation seconds of the search / of the grid (the epochs'
     own timings, so a resumed run counts what it did); ``gmac_ratio``: training clip-GMACs
     (epochs × training clips × GMACs per clip) likewise;
   - ``chosen``: the search's answer (cheapest front point within ``--max_drop``), with its grid
     ROC-AUC; ``grid_choice``: the grid's cheapest-within-``--max_drop`` (validation ROC-AUC);
     ``chosen_ok``: the chosen is at most as costly as the grid's choice or within 1 point of its
     grid ROC-AUC (the issue's criterion);
   - ``comparable``: which ratios compare like with like: clip-GMACs always; seconds when the
     benchmark trained the grid itself (one process at a time on this machine; the load averages
     are in ``timings``), only roughly against a study's runs (their own load).
   ``grid.csv``, ``front_<oracle>.csv``, ``fronts.png`` (grid points and front, search fronts).
Prints one JSON line of the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags, logging

from tftag import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
HV_COST_MARGIN = 1.1  # reference cost = this × the costliest candidate's
HV_SCORE = 0.5  # reference ROC-AUC: chance


def define_flags() -> None:
    """The benchmark's flags (defined only when it runs as a program)."""
    flags.DEFINE_string("name", "synthetic", "Corpus name (results in --out_dir/NAME).")
    flags.DEFINE_string("work_dir", None, "Corpus, searches and grid (default runs/how_low/NAME).")
    flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results", "how_low"),
                        "Where the report goes (NAME/ and summary.json).")
    flags.DEFINE_string("dataset_dir", None, "An extracted dataset; default: render and extract "
                        "the recipe's built-in corpus into --work_dir/corpus.")
    flags.DEFINE_string("recipe", os.path.join(ROOT, "configs", "how_low_quick.flags"),
                        "The how_low flagfile (space and training settings).")
    flags.DEFINE_list("oracles", ["pareto", "hyperband"], "Searches to run (the first is the "
                      "one summary.json reports at its top level).")
    flags.DEFINE_float("max_drop", 1.0, "ROC-AUC points of the answer's tolerance.")
    flags.DEFINE_string("grid_results", None, "Read the grid from a cross-validated study's "
                        "results directory (e.g. benchmarks/results/real_music/runs) instead of "
                        "training it: the finished runs of --grid_fold (the search must run on "
                        "that fold: --folds/--fold in the recipe).")
    flags.DEFINE_integer("grid_fold", 0, "With --grid_results: the study's fold.")


def _main_module(*args: str, log: str) -> float:
    """Runs ``python -m tftag.main args``, its output appended to ``log``; returns its seconds."""
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"=== {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "tftag.main", *args], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"tftag.main {' '.join(args)} exited {proc.returncode}; see {log}")
    return time.monotonic() - t0


def corpus(work: str, extra: list[str]) -> str:
    """The dataset: --dataset_dir, else the recipe's built-in corpus extracted into work."""
    if FLAGS.dataset_dir:
        return FLAGS.dataset_dir
    run_dir = os.path.join(work, "corpus")
    if not os.path.exists(os.path.join(run_dir, "dataset", "dataset.json")):
        _main_module(f"--flagfile={FLAGS.recipe}", *extra, "--mode=extract",
                     f"--run_dir={run_dir}", log=os.path.join(work, "corpus.log"))
    return os.path.join(run_dir, "dataset")


def search_space(search_dir: str) -> tuple:
    """(Experiment, how_low.json record, candidates) of a finished search's run directory."""
    from tftag.runs import runfiles
    from tftag.search import how_low
    from tftag.storage import data
    from tftag.experiment import Experiment

    exp = Experiment.load(search_dir)
    record = runfiles.read_json(os.path.join(search_dir, how_low.SEARCH_JSON))
    info = data.load_dataset_info(record["dataset_dir"])
    cands = how_low.candidates(exp, info, how_low.SearchConfig(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in record["search"].items()}))
    assert [c.key for c in cands] == record["candidates"], "the space changed"
    return exp, record, cands


def grid(search_dir: str, work: str) -> tuple[list[dict], dict]:
    """Every candidate of the search's space trained to convergence (resumes); returns the
    results (one per candidate, with its key) and the costs."""
    import keras

    from tftag.runs import runfiles
    from tftag.search import how_low
    from tftag.study import sweep

    exp, record, cands = search_space(search_dir)
    results = []
    for c in cands:
        item = sweep.SweepItem(c.model_config, c.mel_config, exp.train.seed, c.train_config)
        (result,) = sweep.run_sweep([item], record["dataset_dirs"][c.mel_dtype], c.train_config,
                                    os.path.join(work, "grid", c.mel_dtype))
        results.append(dict(result, candidate=c.key))
        keras.backend.clear_session()
    return results, runfiles.read_json(os.path.join(search_dir, how_low.COSTS_JSON))


def grid_from_results(results_dir: str, fold: int, search_dir: str) -> tuple[list[dict], dict]:
    """The grid read from a cross-validated study's finished runs of one fold instead of trained:
    for each candidate of the search's space, ``<results_dir>/<model>-w<width>-<resolution>-
    fold<fold>-seed<seed>/result.json`` (:mod:`tftag.study.crossval`), its best-epoch validation
    ROC-AUC, test ROC-AUC, recorded training seconds and epochs. The search must have run on
    the same fold of the same folds (checked against the study's ``folds.json``) with the
    study's loss, cap and validation part; returns (results with their candidate key, costs).

    Raises:
      ValueError: the search is not on that fold or its split or recipe differs from the
        study's; or runs are missing (named: the study has not finished them yet).
    """
    from tftag.runs import runfiles
    from tftag.search import how_low
    from tftag.study import crossval, sweep

    exp, record, cands = search_space(search_dir)
    flag = f"--grid_results={results_dir} --grid_fold={fold}"
    searched = record.get("fold")
    if not searched or searched["fold"] != fold:
        raise ValueError(f"{flag}: the search in {search_dir} ran on "
                         + (f"fold {searched['fold']}" if searched else "the dataset's splits")
                         + f", not on fold {fold}: give the recipe --folds/--fold={fold} (the "
                         "study's folds) so it validates on the study's clips")
    folds_json = os.path.join(results_dir, crossval.FOLDS_JSON)
    if not os.path.exists(folds_json):
        raise ValueError(f"{flag}: {folds_json} not found (a cross-validated study's results "
                         "directory has one)")
    study_test = sorted(c for c, v in runfiles.read_json(folds_json)["clips"].items()
                        if v["fold"] == fold)
    parts = runfiles.read_json(os.path.join(search_dir, how_low.FOLD_JSON))
    if study_test != sorted(parts["test"]):
        raise ValueError(f"{flag}: fold {fold} of the search ({len(parts['test'])} test clips) "
                         f"is not the study's ({len(study_test)}): other folds (--folds, "
                         "--fold_seed) or another dataset")
    results, missing = [], []
    for c in cands:
        item = crossval.FoldItem(sweep.SweepItem(c.model_config, c.mel_config, exp.train.seed),
                                 fold)
        path = os.path.join(results_dir, item.key, crossval.RESULT_JSON)
        if not os.path.exists(path):
            missing.append(item.key)
            continue
        result = runfiles.read_json(path)
        expected = {"loss": c.train_config.loss, "max_epochs": c.train_config.epochs,
                    "n_train_clips": len(parts["train"]), "n_valid_clips": len(parts["valid"])}
        other = {k: (result.get(k), v) for k, v in expected.items() if result.get(k) != v}
        if other:
            raise ValueError(f"{flag}: {item.key} was trained otherwise than the search "
                             f"(study, search): {other}")
        results.append(dict(result, candidate=c.key))
    if missing:
        raise ValueError(f"{flag}: {len(missing)} of the search's {len(cands)} candidates have "
                         f"no finished run in {results_dir}: {', '.join(missing)} (the study "
                         "has not finished them: rerun when their result.json lands, or "
                         "narrow the search's space)")
    return results, runfiles.read_json(os.path.join(search_dir, how_low.COSTS_JSON))


# Prints the study-run keys the search of a flagfile needs (tftag.main's flags, in a child).
_PLANNED = """
import dataclasses, json, sys
from tftag import cli, main
from tftag.study import crossval, sweep
main.FLAGS(["tftag", *sys.argv[2:]])
exp, search = main.build_experiment("how_low"), cli.how_low_search()
print(json.dumps([crossval.FoldItem(sweep.SweepItem(dataclasses.replace(m, width=w), c,
                                                    exp.train.seed), int(sys.argv[1])).key
                  for m, mels, _ in exp.sweep_plan() for w in search.widths or (m.width,)
                  for c in mels]))
"""


def missing_study_runs(results_dir: str, fold: int, flag_args: list[str]) -> list[str]:
    """The runs of fold ``fold`` that the search of ``flag_args`` (its flagfile and flags) will
    compare with and ``results_dir`` does not hold finished yet — checked before the search
    runs, from its plan (every model × resolution × width)."""
    proc = subprocess.run([sys.executable, "-c", _PLANNED, str(fold), *flag_args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"reading the search's flags failed: {proc.stderr.strip()[-500:]}")
    keys = json.loads(proc.stdout.strip().splitlines()[-1])
    from tftag.study import crossval

    return [k for k in keys
            if not os.path.exists(os.path.join(results_dir, k, crossval.RESULT_JSON))]


def _hv(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    from tftag.study import pareto

    return pareto.hypervolume(points, reference)


def compare(front: list[dict], summary: dict, grid_rows: list[dict], reference, max_drop: float,
            train_clips: int) -> dict:
    """The figures of one search against the grid."""
    from tftag.search import how_low
    from tftag.study import pareto

    by_key = {r["candidate"]: r for r in grid_rows}
    on = [r for r in front if r["on_front"]]
    grid_points = [(r["cost"], r["valid_roc_auc"]) for r in grid_rows]
    grid_front = [p for p, f in zip(grid_points, pareto.on_front(grid_points)) if f]
    hv_grid = _hv(grid_front, reference)
    hv_own = _hv([(r["cost"], r["val_roc_auc"]) for r in on], reference)
    hv_regraded = _hv([(r["cost"], by_key[r["candidate"]]["valid_roc_auc"]) for r in on],
                      reference)
    grid_choice = grid_rows[pareto.cheapest_within(grid_points, max_drop / 100.0)]
    chosen = by_key[summary["chosen"]]
    search_seconds = summary["search_compute"]["train_seconds"]
    grid_compute = how_low.search_compute(grid_rows, train_clips)  # the same measure, the grid
    grid_seconds, grid_gmacs = grid_compute["train_seconds"], grid_compute["clip_gmacs"]

    def _row(r: dict) -> dict:
        return {"candidate": r["candidate"], "cost": r["cost"],
                "grid_valid_roc_auc": round(r["valid_roc_auc"], 5),
                "grid_test_roc_auc": round(r["test_roc_auc"], 5)}

    chosen_ok = (chosen["cost"] <= grid_choice["cost"]
                 or chosen["valid_roc_auc"] >= grid_choice["valid_roc_auc"] - 0.01)
    return {
        "hypervolume_ratio": round(hv_own / hv_grid, 4) if hv_grid else None,
        "hypervolume_ratio_regraded": round(hv_regraded / hv_grid, 4) if hv_grid else None,
        "compute_ratio": round(search_seconds / grid_seconds, 4) if grid_seconds else None,
        "gmac_ratio": round(summary["search_compute"]["clip_gmacs"] / grid_gmacs, 4)
        if grid_gmacs else None,
        "chosen": dict(_row(chosen), search_val_roc_auc=round(
            next(r["val_roc_auc"] for r in front if r["candidate"] == summary["chosen"]), 5)),
        "grid_choice": _row(grid_choice), "chosen_ok": chosen_ok,
        "search_train_seconds": search_seconds, "grid_train_seconds": round(grid_seconds, 2),
        "search_clip_gmacs": summary["search_compute"]["clip_gmacs"],
        "grid_clip_gmacs": round(grid_gmacs, 3), "trials": summary["trials"],
        "evaluated": summary["evaluated"], "candidates": summary["candidates"],
        "front_size": summary["front_size"], "grid_front_size": len(grid_front),
    }


def plot(grid_rows: list[dict], fronts: dict[str, list[dict]], path: str, label: str) -> str:
    """Grid points and front, and each search's front (its own ROC-AUC), ROC-AUC vs cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tftag.search import how_low
    from tftag.study import pareto

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = [(r["cost"], 100 * r["valid_roc_auc"]) for r in grid_rows]
    ax.scatter(*zip(*points), s=16, color="grey", alpha=0.6, label="grid (converged)")
    front = sorted(p for p, f in zip(points, pareto.on_front(points)) if f)
    ax.step(*zip(*front), where="post", color="black", lw=1.2, label="grid front")
    for (name, rows), color in zip(fronts.items(), ("tab:red", "tab:blue", "tab:green")):
        on = sorted((r["cost"], 100 * r["val_roc_auc"]) for r in rows if r["on_front"])
        ax.step(*zip(*on), where="post", color=color, lw=1.2, ls="--",
                label=f"search front ({name})")
        ax.scatter(*zip(*on), s=22, color=color)
    return how_low.save_cost_plot(fig, ax, label, "validation ROC-AUC %",
                                  "how_low: search fronts vs the full grid", path)


def _load() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (recorded next to the seconds)."""
    return [round(x, 2) for x in os.getloadavg()]


def _comparable(from_study: bool) -> dict:
    """What the summary's compute ratios compare, and under which conditions."""
    if not from_study:
        return {"gmac_ratio": True, "compute_ratio": True,
                "note": "grid and searches trained by this benchmark with the same code, one "
                        f"after the other on this machine ({os.cpu_count()} cores); other jobs "
                        "on it are not controlled: load averages in timings"}
    return {"gmac_ratio": True, "compute_ratio": False,
            "note": "the grid is the study's committed runs (--grid_results): its seconds were "
                    "recorded by the study's processes under their own load (3 folds trained at "
                    "once on 2 cores), the search's under the load in timings; clip-GMACs "
                    "compare, wall seconds only roughly"}


def main(argv: list[str]) -> None:
    from tftag.runs import runfiles
    from tftag.search import how_low
    from tftag.storage import data

    extra = argv[1:]
    work = FLAGS.work_dir or os.path.join(ROOT, "runs", "how_low", FLAGS.name)
    out = os.path.join(FLAGS.out_dir, FLAGS.name)
    os.makedirs(work, exist_ok=True)
    timings = {}
    t0 = time.monotonic()
    dataset_dir = corpus(work, extra)
    timings["corpus_seconds"] = round(time.monotonic() - t0, 1)
    searches = {}
    if FLAGS.grid_results and not FLAGS.dataset_dir:
        raise app.UsageError("--grid_results compares with a study's runs: give --dataset_dir "
                             "(the study's dataset)")
    if FLAGS.grid_results:  # before the search: its grid must be there
        missing = missing_study_runs(FLAGS.grid_results, FLAGS.grid_fold,
                                     [f"--flagfile={FLAGS.recipe}", *extra])
        if missing:
            raise app.UsageError(f"--grid_results={FLAGS.grid_results}: fold "
                                 f"{FLAGS.grid_fold} has no finished run of {len(missing)} "
                                 f"candidates of the search: {', '.join(missing)} (the study "
                                 "has not finished them: rerun when their result.json lands)")
    for oracle in FLAGS.oracles:
        run_dir = os.path.join(work, f"search-{oracle}")
        timings[f"search_{oracle}_seconds"] = round(_main_module(
            f"--flagfile={FLAGS.recipe}", f"--dataset_dir={dataset_dir}", *extra,
            "--mode=how_low", f"--run_dir={run_dir}", f"--oracle={oracle}", "--noexport",
            "--repeats=1", f"--max_drop={FLAGS.max_drop}",
            log=os.path.join(work, f"search-{oracle}.log")), 1)
        timings[f"search_{oracle}_load_average"] = _load()
        searches[oracle] = run_dir
    t0 = time.monotonic()
    if FLAGS.grid_results:
        grid_results, costs = grid_from_results(FLAGS.grid_results, FLAGS.grid_fold,
                                                searches[FLAGS.oracles[0]])
    else:
        grid_results, costs = grid(searches[FLAGS.oracles[0]], work)
        timings["grid_load_average"] = _load()
    timings["grid_seconds"] = round(time.monotonic() - t0, 1)
    record = runfiles.read_json(os.path.join(searches[FLAGS.oracles[0]], how_low.SEARCH_JSON))
    cost = record["search"]["cost"]
    column = how_low.COSTS.get(cost).column
    grid_rows = [dict(r, cost=costs[r["candidate"]][column]) for r in grid_results]
    reference = (HV_COST_MARGIN * max(r["cost"] for r in grid_rows), HV_SCORE)
    train_clips = (grid_results[0]["n_train_clips"] if FLAGS.grid_results
                   else data.load_dataset_info(dataset_dir).splits.get("train", 0))
    os.makedirs(out, exist_ok=True)
    figures, fronts = {}, {}
    for oracle, run_dir in searches.items():
        fronts[oracle] = how_low.read_front_csv(os.path.join(run_dir, "front.csv"))
        summary = runfiles.read_json(os.path.join(run_dir, "summary.json"))
        figures[oracle] = compare(fronts[oracle], summary, grid_rows, reference, FLAGS.max_drop,
                                  train_clips)
        for suffix in ("csv", "png"):
            shutil.copyfile(os.path.join(run_dir, f"front.{suffix}"),
                            os.path.join(out, f"front_{oracle}.{suffix}"))
    runfiles.write_csv_atomic(os.path.join(out, "grid.csv"),
                              sorted(grid_rows, key=lambda r: r["cost"]),
                              ["candidate", "cost", "gmacs", "storage_bytes", "valid_roc_auc",
                               "test_roc_auc", "test_pr_auc", "epochs_done", "train_seconds"])
    plot(grid_rows, fronts, os.path.join(out, "fronts.png"), how_low.COSTS.get(cost).label)
    first = figures[FLAGS.oracles[0]]
    result = {"corpus": FLAGS.name, "oracle": FLAGS.oracles[0], "cost": cost,
              "max_drop": FLAGS.max_drop, "reference_point": [round(reference[0], 6), HV_SCORE],
              "hypervolume_space": "(cost, validation ROC-AUC); cost linear",
              "train_clips": train_clips, "candidates": len(grid_rows),
              **{k: first[k] for k in ("hypervolume_ratio", "hypervolume_ratio_regraded",
                                       "compute_ratio", "gmac_ratio", "chosen", "grid_choice",
                                       "chosen_ok")},
              "comparable": _comparable(bool(FLAGS.grid_results)),
              "oracles": figures, "timings": timings,
              "dataset_dir": os.path.relpath(dataset_dir, ROOT)
              if os.path.abspath(dataset_dir).startswith(ROOT + os.sep) else dataset_dir}
    path = os.path.join(FLAGS.out_dir, "summary.json")
    everything = runfiles.read_json(path) if os.path.exists(path) else {}
    everything[FLAGS.name] = result
    runfiles.write_json_atomic(path, everything)
    logging.info("report in %s", out)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    define_flags()
    cli.run(main, pass_through=True)
