"""Sweeps over (model × resolution × repeat): train, evaluate, compare with the baseline, plot.

Every run lives in ``<sweep_dir>/runs/<key>/`` and ends with an atomically written
``result.json``; a rerun skips finished runs and resumes an interrupted one from its last
checkpoint, so nothing is computed twice. The summary groups repeats per (model, resolution):
mean ± std of test ROC-AUC and PR-AUC, GMACs, storage per clip and training time, and an
independent-samples t-test against the baseline of its group (the most bands at hop ×1, same
model, sample rate and compression), as the paper compares 48 with 96 bands.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np
from absl import logging

from tftag import evaluate, train
from tftag.runs import runfiles
from tftag.storage.dataset_dir import load_dataset_info
from tftag.features import MelConfig
from tftag.models import ModelConfig, build

RESULT_FIELDS = ("model", "width", "preset", "resolution", "sr", "n_mels", "hop_factor",
                 "compression", "seed", "test_roc_auc", "test_pr_auc", "valid_roc_auc",
                 "best_epoch", "epochs_done", "train_seconds", "gmacs", "storage_bytes",
                 "patch_frames", "skipped_tags", "top5_overlap", "prob_correlation", "test_patches")
# Agreement with the teacher (teacher-labelled datasets only; None otherwise).
AGREEMENT_FIELDS = ("top5_overlap", "prob_correlation")


@dataclasses.dataclass(frozen=True)
class SweepItem:
    """One training run of a sweep."""

    model_config: ModelConfig
    mel_config: MelConfig
    seed: int
    train_config: train.TrainConfig | None = None  # this model's settings; None = the sweep's

    @property
    def patch_frames(self) -> int | None:
        """Input patch frames at this resolution (the model config's rule)."""
        return self.model_config.patch_frames(self.mel_config)

    @property
    def key(self) -> str:
        m = self.model_config
        return f"{m.name}-{m.preset}-w{m.width:g}-{self.mel_config.name}-seed{self.seed}"


def plan_items(plan: Sequence[tuple[ModelConfig, Sequence[MelConfig], train.TrainConfig]],
               repeats: int, seed: int = 0) -> list[SweepItem]:
    """Items of :meth:`tftag.experiment.Experiment.sweep_plan`: per model, its resolutions ×
    repeats with its own training settings."""
    return [SweepItem(m, c, seed + r, t) for m, configs, t in plan for c in configs
            for r in range(repeats)]


def costs(item: SweepItem, info) -> dict:
    """{"gmacs", "storage_bytes"} of an item: the model over the whole clip (patch models cost
    the same per frame) and the stored mel of one clip at its resolution."""
    from tftag import profile

    full_clip = build(dataclasses.replace(item.model_config, patch_seconds=None), item.mel_config,
                      info.n_tags)
    c = item.mel_config
    return {"gmacs": round(profile.analytic_macs(full_clip) / 1e9, 5),
            "storage_bytes": info.codec.bytes_per_value * c.n_frames * c.n_mels}


def run_item(item: SweepItem, dataset_dir: str, train_config: train.TrainConfig, run_dir: str) -> dict:
    """Trains one item (resuming if interrupted), evaluates its best weights on the test split."""
    cfg = dataclasses.replace(item.train_config or train_config, seed=item.seed)
    info = load_dataset_info(dataset_dir)
    outcome = train.train(dataset_dir, item.mel_config, item.model_config, cfg, run_dir)
    model = train.load_best(run_dir, dataset_dir, item.mel_config, item.model_config)
    metrics = evaluate.evaluate(model, dataset_dir, item.mel_config, "test", info.tags,
                                item.patch_frames, cfg.eval_batch_size, cfg.test_patches)
    runfiles.write_bytes_atomic(os.path.join(run_dir, "per_tag.txt"),
                                (evaluate.format_per_tag(metrics) + "\n").encode())
    m, c = item.model_config, item.mel_config
    return {
        "model": m.name, "width": m.width, "preset": m.preset, "resolution": c.name,
        "sr": c.sr, "n_mels": c.n_mels, "hop_factor": c.hop_factor, "compression": c.compression,
        "seed": item.seed, "test_roc_auc": metrics.roc_auc, "test_pr_auc": metrics.pr_auc,
        "valid_roc_auc": outcome["best_valid_roc_auc"], "best_epoch": outcome["best_epoch"],
        "epochs_done": outcome["epochs_done"], "train_seconds": outcome["train_seconds"],
        **costs(item, info), "mel_dtype": info.codec.name, "patch_frames": item.patch_frames,
        "skipped_tags": len(metrics.skipped_tags),
        "top5_overlap": metrics.top5_overlap, "prob_correlation": metrics.prob_correlation,
        "test_patches": cfg.test_patches if item.patch_frames else None,
    }



def item_run_dir(sweep_dir: str, item: SweepItem) -> str:
    """Where a sweep item trains and keeps its result: ``<sweep_dir>/runs/<key>``."""
    return os.path.join(sweep_dir, "runs", item.key)


def run_sweep(items: Sequence[SweepItem], dataset_dir: str, train_config: train.TrainConfig,
              sweep_dir: str) -> list[dict]:
    """Runs every item not finished yet; returns all results in item order."""
    import keras

    results = []
    done = sum(os.path.exists(os.path.join(item_run_dir(sweep_dir, i), "result.json"))
               for i in items)
    logging.info("sweep: %d runs, %d done already", len(items), done)
    for n, item in enumerate(items, start=1):
        run_dir = item_run_dir(sweep_dir, item)
        path = os.path.join(run_dir, "result.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                results.append(json.load(f))
            continue
        logging.info("sweep [%d/%d] %s", n, len(items), item.key)
        result = run_item(item, dataset_dir, train_config, run_dir)
        runfiles.write_json_atomic(path, result)
        results.append(result)
        keras.backend.clear_session()
    return results


def _group_key(r: dict) -> tuple:
    return (r["model"], r["preset"], r["width"], r["sr"], r["compression"])


def summarize(results: Iterable[dict]) -> list[dict]:
    """One row per (model, resolution): means, stds, costs and the t-test against the baseline."""
    from scipy import stats

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(_group_key(r) + (r["n_mels"], r["hop_factor"]), []).append(r)
    baselines = {}
    for key in groups:
        g, n_mels, hop = key[:-2], key[-2], key[-1]
        best = baselines.get(g)
        if hop == 1 and (best is None or n_mels > best[0]):
            baselines[g] = (n_mels, hop)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: (kv[0][:-2], -kv[0][-2], kv[0][-1])):
        roc = np.array([r["test_roc_auc"] for r in runs])
        pr = np.array([r["test_pr_auc"] for r in runs])
        row = {
            "model": runs[0]["model"], "preset": runs[0]["preset"], "width": runs[0]["width"],
            "resolution": runs[0]["resolution"], "sr": runs[0]["sr"], "n_mels": runs[0]["n_mels"],
            "hop_factor": runs[0]["hop_factor"], "compression": runs[0]["compression"],
            "repeats": len(runs),
            "roc_auc_mean": float(roc.mean()), "roc_auc_std": float(roc.std(ddof=1)) if len(roc) > 1 else 0.0,
            "pr_auc_mean": float(pr.mean()), "pr_auc_std": float(pr.std(ddof=1)) if len(pr) > 1 else 0.0,
            "gmacs": runs[0]["gmacs"], "storage_bytes": runs[0]["storage_bytes"],
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
            "baseline": None, "p_value": None,
        }
        for name in AGREEMENT_FIELDS:  # teacher-labelled data: mean ± std over the repeats
            values = np.array([r[name] for r in runs if r.get(name) is not None])
            if len(values):
                row[f"{name}_mean"] = float(values.mean())
                row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        base = baselines.get(key[:-2])
        if base is not None:
            row["baseline"] = f"sr{key[3]}-mel{base[0]}-hop{base[1]}"
            base_runs = groups[key[:-2] + base]
            if base != (key[-2], key[-1]) and len(runs) > 1 and len(base_runs) > 1:
                p = stats.ttest_ind(roc, [r["test_roc_auc"] for r in base_runs]).pvalue
                row["p_value"] = None if math.isnan(p) else float(p)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """The paper-style table: ROC-AUC and PR-AUC in % (mean ± std), GMACs, KiB per clip, time;
    plus the teacher agreement (top-5 overlap, probability correlation) when any row has it."""
    agreement = [n for n in AGREEMENT_FIELDS if any(f"{n}_mean" in r for r in rows)]
    titles = {"top5_overlap": "top-5 overlap", "prob_correlation": "prob. corr."}
    header = ("| model | resolution | n | ROC-AUC % | PR-AUC % | GMAC | KiB/clip | train s | "
              "p vs baseline |" + "".join(f" {titles[n]} |" for n in agreement)
              + "\n|---|---|---|---|---|---|---|---|---|" + "---|" * len(agreement))
    lines = [header]
    for r in rows:
        p = "baseline" if r["baseline"] and r["resolution"].startswith(r["baseline"] + "-") else (
            f"{r['p_value']:.3f}" if r["p_value"] is not None else "–")
        extra = "".join(f" {r[f'{n}_mean']:.3f} ± {r[f'{n}_std']:.3f} |" if f"{n}_mean" in r
                        else " – |" for n in agreement)
        lines.append(
            f"| {r['model']} ({r['preset']}, w{r['width']:g}) | {r['resolution']} | {r['repeats']} | "
            f"{100 * r['roc_auc_mean']:.2f} ± {100 * r['roc_auc_std']:.2f} | "
            f"{100 * r['pr_auc_mean']:.2f} ± {100 * r['pr_auc_std']:.2f} | {r['gmacs']:.3f} | "
            f"{r['storage_bytes'] / 1024:.0f} | {r['train_seconds_mean']:.0f} | {p} |" + extra)
    return "\n".join(lines)


def write_csv(results: Sequence[dict], path: str) -> None:
    """All individual results as CSV (atomic)."""
    runfiles.write_csv_atomic(path, results, RESULT_FIELDS)


def plot(rows: Sequence[dict], out_dir: str) -> list[str]:
    """ROC-AUC vs GMACs and vs storage per clip, one point (± std) per resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for x_key, label, name in (("gmacs", "GMAC per clip (log)", "roc_vs_gmacs.png"),
                               ("storage_bytes", "KiB per clip (float32, log)", "roc_vs_storage.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict[tuple, list[dict]] = {}
        for r in rows:
            series.setdefault((r["model"], r["sr"], r["compression"]), []).append(r)
        for (model, sr, comp), rs in sorted(series.items()):
            xs = [r[x_key] / (1024 if x_key == "storage_bytes" else 1) for r in rs]
            ax.errorbar(xs, [100 * r["roc_auc_mean"] for r in rs],
                        yerr=[100 * r["roc_auc_std"] for r in rs], fmt="o", capsize=3,
                        label=f"{model} {sr // 1000} kHz {comp}")
            for x, r in zip(xs, rs):
                ax.annotate(f"{r['n_mels']}×{r['hop_factor']}", (x, 100 * r["roc_auc_mean"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test ROC-AUC % (mean ± std)")
        ax.set_title("ROC-AUC vs " + ("compute" if x_key == "gmacs" else "storage")
                     + " (labels: bands × hop factor)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        paths.append(runfiles.save_figure_atomic(fig, path, dpi=100))
    return paths


def best_run(results: Sequence[dict], rows: Sequence[dict]) -> tuple[dict, dict]:
    """The best row (highest mean test ROC-AUC) and its best single run (highest test ROC-AUC)."""
    best = max(rows, key=lambda r: r["roc_auc_mean"])
    run = max((r for r in results if r["resolution"] == best["resolution"]
               and r["model"] == best["model"] and r["preset"] == best["preset"]
               and r["width"] == best["width"]), key=lambda r: r["test_roc_auc"])
    return best, run


def best_runs(results: Sequence[dict]) -> list[dict]:
    """The best single run (highest test ROC-AUC) of every (model, preset, width, resolution)."""
    best: dict[tuple, dict] = {}
    for r in results:
        key = (r["model"], r["preset"], r["width"], r["resolution"])
        if key not in best or r["test_roc_auc"] > best[key]["test_roc_auc"]:
            best[key] = r
    return list(best.values())


def _item_of(items: Sequence[SweepItem], result: dict) -> SweepItem:
    return next(i for i in items if i.model_config.name == result["model"]
                and i.model_config.width == result["width"]
                and i.mel_config.name == result["resolution"] and i.seed == result["seed"])


def run(experiment) -> dict:
    """``--mode=sweep``: every (model × resolution × repeat) of the experiment, the summary table,
    plots and TensorBoard notes, and the export of the best run's checkpoint (of every
    (model, resolution)'s best run with ``export.per_resolution``; listed in ``exports.json``).

    Returns:
      The sweep's summary (files, best row, best checkpoint, export path).
    """
    from tftag.delivery import export
    from tftag.extraction import extract

    dataset_dir = extract.ensure_dataset(experiment)
    items = plan_items(experiment.sweep_plan(), experiment.repeats, experiment.train.seed)
    results = run_sweep(items, dataset_dir, experiment.train, experiment.run_dir)
    rows = summarize(results)
    table = markdown_table(rows)
    print(table)
    write_csv(results, experiment.path("results.csv"))
    runfiles.write_json_atomic(experiment.path("summary_rows.json"), rows)
    runfiles.write_text_atomic(experiment.path("results.md"), table)
    plots = plot(rows, experiment.run_dir)
    runfiles.tensorboard_notes(experiment.path("tb", "sweep"), texts={"results": table},
                               images={os.path.basename(p)[:-4]: p for p in plots})
    best, run_ = best_run(results, rows)
    item = _item_of(items, run_)
    best_checkpoint = os.path.join(item_run_dir(experiment.path(), item), "best.weights.h5")
    exports: dict[str, str] = {}
    if experiment.export.enabled:
        # A rerun of a finished sweep keeps the exports it made (finished runs never change).
        done = (runfiles.read_json(experiment.path("exports.json"))
                if os.path.exists(experiment.path("exports.json")) else {})
        chosen = best_runs(results) if experiment.export.per_resolution else [run_]
        for r in chosen:
            i, name = _item_of(items, r), f"{r['model']}-{r['resolution']}"
            if name in done and os.path.isdir(done[name]):
                exports[name] = done[name]
                continue
            exports[name] = export.export_weights(
                experiment, i.mel_config, i.model_config,
                os.path.join(item_run_dir(experiment.path(), i), "best.weights.h5"), dataset_dir,
                {"test_roc_auc": r["test_roc_auc"], "test_pr_auc": r["test_pr_auc"]})
        runfiles.write_json_atomic(experiment.path("exports.json"), exports)
    export_path = exports.get(f"{run_['model']}-{run_['resolution']}")
    print(f"results: {experiment.path('results.md')}; plots: {', '.join(plots)}; "
          f"TensorBoard: {export.installed_command('tensorboard')} --logdir {experiment.run_dir}; "
          f"exported: {export_path}" + (f" (+{len(exports) - 1} more, see "
                                        f"{experiment.path('exports.json')})"
                                        if len(exports) > 1 else ""))
    return {"runs": len(results), "rows": len(rows),
            "results_csv": experiment.path("results.csv"),
            "results_table": experiment.path("results.md"), "plots": plots,
            "best": {k: best[k] for k in ("model", "resolution", "roc_auc_mean", "pr_auc_mean")},
            "dataset_dir": dataset_dir, "best_checkpoint": best_checkpoint,
            "export_path": export_path, "exports": exports}

