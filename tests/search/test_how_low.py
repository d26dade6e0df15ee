"""--mode=how_low: Pareto fronts on hand values, the halving oracle, and a tiny search on the
built-in corpus run by a keras-tuner chief and two workers, then resumed."""

from __future__ import annotations

import glob
import json
import os

import pytest

from conftest import ROOT, run_module
from tftag.search import how_low
from tftag.study import pareto
from tftag.experiment import TrainConfig
from tftag.features import MelConfig
from tftag.models import ModelConfig

# (cost, score) of six candidates: a, c, e on the front; b, d, f each dominated by one of them.
POINTS = [(1.0, 0.60), (2.0, 0.55), (3.0, 0.70), (4.0, 0.65), (5.0, 0.80), (6.0, 0.75)]


def test_front_ranks_and_the_cheapest_point_within_a_drop():
    assert pareto.on_front(POINTS) == [True, False, True, False, True, False]
    assert pareto.ranks(POINTS) == [0, 1, 0, 1, 0, 1]
    assert pareto.on_front([(1, 0.5), (1, 0.5), (2, 0.5)]) == [True, True, False]  # ties stay
    assert pareto.cheapest_within(POINTS, 0.0) == 4  # the best
    assert pareto.cheapest_within(POINTS, 0.10) == 2  # 0.70 >= 0.80 - 0.10: cost 3
    assert pareto.cheapest_within(POINTS, 0.0999) == 4
    assert pareto.cheapest_within(POINTS, 0.25) == 0
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        pareto.cheapest_within(POINTS, -0.01)
    with pytest.raises(ValueError, match="finite cost and score"):
        pareto.on_front([(1.0, float("nan"))])


def test_hypervolume_on_hand_values():
    # reference (10, 0.5): a strip per front point, from its cost to the next one's.
    # a: (3-1)·0.10, c: (5-3)·0.20, e: (10-5)·0.30 -> 0.2 + 0.4 + 1.5
    assert pareto.hypervolume(POINTS, (10.0, 0.5)) == pytest.approx(2.1)
    front = [p for p, f in zip(POINTS, pareto.on_front(POINTS)) if f]
    assert pareto.hypervolume(front, (10.0, 0.5)) == pytest.approx(2.1)  # dominated add nothing
    assert pareto.hypervolume([(5.0, 0.8)], (10.0, 0.5)) == pytest.approx(1.5)
    assert pareto.hypervolume([(12.0, 0.9), (1.0, 0.4)], (10.0, 0.5)) == 0.0  # outside
    assert pareto.hypervolume([], (10.0, 0.5)) == 0.0


def _candidates() -> list[how_low.Candidate]:
    mels = [MelConfig(16000, 16, hop, "log", 3.0) for hop in (1, 2, 4)]
    return [how_low.Candidate(m, ModelConfig("vgg", width=w), "float32", TrainConfig())
            for w in (0.5, 1.0) for m in mels]


def test_front_rows_keep_each_candidates_highest_fidelity_and_choose_within_max_drop():
    cands = _candidates()
    costs = {c.key: {"gmacs": c.model_config.width / c.mel_config.hop_factor,
                     "storage_bytes": 4 * 16 * c.mel_config.n_frames} for c in cands}
    keys = [c.key for c in cands]  # w0.5 hop 1, 2, 4; w1 hop 1, 2, 4
    trials = [{"trial_id": "00", "candidate": keys[0], "epochs": 1, "score": 0.70},
              {"trial_id": "01", "candidate": keys[1], "epochs": 1, "score": 0.72},
              {"trial_id": "02", "candidate": keys[2], "epochs": 1, "score": 0.60},
              {"trial_id": "03", "candidate": keys[3], "epochs": 1, "score": 0.75},
              {"trial_id": "04", "candidate": keys[1], "epochs": 3, "score": 0.78},
              {"trial_id": "05", "candidate": keys[3], "epochs": 3, "score": 0.785}]
    results = {"04": {"epochs_done": 3, "train_seconds": 4.5}}
    rows = how_low.front_rows(cands, costs, trials, results, "gmacs")
    got = [(r["candidate"], r["cost"], r["val_roc_auc"], r["epochs"], r["trials"], r["on_front"])
           for r in rows]
    assert got == [  # by cost; keys[4] and keys[5] were never evaluated
        (keys[2], 0.125, 0.60, 1, 1, True),
        (keys[1], 0.25, 0.78, 3, 2, True),
        (keys[0], 0.5, 0.70, 1, 1, False),
        (keys[3], 1.0, 0.785, 3, 2, True)]
    assert rows[1]["train_seconds"] == 4.5 and rows[0]["train_seconds"] is None
    assert how_low.answer(rows, 1.0) == (3, 1)  # 0.78 is within 1 point of 0.785
    assert how_low.answer(rows, 0.4) == (3, 3)
    assert how_low.answer(rows, 20.0) == (3, 0)
    storage = how_low.front_rows(cands, costs, trials, results, "bytes")
    assert [r["cost"] for r in storage] == [4 * 16 * n for n in (48, 95, 189, 189)]


def test_the_halving_oracle_promotes_by_pareto_rank_and_resumes(tmp_path):
    from tftag.search import tuner

    assert tuner.epochs_schedule(9, 3) == [1, 3, 9]
    assert tuner.epochs_schedule(4, 2) == [1, 2, 4]
    assert tuner.epochs_schedule(10, 3) == [2, 4, 10]
    assert tuner.epochs_schedule(1, 3) == [1]
    keys = list("abcdef")
    costs = dict(zip(keys, (c for c, _ in POINTS)))

    def oracle():
        o = tuner.ParetoHalvingOracle(keys, costs, max_epochs=4, factor=2, seed=1)
        o._set_project_dir(str(tmp_path), "tuner")
        return o

    o = oracle()

    def run(scores: dict[str, float]) -> tuple[list[tuple], str]:
        """Hands out trials to as many tuners as it takes, finishes them with ``scores``."""
        handed = []
        while True:
            trial = o.create_trial(f"tuner{len(handed)}")
            if trial.status != "RUNNING":
                break
            handed.append(trial)
        for t in handed:
            o.update_trial(t.trial_id, {"val_roc_auc": scores[t.hyperparameters["candidate"]]})
            t.status = "COMPLETED"
            o.end_trial(t)
            o.save()  # as the tuner does after end_trial
        return [(t.hyperparameters["candidate"], t.hyperparameters["tuner/epochs"],
                 t.hyperparameters["tuner/initial_epoch"],
                 t.hyperparameters.values.get("tuner/trial_id")) for t in handed], trial.status

    rung0, status = run(dict(zip(keys, (s for _, s in POINTS))))
    assert rung0 == [(k, 1, 0, None) for k in keys] and status == "IDLE"  # 6 running: wait
    ids = {k: f"{i:04d}" for i, k in enumerate(keys)}
    # rung 1: 6 // 2 = 3 of rank 0 (a, c, e), best first
    rung1, _ = run({"e": 0.82, "c": 0.78, "a": 0.61})
    assert rung1 == [("e", 2, 1, ids["e"]), ("c", 2, 1, ids["c"]), ("a", 2, 1, ids["a"])]
    o = oracle()  # a new process finds the same rungs
    o.reload()
    assert [[e["key"] for e in rung] for rung in o.rungs] == [keys, ["e", "c", "a"]]
    rung2, status = run({"e": 0.83})
    assert rung2 == [("e", 4, 2, "0006")] and status == "IDLE"
    assert o.create_trial("tuner9").status == "STOPPED"
    assert len(o.trials) == 10


def test_hyperband_stops_before_promoting_on_a_space_smaller_than_its_first_bracket(tmp_path):
    """What README and tftag.search.tuner say of --oracle=hyperband (keras-tuner's own oracle)."""
    from tftag.search import tuner

    o = tuner.hyperband_oracle(list("abcd"), max_epochs=9, factor=3, iterations=1, seed=1)
    o._set_project_dir(str(tmp_path), "tuner")
    handed = []
    while (trial := o.create_trial("tuner0")).status == "RUNNING":
        handed.append((trial.hyperparameters["candidate"], trial.hyperparameters["tuner/epochs"]))
        o.update_trial(trial.trial_id, {"val_roc_auc": 0.5 + 0.01 * len(handed)})
        trial.status = "COMPLETED"
        o.end_trial(trial)
    assert sorted(handed) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert trial.status == "STOPPED"


def test_bad_flags_name_the_flag(tmp_path):
    from absl import app, flags
    from absl.testing import flagsaver

    from tftag import cli, main

    for argv, message in (
            (["--widths=a"], "--widths must be comma-separated numbers > 0, got 'a'"),
            (["--widths=0.5,0"], "widths must be > 0, got [0.0]"),
            (["--mel_dtypes=int4"], "--mel_dtypes: unknown ['int4']; known: float16, float32, "
                                    "uint8"),
            (["--max_drop=-1"], "max_drop must be a number of ROC-AUC points >= 0, got -1.0"),
            (["--hyperband_factor=1"], "hyperband_factor must be >= 2, got 1"),
            (["--cost=latency", "--latency_runs=0"], "latency_runs must be >= 1")):
        with flagsaver.flagsaver():
            main.FLAGS(["tftag", "--mode=how_low", *argv])
            with pytest.raises(app.UsageError) as e:
                cli.how_low_search()
            assert message in str(e.value)
    with flagsaver.flagsaver(), pytest.raises(flags.IllegalFlagValueError,
                                              match=r"one of <bytes\|gmacs\|latency>"):
        main.FLAGS(["tftag", "--cost=flops"])
    run_dir = tmp_path / "run"
    proc = run_module("tftag.main", "--mode=how_low", f"--run_dir={run_dir}", "--oracle=random",
                      check=False)
    assert proc.returncode == 2 and "--oracle" in proc.stderr and "hyperband" in proc.stderr
    assert not run_dir.exists()


def test_the_quick_config_is_the_documented_search():
    from absl.testing import flagsaver

    from tftag import cli, main

    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--flagfile={os.path.join(ROOT, 'configs', 'how_low_quick.flags')}"])
        exp, search = main.build_experiment(), cli.how_low_search()
    assert len(exp.mel_configs) == 12 and {c.sr for c in exp.mel_configs} == {16000}
    assert search == how_low.SearchConfig(widths=(0.0625, 0.125))
    assert (exp.train.epochs, exp.train.patience, exp.repeats) == (9, 3, 2)


def test_a_dataset_without_the_resolutions_is_a_clear_error(tiny_dataset):
    from tftag import experiment
    from tftag.storage import data

    info = data.load_dataset_info(tiny_dataset)
    exp = experiment.Experiment((MelConfig(12000, 96, 1, "log", 3.0),), ModelConfig("vgg"))
    with pytest.raises(ValueError, match="holds none of the 1 requested resolutions; it holds "
                                         "sr16000-mel16"):
        how_low.candidates(exp, info, how_low.SearchConfig())
    exp = experiment.Experiment((MelConfig(16000, 16, 1, "db", 3.0),
                                 MelConfig(16000, 48, 1, "db", 3.0)), ModelConfig("vgg"))
    got = how_low.candidates(exp, info, how_low.SearchConfig(widths=(0.25, 0.5),
                                                             mel_dtypes=("float32", "uint8")))
    assert [c.key for c in got] == [  # 48 bands are not stored: left out
        "vgg-paper-w0.25-sr16000-mel16-hop1-db-float32",
        "vgg-paper-w0.25-sr16000-mel16-hop1-db-uint8",
        "vgg-paper-w0.5-sr16000-mel16-hop1-db-float32",
        "vgg-paper-w0.5-sr16000-mel16-hop1-db-uint8"]


SEARCH = ("--sr=16000", "--n_mels=16,48", "--hop_factors=2,4", "--compressions=log",
          "--duration=3", "--model=vgg", "--widths=0.0625,0.125", "--epochs=2",
          "--hyperband_factor=2", "--repeats=1", "--batch_size=8")


def test_a_chief_and_two_tuner_workers_search_then_a_rerun_resumes(tiny_dataset, tmp_path):
    from absl.testing import flagsaver

    from tftag import main

    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    run_module("pipelines.launch_tuner_workers", "--num_workers=2", f"--run_dir={run_dir}",
               "--echo=none", "--", f"--dataset_dir={tiny_dataset}", *SEARCH,
               f"--export_dir={export_dir}")
    assert sorted(os.listdir(run_dir / "workers")) == ["worker-0.log", "worker-1.log",
                                                       "worker-2.log"]
    # every trial ran exactly once, by a worker (the chief only serves the oracle)
    trials = sorted(os.path.basename(p) for p in glob.glob(str(run_dir / "tuner" / "trial_*")))
    assert trials == [f"trial_{i:04d}" for i in range(6)]  # 4 at 1 epoch, 2 promoted to 2
    starts = {}
    for trial in trials:
        lines = (run_dir / "trials" / trial[6:] / "runs.jsonl").read_text().splitlines()
        assert len(lines) == 1, (trial, lines)
        starts[trial] = lines[0]
        assert json.loads(lines[0])["tuner_id"] in ("tuner0", "tuner1")
    # the front: one row per evaluated candidate (48 bands are not stored: left out)
    rows = how_low.read_front_csv(str(run_dir / "front.csv"))
    assert list(rows[0]) == list(how_low.FRONT_FIELDS)
    assert sorted((r["resolution"], r["width"]) for r in rows) == [
        ("sr16000-mel16-hop2-log", 0.0625), ("sr16000-mel16-hop2-log", 0.125),
        ("sr16000-mel16-hop4-log", 0.0625), ("sr16000-mel16-hop4-log", 0.125)]
    assert all(r["model"] == "vgg" and r["mel_dtype"] == "float32" for r in rows)
    assert sorted(r["epochs"] for r in rows) == [1, 1, 2, 2]
    assert all(r["cost"] == r["gmacs"] > 0 for r in rows)
    points = [(r["cost"], r["val_roc_auc"]) for r in rows]
    assert [r["on_front"] for r in rows] == pareto.on_front(points)
    summary = json.loads((run_dir / "summary.json").read_text())
    chosen = rows[pareto.cheapest_within(points, 0.01)]
    assert summary["mode"] == "how_low" and summary["chosen"] == chosen["candidate"]
    assert chosen["on_front"]
    assert os.path.exists(os.path.join(summary["export_path"], "saved_model.pb"))
    assert summary["export_path"].startswith(str(export_dir))
    assert (run_dir / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| **chosen** | " + chosen["candidate"] in (run_dir / "front.md").read_text()
    assert len(glob.glob(str(run_dir / "tb" / "how_low" / "*" / "events.out.tfevents.*"))) == 6
    assert "--mode=how_low" in (run_dir / "flags.txt").read_text().splitlines()
    # chosen.flags parses to the chosen configuration (a --mode=train run)
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--flagfile={run_dir / 'chosen.flags'}"])
        exp = main.build_experiment()
        assert main.FLAGS.mode == "train"
    assert exp.mel_config.name == chosen["resolution"] and exp.model.width == chosen["width"]
    assert exp.data.dataset_dir == tiny_dataset and exp.run_dir == str(run_dir / "chosen")
    assert exp.train.epochs == 2 and exp.train.batch_size == 8
    # a rerun (one process) resumes: no trial runs again, same answer
    front = (run_dir / "front.csv").read_bytes()
    again = run_module("tftag.main", f"--flagfile={run_dir / 'flags.txt'}")
    assert "epoch 0:" not in again.stderr and "epoch 1:" not in again.stderr
    for trial, line in starts.items():
        assert (run_dir / "trials" / trial[6:] / "runs.jsonl").read_text().splitlines() == [line]
    assert (run_dir / "front.csv").read_bytes() == front
    assert json.loads((run_dir / "summary.json").read_text())["export_path"] == \
        summary["export_path"]


def test_the_real_music_config_searches_the_studys_fold_with_its_recipe():
    from absl.testing import flagsaver

    from tftag import cli, main
    from tftag.storage import folds
    from tftag.study import sweep

    def load(name: str):
        with flagsaver.flagsaver():
            main.FLAGS(["tftag", f"--flagfile={os.path.join(ROOT, 'configs', name)}"])
            return main.build_experiment(), cli.how_low_search()

    exp, search = load("how_low_real_music.flags")
    study, _ = load("real_music_study.flags")
    assert exp.folds == folds.FoldConfig(3, fold=0, seed=study.folds.seed)
    assert exp.train == study.train and exp.data.dataset_dir == study.data.dataset_dir
    planned = [(i.model_config, i.mel_config.name, i.train_config)
               for i in sweep.plan_items(exp.sweep_plan(), 1)]
    of_study = [(i.model_config, i.mel_config.name, i.train_config)
                for i in sweep.plan_items(study.sweep_plan(), 1)]
    assert len(planned) == 10 and all(p in of_study for p in planned)
    assert {(m.name, m.width) for m, _, _ in planned} == {("vgg", 0.125), ("musicnn", 0.25)}
    assert search == how_low.SearchConfig()
    # the VGG-CNN-only variant: the same fold, recipe and search over the study's 9 VGG-CNN runs
    vgg, vgg_search = load("how_low_real_music_vgg.flags")
    assert vgg.folds == exp.folds and vgg.train == exp.train and vgg_search == search
    only_vgg = [(i.model_config, i.mel_config.name, i.train_config)
                for i in sweep.plan_items(vgg.sweep_plan(), 1)]
    assert only_vgg == [p for p in planned if p[0].name == "vgg"] and len(only_vgg) == 9
    assert vgg.run_dir != exp.run_dir


def test_chosen_flags_on_a_fold_keep_a_patch_models_test_patches(tmp_path):
    import dataclasses

    from absl.testing import flagsaver

    from tftag import main
    from tftag.study import sweep

    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--flagfile={os.path.join(ROOT, 'configs', 'how_low_real_music.flags')}",
                    f"--run_dir={tmp_path / 'search'}"])
        exp = main.build_experiment()
    (musicnn,) = [i for i in sweep.plan_items(exp.sweep_plan(), 1) if i.model_config.name == "musicnn"]
    train_config = dataclasses.replace(musicnn.train_config, test_patches=3)
    cand = how_low.Candidate(musicnn.mel_config, musicnn.model_config, "float32", train_config)
    path = tmp_path / "chosen.flags"
    path.write_text(how_low.chosen_flagfile(exp, cand, "runs/ds", {"val_roc_auc": 0.8, "cost": 1.0}))
    with flagsaver.flagsaver():
        main.FLAGS(["tftag", f"--flagfile={path}"])
        chosen = main.build_experiment()
        assert main.FLAGS.mode == "sweep"
    (item,) = sweep.plan_items(chosen.sweep_plan(), 1)
    assert item.model_config == musicnn.model_config and item.mel_config == musicnn.mel_config
    assert item.train_config.test_patches == 3 and chosen.folds == exp.folds
    assert item.train_config.valid_patches == musicnn.train_config.valid_patches


def test_a_promotion_on_the_cached_traced_model_ends_as_a_fresh_resume(tiny_dataset, tmp_path):
    """tftag.train.StepCache: what a search's promoted trial runs on, and the same numbers."""
    import dataclasses

    import numpy as np

    from tftag import train
    from tftag.search import tuner
    from tftag.storage import data

    mel, model = MelConfig(16000, 16, 2, "log", 3.0), ModelConfig("vgg", width=0.0625)
    cfg = TrainConfig(batch_size=8, epochs=1, patience=0, seed=3)
    steps = train.StepCache()
    parent = train.train(tiny_dataset, mel, model, cfg, str(tmp_path / "parent"), steps=steps)
    key = (model, mel, data.load_dataset_info(tiny_dataset).n_tags, cfg.learning_rate,
           id(train.STRATEGIES[cfg.strategy]()))
    entry = steps.get(key)
    traces = entry[2].experimental_get_tracing_count()  # 2: the last batch is a partial one
    assert len(steps) == 1 and traces >= 1
    for name in ("cached", "fresh"):
        tuner.copy_run_dir(str(tmp_path / "parent"), str(tmp_path / name))
    more = dataclasses.replace(cfg, epochs=3)
    cached = train.train(tiny_dataset, mel, model, more, str(tmp_path / "cached"), steps=steps)
    assert steps.get(key) is entry and entry[2].experimental_get_tracing_count() == traces
    fresh = train.train(tiny_dataset, mel, model, more, str(tmp_path / "fresh"))
    assert len(cached["history"]) == len(fresh["history"]) == 3
    for a, b in zip(cached["history"], fresh["history"]):
        assert (a["loss"], a["valid_roc_auc"], a["valid_loss"]) == (
            b["loss"], b["valid_roc_auc"], b["valid_loss"])
    weights = [train.load_best(str(tmp_path / n), tiny_dataset, mel, model).get_weights()
               for n in ("cached", "fresh")]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    # A run without a checkpoint builds its own model (the cached one has trained): same
    # numbers as the parent, a new entry.
    again = train.train(tiny_dataset, mel, model, cfg, str(tmp_path / "scratch"), steps=steps)
    assert steps.get(key) is not entry
    assert again["history"][0]["loss"] == parent["history"][0]["loss"]
