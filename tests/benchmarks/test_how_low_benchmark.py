"""benchmarks/how_low.py: the grid it compares the search with is read from a cross-validated
study's runs of one fold (the runs it needs, and the errors when they are missing)."""

from __future__ import annotations

import os

import pytest

from tftag.search import how_low
from tftag.experiment import TrainConfig
from tftag.features import MelConfig
from tftag.models import ModelConfig


def test_the_benchmark_reads_its_grid_from_a_studys_runs_of_one_fold(tiny_dataset, tmp_path):
    """benchmarks/how_low.py --grid_results: a fake study of two candidates on fold 0."""
    import dataclasses

    from benchmarks import how_low as bench
    from tftag import experiment
    from tftag.runs import runfiles
    from tftag.storage import data, folds
    from tftag.study import crossval

    mels = (MelConfig(16000, 16, 2, "log", 3.0), MelConfig(16000, 16, 4, "log", 3.0))
    train = TrainConfig(batch_size=8, epochs=6, patience=3, loss="bce", monitor="valid_loss",
                        patience_unit="passes")
    search_dir = str(tmp_path / "search")
    exp = experiment.Experiment(mels, ModelConfig("vgg", width=0.125), train,
                                experiment.DataConfig(dataset_dir=tiny_dataset),
                                run_dir=search_dir, folds=folds.FoldConfig(3, fold=0))
    exp.save(search_dir)
    info = data.load_dataset_info(tiny_dataset)
    cands = how_low.candidates(exp, info, how_low.SearchConfig())
    parts = {"fold": 0, "folds": 3, "train": ["c", "d", "e"], "valid": ["f"], "test": ["a", "b"]}
    runfiles.write_json_atomic(os.path.join(search_dir, how_low.FOLD_JSON), parts)
    runfiles.write_json_atomic(os.path.join(search_dir, how_low.SEARCH_JSON), {
        "candidates": [c.key for c in cands], "dataset_dir": tiny_dataset,
        "search": dataclasses.asdict(how_low.SearchConfig()), "fold": {"fold": 0, "folds": 3}})
    costs = {c.key: {"gmacs": 0.01 * (i + 1), "storage_bytes": 100} for i, c in enumerate(cands)}
    runfiles.write_json_atomic(os.path.join(search_dir, how_low.COSTS_JSON), costs)
    study = tmp_path / "study"
    runfiles.write_json_atomic(str(study / crossval.FOLDS_JSON), {"clips": {
        c: {"group": c, "fold": 0 if c in "ab" else 1 + (c > "d")} for c in "abcdef"}})
    keys = [f"vgg-w0.125-{m.name}-fold0-seed0" for m in mels]

    def write_run(key: str, **changes) -> dict:
        result = {"valid_roc_auc": 0.8, "test_roc_auc": 0.75, "train_seconds": 30.0,
                  "epochs_done": 5, "gmacs": 0.01, "loss": "bce", "max_epochs": 6,
                  "n_train_clips": 3, "n_valid_clips": 1, "fold": 0, **changes}
        runfiles.write_json_atomic(str(study / key / crossval.RESULT_JSON), result)
        return result

    write_run(keys[0], valid_roc_auc=0.81)
    recipe = tmp_path / "recipe.flags"  # the search's flags: what it will need, before it runs
    recipe.write_text("--mode=how_low\n--resolutions=" + ",".join(m.name for m in mels)
                      + "\n--duration=3\n--width=0.125\n--folds=3\n--fold=0\n")
    assert bench.missing_study_runs(str(study), 0, [f"--flagfile={recipe}"]) == [keys[1]]
    with pytest.raises(ValueError, match=rf"1 of the search's 2 candidates have no finished run "
                                         rf"in {study}: {keys[1]} \(the study has not finished"):
        bench.grid_from_results(str(study), 0, search_dir)
    write_run(keys[1], valid_roc_auc=0.78, train_seconds=12.5, max_epochs=60)
    with pytest.raises(ValueError, match=rf"{keys[1]} was trained otherwise than the search "
                                         r"\(study, search\): \{'max_epochs': \(60, 6\)\}"):
        bench.grid_from_results(str(study), 0, search_dir)
    write_run(keys[1], valid_roc_auc=0.78, train_seconds=12.5)
    rows, got_costs = bench.grid_from_results(str(study), 0, search_dir)
    assert [(r["candidate"], r["valid_roc_auc"], r["train_seconds"]) for r in rows] == [
        (cands[0].key, 0.81, 30.0), (cands[1].key, 0.78, 12.5)]
    assert got_costs == costs
    assert how_low.search_compute(rows, 3) == {"train_seconds": 42.5,
                                               "clip_gmacs": round(2 * 5 * 3 * 0.01, 3)}
    with pytest.raises(ValueError, match="ran on fold 0, not on fold 1"):
        bench.grid_from_results(str(study), 1, search_dir)
    parts["test"] = ["a"]  # another split than the study's
    runfiles.write_json_atomic(os.path.join(search_dir, how_low.FOLD_JSON), parts)
    with pytest.raises(ValueError, match=r"fold 0 of the search \(1 test clips\) is not the "
                                         r"study's \(2\)"):
        bench.grid_from_results(str(study), 0, search_dir)
