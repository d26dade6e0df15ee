"""The keras-tuner side of ``--mode=how_low``: a tuner whose trials train with :mod:`tftag.train`,
and the oracles that decide what to train for how many epochs.

The search space is one keras-tuner ``Choice`` named ``candidate`` over the keys of the
candidates (:class:`tftag.search.how_low.Candidate`: resolution, model, width, storage codec). Both
oracles are multi-fidelity: a trial trains its candidate for ``tuner/epochs`` epochs in total; a
trial that continues another (``tuner/trial_id``, a promotion) starts from a copy of that
trial's run directory, so its training resumes at ``tuner/initial_epoch`` from the parent's
checkpoint (bit-identical to an uninterrupted run: :func:`tftag.train.train`). The objective is
the validation macro ROC-AUC of the trial's best epoch (maximised).

Oracles:
  ``hyperband``: keras-tuner's own ``HyperbandOracle`` (random candidates, successive halving
    by ROC-AUC alone, brackets of several aggressiveness). It stops when it draws no new
    candidate, so on a space smaller than its first bracket it never promotes.
  ``pareto``: :class:`ParetoHalvingOracle`, successive halving over *every* candidate where a
    rung promotes by Pareto rank of (cost, partial ROC-AUC): candidates dominated in both are
    pruned first, so the cheap end of the front is trained as far as the accurate end.

Distributed (keras-tuner's own mode): every process runs the same command; the one whose
``KERASTUNER_TUNER_ID`` contains ``chief`` serves the oracle on ``KERASTUNER_ORACLE_IP``:
``KERASTUNER_ORACLE_PORT`` and the others (ids ``tuner0``, ``tuner1``, ...) ask it for trials
and run them into the shared run directory (``pipelines/launch_tuner_workers.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Mapping, Sequence

import keras_tuner as kt

from tftag import train
from tftag.runs import runfiles
from tftag.study import pareto

OBJECTIVE = "val_roc_auc"
HP_NAME = "candidate"  # the one hyperparameter: a candidate's key
PROJECT = "tuner"  # keras-tuner's own state: <run_dir>/tuner/
TRIALS = "trials"  # tftag's run directory of each trial: <run_dir>/trials/<trial_id>/
RESULT_JSON = "result.json"  # a finished trial's outcome, in its run directory
RUNS_JSONL = "runs.jsonl"  # one line per (re)start of a trial: who ran it, when
# A worker's wait before asking again when the oracle has nothing to hand out (a rung still
# running). Short: once the search is over, keras-tuner's chief checks every second whether all
# workers were told to stop, and if one was not yet it waits 20 s before checking again.
IDLE_SECONDS = 0.2


def role() -> str:
    """This process's part in a keras-tuner search: ``alone`` (no chief oracle in the
    environment), ``chief`` (serves the oracle) or ``worker`` (runs trials)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "alone"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def epochs_schedule(max_epochs: int, factor: int) -> list[int]:
    """The epochs of each rung of successive halving: ``max_epochs / factor^k`` rounded up, for
    k from the largest that still gives >= 1 epoch down to 0, without repeats.

    >>> epochs_schedule(9, 3), epochs_schedule(2, 2), epochs_schedule(1, 3)
    ([1, 3, 9], [1, 2], [1])
    """
    if max_epochs < 1 or factor < 2:
        raise ValueError(f"max_epochs must be >= 1 and factor >= 2, got {max_epochs}, {factor}")
    k = 0
    while max_epochs / factor ** (k + 1) >= 1:
        k += 1
    return sorted({math.ceil(max_epochs / factor ** i) for i in range(k + 1)})


def space(keys: Sequence[str]) -> kt.HyperParameters:
    """The search space: one ``Choice`` over the candidate keys."""
    hp = kt.HyperParameters()
    hp.Choice(HP_NAME, list(keys))
    return hp


class ParetoHalvingOracle(kt.Oracle):
    """Successive halving over every candidate, promoting by Pareto rank of (cost, ROC-AUC).

    Rung 0 trains every candidate for the first epochs of :func:`epochs_schedule`; when a rung
    has finished, the best ``max(1, n // factor)`` of its completed trials go on to the next
    rung's epochs, ranked by non-dominated sorting of (cost, partial ROC-AUC) (ties: the higher
    ROC-AUC, then the lower cost, then the key). Rungs are synchronous: while one is still
    running, a worker that asks for a trial is told to wait (``IDLE``). The rungs are the
    oracle's state (saved and reloaded by keras-tuner, so a rerun resumes).

    Args:
      keys: the candidates, in the order rung 0 hands them out.
      costs: each candidate's cost (lower is better).
      max_epochs: epochs of the last rung.
      factor: the halving factor (>= 2).
      seed: keras-tuner's seed (unused by the schedule, which is deterministic).
    """

    def __init__(self, keys: Sequence[str], costs: Mapping[str, float], max_epochs: int,
                 factor: int = 3, seed: int | None = None):
        super().__init__(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=space(keys),
                         allow_new_entries=False, tune_new_entries=False, seed=seed)
        missing = [k for k in keys if k not in costs]
        if missing:
            raise ValueError(f"no cost for candidates {missing}")
        self.keys, self.costs = list(keys), {k: float(costs[k]) for k in keys}
        self.epochs = epochs_schedule(max_epochs, factor)
        self.factor = factor
        # rungs[r]: [{"key", "trial_id" (None until handed out), "parent"}]; rung 0 is everyone.
        self.rungs: list[list[dict]] = [[{"key": k, "trial_id": None, "parent": None}
                                         for k in self.keys]]

    def _finished(self, entry: dict) -> bool:
        trial = self.trials.get(entry["trial_id"]) if entry["trial_id"] else None
        return trial is not None and trial.status in ("COMPLETED", "FAILED")

    def promote(self, rung: Sequence[dict]) -> list[dict]:
        """The entries of the next rung: the best completed trials of ``rung``."""
        done = [e for e in rung if self.trials[e["trial_id"]].status == "COMPLETED"
                and self.trials[e["trial_id"]].score is not None]
        if not done:
            return []
        scores = [float(self.trials[e["trial_id"]].score) for e in done]
        rank = pareto.ranks([(self.costs[e["key"]], s) for e, s in zip(done, scores)])
        order = sorted(range(len(done)), key=lambda i: (rank[i], -scores[i],
                                                        self.costs[done[i]["key"]], done[i]["key"]))
        keep = max(1, len(rung) // self.factor)
        return [{"key": done[i]["key"], "trial_id": None, "parent": done[i]["trial_id"]}
                for i in order[:keep]]

    def populate_space(self, trial_id: str) -> dict:
        for r, rung in enumerate(self.rungs):
            for entry in rung:
                if entry["trial_id"] is None:
                    entry["trial_id"] = trial_id
                    values = {HP_NAME: entry["key"], "tuner/epochs": self.epochs[r],
                              "tuner/initial_epoch": self.epochs[r - 1] if r else 0,
                              "tuner/bracket": 0, "tuner/round": r}
                    if entry["parent"]:
                        values["tuner/trial_id"] = entry["parent"]
                    return {"status": "RUNNING", "values": values}
            if not all(self._finished(e) for e in rung):
                return {"status": "IDLE"}
            if r + 1 == len(self.rungs) and r + 1 < len(self.epochs):
                promoted = self.promote(rung)  # rung r is done: the next one, once
                if promoted:
                    self.rungs.append(promoted)
        return {"status": "STOPPED"}

    def get_state(self) -> dict:
        state = super().get_state()
        state.update(keys=self.keys, costs=self.costs, epochs=self.epochs, factor=self.factor,
                     rungs=self.rungs)
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)  # (tftag.search.how_low checks that the candidates are the same)
        self.keys, self.costs, self.epochs = state["keys"], state["costs"], state["epochs"]
        self.factor, self.rungs = state["factor"], state["rungs"]


def worker_oracle(keys: Sequence[str]) -> kt.Oracle:
    """The oracle a worker is built with: keras-tuner replaces it by a client of the chief's."""
    return kt.Oracle(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=space(keys),
                     allow_new_entries=False, tune_new_entries=False)


def hyperband_oracle(keys: Sequence[str], max_epochs: int, factor: int, iterations: int,
                     seed: int | None) -> kt.Oracle:
    """keras-tuner's HyperbandOracle over the candidates."""
    return kt.oracles.HyperbandOracle(
        objective=kt.Objective(OBJECTIVE, "max"), max_epochs=max_epochs, factor=factor,
        hyperband_iterations=iterations, seed=seed, hyperparameters=space(keys),
        allow_new_entries=False, tune_new_entries=False)


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """What a trial of one candidate trains: where the data is, at which resolution, which model
    and with which settings (``epochs`` is replaced by the trial's ``tuner/epochs``), and on
    which cross-validation fold (None: the dataset's train and valid splits)."""

    dataset_dir: str
    mel_config: Any  # tftag.features.MelConfig
    model_config: Any  # tftag.models.ModelConfig
    train_config: train.TrainConfig
    fold: Any = None  # tftag.storage.folds.FoldParts | None


def copy_run_dir(source: str, target: str) -> None:
    """A copy of a trial's run directory (checkpoints, best weights, history, TensorBoard) as
    ``target``, made under a temporary name and renamed; the trial's own record (its
    result.json and runs.jsonl) stays behind, so a training resumed in ``target`` continues the
    trial's as an uninterrupted run would."""
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(RESULT_JSON, RUNS_JSONL))
    os.replace(tmp, target)


class TrialRunner(kt.Tuner):
    """A keras-tuner ``Tuner`` whose ``run_trial`` trains a candidate with :func:`tftag.train.train`
    in ``<run_dir>/trials/<trial_id>/`` (a tftag run directory: checkpoints, best weights,
    history, TensorBoard) and reports its best validation ROC-AUC. It keeps every model it
    built with its traced step (:class:`tftag.train.StepCache`), so a promotion it runs resumes
    its parent's checkpoint on them instead of building and tracing the model again.

    Args:
      oracle: a keras-tuner oracle over :func:`space` of ``specs``' keys.
      specs: {candidate key: :class:`TrialSpec`}.
      run_dir: the search's run directory (keras-tuner's state in ``tuner/``).
    """

    def __init__(self, oracle: kt.Oracle, specs: Mapping[str, TrialSpec], run_dir: str):
        self.specs = dict(specs)
        self.run_dir = run_dir
        self.steps = train.StepCache()  # a promotion continues on its parent's traced model
        self._asked = self._begun = self._begun_at_last_ask = 0
        super().__init__(oracle=oracle, directory=run_dir, project_name=PROJECT, overwrite=False)
        oracle_json = os.path.join(run_dir, PROJECT, "oracle.json")
        if (not os.path.exists(self._get_tuner_fname()) and os.path.exists(oracle_json)
                and not self._is_worker()):  # another tuner id saved it (a chief, or alone)
            self.oracle.reload()

    def trial_dir(self, trial_id: str) -> str:
        """tftag's run directory of a trial."""
        return os.path.join(self.run_dir, TRIALS, trial_id)

    def pre_create_trial(self) -> None:
        # BaseTuner asks again at once when the oracle answered IDLE: wait a little instead.
        if self._asked and self._begun == self._begun_at_last_ask:
            time.sleep(IDLE_SECONDS)
        self._asked += 1
        self._begun_at_last_ask = self._begun

    def on_trial_begin(self, trial) -> None:
        self._begun += 1
        super().on_trial_begin(trial)

    def run_trial(self, trial, *args, **kwargs) -> dict:
        import keras

        values = trial.hyperparameters.values
        key = values[HP_NAME]
        spec = self.specs[key]
        run_dir = self.trial_dir(trial.trial_id)
        parent = values.get("tuner/trial_id")
        if parent and not os.path.exists(run_dir):  # a promotion: continue the parent's training
            copy_run_dir(self.trial_dir(parent), run_dir)
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, RUNS_JSONL), "a", encoding="utf-8") as f:
            f.write(json.dumps({"tuner_id": self.tuner_id, "pid": os.getpid(),
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        epochs = int(values.get("tuner/epochs", spec.train_config.epochs))
        cfg = dataclasses.replace(spec.train_config, epochs=epochs)
        outcome = train.train(spec.dataset_dir, spec.mel_config, spec.model_config, cfg, run_dir,
                              fold=spec.fold, steps=self.steps)
        result = {"trial_id": trial.trial_id, "candidate": key, "parent": parent,
                  "epochs": epochs, "initial_epoch": int(values.get("tuner/initial_epoch", 0)),
                  OBJECTIVE: outcome["best_valid_roc_auc"], "best_epoch": outcome["best_epoch"],
                  "epochs_done": outcome["epochs_done"], "stop_reason": outcome["stop_reason"],
                  "train_seconds": outcome["train_seconds"], "tuner_id": self.tuner_id}
        runfiles.write_json_atomic(os.path.join(run_dir, RESULT_JSON), result)
        keras.backend.clear_session()
        return {OBJECTIVE: outcome["best_valid_roc_auc"]}

    def save_model(self, trial_id, model, step=0) -> None:
        """Nothing: the trial's run directory holds its checkpoints and best weights."""

    def load_model(self, trial):
        raise NotImplementedError("load a trial's model with tftag.train.load_best(<its run dir>)")


def search(oracle: kt.Oracle, specs: Mapping[str, TrialSpec], run_dir: str) -> TrialRunner:
    """Runs (or resumes) the search until the oracle stops it; returns the tuner.

    Alone, this process runs every trial; as the chief it serves the oracle until the workers
    have finished; as a worker it runs the trials the chief hands out.
    """
    tuner = TrialRunner(oracle, specs, run_dir)
    tuner.search(verbose=0)
    if not tuner._is_worker():
        # The oracle saves its state in end_trial *before* it lets go of the trial: saved last
        # by the chief's server, that state would have a rerun run the last trial again.
        tuner.oracle.save()
    return tuner


def finished_trials(oracle: kt.Oracle) -> list[dict]:
    """The completed trials of an oracle as ``{"trial_id", "candidate", "epochs", "score"}``, in
    trial order."""
    out = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        if trial.status != "COMPLETED" or trial.score is None:
            continue
        values = trial.hyperparameters.values
        out.append({"trial_id": trial_id, "candidate": values[HP_NAME],
                    "epochs": int(values.get("tuner/epochs", 0)), "score": float(trial.score)})
    return out
