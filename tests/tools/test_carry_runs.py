"""tools/carry_runs.py: unfinished runs packed into the repository and restored elsewhere."""

import json
import os

from tools import carry_runs


def _run(study, fold, key, epochs, weights=b"w" * 100):
    run_dir = os.path.join(study, fold, "runs", key)
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    with open(os.path.join(run_dir, "checkpoints", "ckpt-1.data"), "wb") as f:
        f.write(weights)
    with open(os.path.join(run_dir, "history.json"), "w") as f:
        json.dump([{"epoch": e, "val_loss": 1.0 / (e + 1)} for e in range(epochs)], f)
    return run_dir


def test_save_packs_unfinished_and_restore_brings_them_back(tmp_path):
    study, results, carry = (str(tmp_path / d) for d in ("study", "results", "carry"))
    _run(study, "fold0", "musicnn-a-fold0-seed0", 3, b"first")
    _run(study, "fold1", "vgg-b-fold1-seed0", 2)
    _run(study, "fold1", "vgg-never-trained-fold1-seed0", 0)  # no epoch yet: nothing to carry
    os.makedirs(os.path.join(results, "vgg-b-fold1-seed0"))
    open(os.path.join(results, "vgg-b-fold1-seed0", "result.json"), "w").close()  # finished

    out = carry_runs.save(study, results, carry)
    assert list(out["saved"]) == ["fold0/musicnn-a-fold0-seed0"]
    assert out["saved"]["fold0/musicnn-a-fold0-seed0"]["epochs"] == 3
    assert os.listdir(carry) == ["fold0"]
    assert carry_runs.save(study, results, carry)["saved"] == {}  # no new epoch: pack kept

    other = str(tmp_path / "new_machine")
    out = carry_runs.restore(other, results, carry)
    assert out["restored"] == {"fold0/musicnn-a-fold0-seed0": 3}
    restored = os.path.join(other, "fold0", "runs", "musicnn-a-fold0-seed0")
    with open(os.path.join(restored, "checkpoints", "ckpt-1.data"), "rb") as f:
        assert f.read() == b"first"
    assert carry_runs.epochs_trained(restored) == 3

    # a second restore, or one onto a run that trained further, leaves the directory alone
    out = carry_runs.restore(other, results, carry)
    assert out["restored"] == {} and "3 epochs" in out["skipped"]["fold0/musicnn-a-fold0-seed0"]


def test_save_prunes_the_pack_of_a_run_that_finished(tmp_path):
    study, results, carry = (str(tmp_path / d) for d in ("study", "results", "carry"))
    _run(study, "fold2", "musicnn-c-fold2-seed0", 1)
    carry_runs.save(study, results, carry)
    pack = os.path.join(carry, "fold2", "musicnn-c-fold2-seed0.tar.gz")
    assert os.path.exists(pack)
    assert "finished" not in carry_runs.restore(str(tmp_path / "x"), results, carry)["skipped"]
    os.makedirs(os.path.join(results, "musicnn-c-fold2-seed0"))
    open(os.path.join(results, "musicnn-c-fold2-seed0", "result.json"), "w").close()
    assert "finished" in carry_runs.restore(str(tmp_path / "y"), results, carry)["skipped"][
        "fold2/musicnn-c-fold2-seed0"]
    out = carry_runs.save(study, results, carry)
    assert out == {"saved": {}, "pruned_finished": ["fold2/musicnn-c-fold2-seed0"]}
    assert not os.path.exists(pack)


def test_pack_retries_when_a_checkpoint_rotates_while_it_is_packed(tmp_path, monkeypatch):
    run_dir = _run(str(tmp_path / "study"), "fold0", "vgg-d-fold0-seed0", 2, b"old")
    real_add, calls = carry_runs.tarfile.TarFile.add, []

    def rotating_add(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 1:  # the run finishes an epoch: new checkpoint, old one deleted
            os.rename(os.path.join(run_dir, "checkpoints", "ckpt-1.data"),
                      os.path.join(run_dir, "checkpoints", "ckpt-2.data"))
            _run_history(run_dir, 3)
        return real_add(self, name, *args, **kwargs)

    monkeypatch.setattr(carry_runs.tarfile.TarFile, "add", rotating_add)
    data, (epochs, steps) = carry_runs.pack_run(run_dir, pause_seconds=0)
    assert (epochs, steps) == (3, 0) and len(calls) > 2  # the first, inconsistent pack was taken again
    import io
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert "checkpoints/ckpt-2.data" in tar.getnames()
        assert "checkpoints/ckpt-1.data" not in tar.getnames()


def test_save_skips_a_run_that_never_holds_still(tmp_path, monkeypatch):
    study, results, carry = (str(tmp_path / d) for d in ("study", "results", "carry"))
    _run(study, "fold0", "vgg-e-fold0-seed0", 2)
    monkeypatch.setattr(carry_runs, "pack_run", lambda run_dir: None)
    out = carry_runs.save(study, results, carry)
    assert out["saved"] == {} and "try again" in out["skipped"]["fold0/vgg-e-fold0-seed0"]
    assert not os.path.exists(carry)


def _run_history(run_dir, epochs):
    with open(os.path.join(run_dir, "history.json"), "w") as f:
        json.dump([{"epoch": e} for e in range(epochs)], f)


def test_save_never_replaces_a_pack_with_an_older_run(tmp_path):
    study, results, carry = (str(tmp_path / d) for d in ("study", "results", "carry"))
    _run(study, "fold0", "vgg-f-fold0-seed0", 5, b"new")
    carry_runs.save(study, results, carry)
    stale = str(tmp_path / "stale_copy")  # the same run restored into another study dir, behind
    _run(stale, "fold0", "vgg-f-fold0-seed0", 3, b"old")
    out = carry_runs.save(stale, results, carry)
    assert out["saved"] == {} and "kept the pack" in out["skipped"]["fold0/vgg-f-fold0-seed0"]
    assert carry_runs.restore(str(tmp_path / "next"), results, carry)["restored"] == {
        "fold0/vgg-f-fold0-seed0": 5}


def test_a_mid_epoch_checkpoint_is_carried_and_restored(tmp_path):
    """A run inside its first epoch (progress.json: steps of the epoch in progress) is packed,
    re-packed when it has more steps, and restored over a directory that is behind it."""
    study, results, carry = (str(tmp_path / d) for d in ("study", "results", "carry"))
    run_dir = _run(study, "fold1", "musicnn-m-fold1-seed0", 0, b"step200")
    assert carry_runs.progress(run_dir) == (0, 0) and carry_runs.unfinished_runs(study, results) == {}
    with open(os.path.join(run_dir, "progress.json"), "w") as f:
        json.dump({"epoch": 0, "step": 200}, f)
    out = carry_runs.save(study, results, carry)
    assert out["saved"]["fold1/musicnn-m-fold1-seed0"]["steps"] == 200
    assert carry_runs.save(study, results, carry)["saved"] == {}  # nothing new
    with open(os.path.join(run_dir, "progress.json"), "w") as f:
        json.dump({"epoch": 0, "step": 400}, f)
    assert carry_runs.save(study, results, carry)["saved"]["fold1/musicnn-m-fold1-seed0"][
        "steps"] == 400
    behind = _run(str(tmp_path / "next"), "fold1", "musicnn-m-fold1-seed0", 0, b"older")
    with open(os.path.join(behind, "progress.json"), "w") as f:
        json.dump({"epoch": 0, "step": 200}, f)
    out = carry_runs.restore(str(tmp_path / "next"), results, carry)
    assert out["restored"] == {"fold1/musicnn-m-fold1-seed0": [0, 400]}
    assert carry_runs.progress(behind) == (0, 400)
    # a finished epoch makes an older epoch's progress.json stale: it counts no steps
    with open(os.path.join(behind, "history.json"), "w") as f:
        json.dump([{"epoch": 0}], f)
    assert carry_runs.progress(behind) == (1, 0)
