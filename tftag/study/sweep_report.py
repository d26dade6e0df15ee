r"""The report of a fixed-budget sweep: tables, the paper's claims tested, plots (``--mode=report``).

A cross-validated study (trained to convergence, K folds by track group), rebuilt from its
committed per-run files alone (:mod:`tftag.study.report`)::

    .venv/bin/python -m tftag.main --mode=report \
        --runs_dir=benchmarks/results/real_music/runs --name=real_music

``--compare=NAME=RUNS_DIR`` adds another cross-validated study: each configuration both ran,
paired clip by clip, with both training costs (e.g. the training crops against the study)::

    .venv/bin/python -m tftag.main --mode=report \
        --runs_dir=benchmarks/results/real_music_crops/runs --name=real_music_crops \
        --compare=study=benchmarks/results/real_music/runs

A fixed-budget sweep (the old format, e.g. ``real_music_fixed_budget``), from its run directory::

    .venv/bin/python -m tftag.main --mode=report --run_dir=runs/real_music --name=real_music \
        --compare=synthetic=runs/synthetic_study

The rest of this docstring describes the fixed-budget report.

Reads a finished sweep (``<run_dir>/runs/*/result.json``, ``configs.json`` and the dataset's
``dataset.json``) and writes ``benchmarks/results/<name>/``:

- ``results.md``: what ran (clips per split, labels, training recipe), the sweep table (ROC-AUC /
  PR-AUC mean ± std, GMAC, KiB per clip, t-test against the most-bands hop-×1 baseline, teacher
  agreement), the paper's claims tested on this data (each pair's ROC-AUC change, its p-value
  and the GMAC saved), and the lowest-cost resolution per model with no loss (not significantly
  below the baseline and at most `--max_drop` points below its mean);
- ``results.csv`` (every run), ``summary.csv`` (one row per model × resolution),
  ``claims.csv`` (the tested claims);
- ``roc_vs_gmacs.png``: left, ROC-AUC vs GMAC per model; right, the ROC-AUC change against
  96 bands × hop 1 vs the fraction of its GMACs, for this study and every ``--compare`` study.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import numpy as np

from tftag.study import analysis



# The paper's claims, as (model, from, to, claim) (tftag.study.analysis.PAPER_CLAIMS).
CLAIMS = analysis.PAPER_CLAIMS


def load_results(run_dir: str) -> list[dict]:
    """Every finished run of a sweep directory."""
    paths = sorted(glob.glob(os.path.join(run_dir, "runs", "*", "result.json")))
    if not paths:
        raise ValueError(f"--run_dir={run_dir}: no runs/*/result.json (not a finished sweep)")
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def _runs(results: Sequence[dict], model: str, n_mels: int, hop: int) -> list[float]:
    return [r["test_roc_auc"] for r in results
            if r["model"] == model and r["n_mels"] == n_mels and r["hop_factor"] == hop]


def _gmacs(results: Sequence[dict], model: str, n_mels: int, hop: int) -> float | None:
    return next((r["gmacs"] for r in results if r["model"] == model and r["n_mels"] == n_mels
                 and r["hop_factor"] == hop), None)


def test_claims(results: Sequence[dict]) -> list[dict]:
    """Each claim whose two resolutions both ran: ROC-AUC change (points and %), p-value
    (independent-samples t-test, as the paper), GMAC ratio."""
    from scipy import stats

    rows = []
    for model, a, b, claim in CLAIMS:
        ra, rb = _runs(results, model, *a), _runs(results, model, *b)
        if not ra or not rb:
            continue
        p = (float(stats.ttest_ind(rb, ra).pvalue) if len(ra) > 1 and len(rb) > 1 else None)
        ma, mb = float(np.mean(ra)), float(np.mean(rb))
        rows.append({
            "model": model, "from": f"{a[0]}×{a[1]}", "to": f"{b[0]}×{b[1]}", "claim": claim,
            "roc_from": 100 * ma, "roc_to": 100 * mb, "delta_points": 100 * (mb - ma),
            "delta_percent": 100 * (mb - ma) / ma, "p_value": p,
            "gmac_ratio": _gmacs(results, model, *b) / _gmacs(results, model, *a),
            "n": f"{len(ra)}+{len(rb)}",
        })
    return rows


def lowest_without_loss(rows: Sequence[dict], alpha: float, max_drop: float = 1.0) -> dict[str, dict]:
    """Per model: the cheapest row (GMAC) not significantly below the baseline (p ≥ alpha, or a
    higher mean) whose mean ROC-AUC is also within ``max_drop`` points of the baseline's (with
    few repeats a t-test cannot reject even large drops), the baseline included."""
    best: dict[str, dict] = {}
    base = {r["model"]: r for r in rows if r["baseline"] and r["p_value"] is None
            and r["resolution"].startswith(r["baseline"] + "-")}
    for r in rows:
        b = base.get(r["model"])
        if b is None:
            continue
        drop = 100 * (b["roc_auc_mean"] - r["roc_auc_mean"])
        ok = r is b or drop <= 0 or (
            r["p_value"] is not None and r["p_value"] >= alpha and drop <= max_drop)
        if ok and (r["model"] not in best or r["gmacs"] < best[r["model"]]["gmacs"]):
            best[r["model"]] = r
    return best


def _recipe(run_dir: str) -> str:
    cfg = json.load(open(os.path.join(run_dir, "configs.json"), encoding="utf-8"))
    dataset_json = os.path.join(cfg["data"]["dataset_dir"] or os.path.join(run_dir, "dataset"),
                                "dataset.json")
    info = json.load(open(dataset_json, encoding="utf-8")) if os.path.exists(dataset_json) else {}
    t = cfg["train"]
    splits = info.get("splits", {})
    lines = [
        f"- data: catalogue `{cfg['data']['catalog']}`"
        + (f" ({len(cfg['data']['packages'])} packages)" if cfg["data"]["packages"] else "")
        + f", {sum(splits.values())} clips (train {splits.get('train')}, valid "
          f"{splits.get('valid')}, test {splits.get('test')}), {len(info.get('tags', []))} tags, "
          f"labels `{info.get('labels', cfg['data']['labels'])}`"
        + (f" (hard labels: top-{cfg['data']['teacher_top_k']} per clip)"
           if cfg["data"]["labels"].startswith("teacher") else ""),
        f"- training: loss `{t['loss']}`, batch {t['batch_size']}, up to {t['epochs']} epochs × "
        f"{t['steps_per_epoch'] or 'all'} steps, Adam {t['learning_rate']:g}, patience "
        f"{t['patience']}, {cfg['repeats']} repeats (seeds {t['seed']}…); model "
        f"`{cfg['model']['name']}` width {cfg['model']['width']:g}"
        + "".join(f"; `{o['name']}`: " + ", ".join(f"{k}={v}" for k, v in o.items()
                                                     if k != "name" and v not in (None, [], ()))
                  for o in cfg.get("sweep_overrides", [])),
        "- test: every clip of the test split, every non-overlapping patch; ROC-AUC / PR-AUC "
        "against the hard labels (macro over tags present in the split)",
    ]
    return "\n".join(lines)


def claims_table(claims: Sequence[dict]) -> str:
    if not claims:
        return "(none of the claims' resolution pairs ran in this study)"
    lines = ["| model | from → to | ROC-AUC % from → to | Δ points (Δ %) | p | GMAC × | paper |",
             "|---|---|---|---|---|---|---|"]
    for c in claims:
        p = "–" if c["p_value"] is None else f"{c['p_value']:.3f}"
        lines.append(f"| {c['model']} | {c['from']} → {c['to']} | {c['roc_from']:.2f} → "
                     f"{c['roc_to']:.2f} | {c['delta_points']:+.2f} ({c['delta_percent']:+.1f} %) | "
                     f"{p} | {c['gmac_ratio']:.2f} | {c['claim']} |")
    return "\n".join(lines)


def _relative(results: Sequence[dict], model: str = "vgg") -> list[tuple[float, float, float, str]]:
    """(GMAC fraction, Δ ROC-AUC points mean, std, label) against 96×1 of ``model``."""
    base = _runs(results, model, 96, 1)
    g0 = _gmacs(results, model, 96, 1)
    if not base or not g0:
        return []
    out = []
    for n_mels, hop in sorted({(r["n_mels"], r["hop_factor"]) for r in results if r["model"] == model}):
        roc = np.array(_runs(results, model, n_mels, hop))
        out.append((_gmacs(results, model, n_mels, hop) / g0, 100 * (roc.mean() - np.mean(base)),
                    100 * (roc.std(ddof=1) if len(roc) > 1 else 0.0), f"{n_mels}×{hop}"))
    return out


def plot(rows: Sequence[dict], results: Sequence[dict], name: str,
         others: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    for model in sorted({r["model"] for r in rows}):
        rs = [r for r in rows if r["model"] == model]
        ax.errorbar([r["gmacs"] for r in rs], [100 * r["roc_auc_mean"] for r in rs],
                    yerr=[100 * r["roc_auc_std"] for r in rs], fmt="o", capsize=3,
                    label=f"{model} (w{rs[0]['width']:g})")
        for r in rs:
            ax.annotate(f"{r['n_mels']}×{r['hop_factor']}", (r["gmacs"], 100 * r["roc_auc_mean"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("GMAC per 29.1-s clip (log)")
    ax.set_ylabel("test ROC-AUC % (mean ± std)")
    ax.set_title(f"{name}: ROC-AUC vs compute (labels: bands × hop)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for (label, res), marker in zip([(name, results), *others.items()], "osd^v"):
        pts = _relative(res)
        if not pts:
            continue
        bx.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    fmt=marker, capsize=3, alpha=0.8, label=f"{label} (VGG-CNN)")
        for x, y, _, text in pts:
            bx.annotate(text, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    bx.axhline(0, color="k", lw=0.8)
    bx.axhspan(-1.8, -1.4, xmin=0, xmax=1, color="tab:red", alpha=0.08,
               label="paper: hop ×10 costs 1.4–1.8 % (MTAT)")
    bx.set_xscale("log")
    bx.set_xlabel("GMAC as a fraction of 96 bands × hop 1 (log)")
    bx.set_ylabel("Δ test ROC-AUC vs 96×1 (points)")
    bx.set_title("ROC-AUC change vs compute saved")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    fig.tight_layout()
    from tftag.runs import runfiles

    runfiles.save_figure_atomic(fig, path, dpi=90)


def build(run_dir: str, out_dir: str, name: str, compare: Sequence[tuple[str, str]] = (),
          alpha: float = 0.05, max_drop: float = 1.0) -> dict:
    """Writes the fixed-budget report of the sweep in ``run_dir`` into ``out_dir``.

    Args:
      compare: (name, run_dir) of other fixed-budget sweeps, drawn and tested beside it.
      alpha: significance level of "no significant loss".
      max_drop: "no loss" also needs the mean ROC-AUC within this many points of the baseline's.

    Returns:
      A one-line summary (the claims, the lowest resolution without a loss per model).
    """
    from tftag.runs import runfiles
    from tftag.study import sweep

    results = load_results(run_dir)
    others = {label: load_results(path) for label, path in compare}
    os.makedirs(out_dir, exist_ok=True)
    rows = sweep.summarize(results)
    claims = test_claims(results)
    lowest = lowest_without_loss(rows, alpha, max_drop)
    sections = [f"# Study `{name}`", "", _recipe(run_dir), "",
                "## Every resolution", "", sweep.markdown_table(rows), "",
                "## The paper's claims on this data", "",
                "Independent-samples t-test on the repeats (as the paper); Δ = to − from.", "",
                claims_table(claims), "", "## Lowest cost without a significant loss", ""]
    for model, r in sorted(lowest.items()):
        sections.append(f"- {model}: {r['resolution']} — {100 * r['roc_auc_mean']:.2f} % ROC-AUC, "
                        f"{r['gmacs']:.4f} GMAC, {r['storage_bytes'] / 1024:.0f} KiB per clip "
                        f"(p = {'–' if r['p_value'] is None else format(r['p_value'], '.3f')} vs "
                        f"{r['baseline']}; α = {alpha:g}, at most {max_drop:g} "
                        "points below it)")
    for label, res in others.items():
        sections += ["", f"## Beside: `{label}`", "", claims_table(test_claims(res))]
    runfiles.write_text_atomic(os.path.join(out_dir, "results.md"), "\n".join(sections))
    sweep.write_csv(results, os.path.join(out_dir, "results.csv"))
    runfiles.write_csv_atomic(os.path.join(out_dir, "summary.csv"), rows,
                              list(dict.fromkeys(k for r in rows for k in r)))
    runfiles.write_csv_atomic(os.path.join(out_dir, "claims.csv"), claims,
                              list(claims[0]) if claims else ["model"])
    png = os.path.join(out_dir, "roc_vs_gmacs.png")
    plot(rows, results, name, others, png)
    return {"study": name, "runs": len(results), "rows": len(rows),
            "claims": [{k: c[k] for k in ("model", "from", "to", "delta_points", "p_value")}
                       for c in claims],
            "lowest_without_loss": {m: r["resolution"] for m, r in lowest.items()},
            "png_bytes": os.path.getsize(png), "out": out_dir}
