"""The report of a cross-validated resolution study, rebuilt from its committed per-run files.

Called by ``--mode=report --runs_dir=...`` (:func:`run`, the fixed-budget report's dispatcher too);
:func:`build` reads
``<runs_dir>/*/result.json`` and ``test_predictions.npz`` (:mod:`tftag.study.analysis`) and writes into
``out_dir``:

- ``runs.csv``: one row per run, the contract's columns (:data:`tftag.study.analysis.RUNS_COLUMNS`) and more;
- ``report.json``: ``folds``, ``mde_points`` (the design's: from the seed-to-seed null
  comparison when a configuration ran with two seeds, else the claims' largest),
  ``mde_claims_points``, ``seed_to_seed``, ``claims``, ``between_models`` (the paper's
  MUSICNN-vs-VGG-CNN claim at each resolution both ran, :func:`between_models`), ``front`` (the
  accuracy/compute front across models, :func:`front`), ``pooled`` (keyed by set name
  ``<model>-w<width>-<resolution>``, ``-seed<s>`` appended for seeds other than 0, plus ``model``, ``resolution`` and the rest of the
  summary), ``vs_baseline``, ``lowest_without_loss`` (sets that finished every fold only),
  ``students`` (issue 24's rule: the resolutions to ship, :func:`student_choices`),
  ``against`` (per other study given: each configuration both ran, paired clip by clip,
  :func:`against_study`), ``frequent_tags`` (the comparisons again over the tags with ≥ 50
  positives, :func:`frequent_view`), ``per_tag_vs_baseline`` (each tag's ROC-AUC change per
  resolution against its baseline, :func:`per_tag_view`), ``teacher_ceiling`` (the teacher's own
  score against its labels, :func:`teacher_ceiling`), ``second_labellers`` (every claim under
  each ``labels_<name>.npz`` beside the report, :func:`second_labeller`; each claim also carries
  its figures under ``second_labellers``), ``without_pilot_fold`` (the claims without fold 0's
  test clips, :func:`without_fold`) and the statistical settings (``unit``: every comparison's
  primary figures resample track groups, a cluster bootstrap; ``by_unit`` beside them: the same
  by clip and by package);
- ``results.md``: the tables and the cheapest resolution without a significant loss;
- ``learning_curves.png`` (validation loss per epoch of every run, one panel per model, a
  marker where the learning rate was lowered) and
  ``roc_vs_gmacs.png`` (pooled ROC-AUC with 95 % CIs against GMAC, log x) and
  ``per_tag_vs_baseline.png`` (which tags each resolution loses: a heat map per model).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

from tftag.runs import runfiles
from tftag.study import analysis, pareto, stats
from tftag.features import MelConfig

# The reference each resolution of a model is compared with for "no significant loss".
BASELINES = {"vgg": (96, 1), "musicnn": (128, 1)}


@dataclasses.dataclass(frozen=True)
class Options:
    """Statistical settings of the report.

    Attributes:
      n_resamples: bootstrap resamples.
      seed: the resamples' seed (the same for every set, so comparisons share resamples).
      unit: what a draw resamples (:data:`tftag.study.analysis.RESAMPLE_UNITS`): track groups
        by default (a track's clips are not independent), the primary figures.
      also_units: the units whose bootstrap figures every comparison carries beside the
        primary ones (``by_unit``): clips and packages by default.
      top_k: hard labels = the teacher's top-k tags per clip.
      alpha: significance level (two-sided).
      power: power of the minimum detectable effect.
      min_positives: the macro metrics average the tags with at least this many positives
        among the clips compared (1: every tag present, the primary analysis).
      frequent_min_positives: the sensitivity view's ``min_positives`` (:func:`frequent_view`;
        1 or less: no such view).
    """

    n_resamples: int = 1000
    seed: int = 0
    unit: str = analysis.PRIMARY_UNIT
    also_units: tuple[str, ...] = analysis.SECONDARY_UNITS
    top_k: int = 3
    alpha: float = 0.05
    power: float = 0.8
    min_positives: int = 1
    frequent_min_positives: int = analysis.FREQUENT_TAG_MIN_POSITIVES

    def kwargs(self) -> dict:
        return {"top_k": self.top_k, "n_resamples": self.n_resamples, "seed": self.seed,
                "unit": self.unit, "min_positives": self.min_positives}


def _compare(a: analysis.RunSet, b: analysis.RunSet, opts: Options) -> dict:
    """:func:`tftag.study.analysis.compare` under ``opts`` (primary unit and ``by_unit``)."""
    return analysis.compare(a, b, alpha=opts.alpha, power=opts.power,
                            also_units=opts.also_units, **opts.kwargs())


def _per_tag(a: analysis.RunSet, b: analysis.RunSet, opts: Options) -> list[dict]:
    """:func:`tftag.study.analysis.per_tag` under ``opts`` (its tests resample ``opts.unit``)."""
    return analysis.per_tag(a, b, opts.top_k, opts.min_positives, opts.n_resamples, opts.seed,
                            opts.unit)


def _res_shape(resolution: str) -> tuple[int, int]:
    m = MelConfig.from_name(resolution)
    return m.n_mels, m.hop_factor


def _shape(s: analysis.RunSet) -> tuple[int, int]:
    return _res_shape(s.resolution)


def _label(s: analysis.RunSet) -> str:
    n_mels, hop = _shape(s)
    return f"{n_mels}×{hop}"


def _partner(sets: Sequence[analysis.RunSet], like: analysis.RunSet, shape: tuple[int, int],
             model: str | None = None):
    """The set of ``like``'s model and width (or of ``model``, at the width it ran), seed,
    sample rate and compression at ``shape``."""
    m = MelConfig.from_name(like.resolution)
    for s in sets:
        o = MelConfig.from_name(s.resolution)
        arch = (s.model, s.width) == (like.model, like.width) if model is None else s.model == model
        if arch and (s.seed, o.sr, o.compression, (o.n_mels, o.hop_factor)) == \
                (like.seed, m.sr, m.compression, shape):
            return s
    return None


def claims(sets: Sequence[analysis.RunSet], opts: Options) -> list[dict]:
    """Each paper claim whose two resolutions ran (per width and seed), with all its p-values."""
    out = []
    for model, a, b, claim in analysis.PAPER_CLAIMS:
        for base in (s for s in sets if s.model == model and _shape(s) == a):
            other = _partner(sets, base, b)
            if other is not None:
                c = _compare(base, other, opts)
                out.append({"model": model, "width": base.width, "seed": base.seed,
                            "from_shape": f"{a[0]}×{a[1]}", "to_shape": f"{b[0]}×{b[1]}",
                            "claim": claim, **c})
    return out


def between_models(sets: Sequence[analysis.RunSet], opts: Options) -> list[dict]:
    """Each paper claim between the architectures (:data:`tftag.study.analysis.MODEL_CLAIMS`) whose two
    models ran at its resolution (per seed): the second model against the first, paired clip by
    clip, with both PR-AUCs on the same clips beside (the claim has a PR-AUC half) and the
    per-tag ROC-AUCs (``per_tag``, :func:`tftag.study.analysis.per_tag`: where the difference comes from)."""
    out = []
    for a_model, b_model, shape, claim in analysis.MODEL_CLAIMS:
        for base in (s for s in sets if s.model == a_model and _shape(s) == shape):
            other = _partner(sets, base, shape, model=b_model)
            if other is None:
                continue
            c = _compare(base, other, opts)
            out.append({"model": f"{a_model} → {b_model}", "width": base.width, "seed": base.seed,
                        "label": f"{a_model} (w{base.width:g}) → {b_model} (w{other.width:g})",
                        "from_shape": _label(base), "to_shape": _label(other), "claim": claim, **c,
                        "per_tag": _per_tag(base, other, opts)})
    return out


def between_models_plain(sets: Sequence[analysis.RunSet], opts: Options) -> list[dict]:
    """:func:`between_models` without the per-tag tests."""
    out = []
    for a_model, b_model, shape, claim in analysis.MODEL_CLAIMS:
        for base in (s for s in sets if s.model == a_model and _shape(s) == shape):
            other = _partner(sets, base, shape, model=b_model)
            if other is not None:
                out.append({"from_shape": _label(base), "to_shape": _label(other), "claim": claim,
                            **_compare(base, other, opts)})
    return out


def vs_baseline(sets: Sequence[analysis.RunSet], opts: Options) -> list[dict]:
    """Every set against its model's baseline resolution (:data:`BASELINES`), with the per-tag
    ROC-AUCs and tests (``per_tag``, :func:`tftag.study.analysis.per_tag`)."""
    out = []
    for s in sets:
        base = _partner(sets, s, BASELINES[s.model]) if s.model in BASELINES else None
        if base is None or base is s:
            continue
        out.append({"model": s.model, "width": s.width, "seed": s.seed,
                    "from_shape": _label(base), "to_shape": _label(s),
                    **_compare(base, s, opts), "per_tag": _per_tag(base, s, opts)})
    return out


def repeatability(sets: Sequence[analysis.RunSet], opts: Options) -> list[dict]:
    """Each set with another seed of the same model, width and resolution against its lowest
    seed: a null comparison (nothing but training randomness differs), whose paired SE is the
    design's noise floor and whose Δ is the seed-to-seed variation the clip bootstrap of one
    trained model cannot see."""
    out = []
    by_config: dict[tuple, list[analysis.RunSet]] = {}
    for s in sets:
        by_config.setdefault((s.model, s.width, s.resolution), []).append(s)
    for (model, width, _), group in sorted(by_config.items()):
        group = sorted(group, key=lambda s: s.seed)
        for other in group[1:]:
            out.append({"model": model, "width": width, "seed": other.seed,
                        "from_shape": f"{_label(group[0])} seed {group[0].seed}",
                        "to_shape": f"{_label(other)} seed {other.seed}",
                        **_compare(group[0], other, opts)})
    return out


def largest_mde(comparisons: Sequence[dict]) -> float | None:
    """The largest ``mde_points`` of ``comparisons`` (None if there are none)."""
    return max((c["mde_points"] for c in comparisons), default=None)


def design_mde(repeats: Sequence[dict], folds: int,
               claims_mde: float | None) -> tuple[float | None, bool]:
    """The design's minimum detectable effect (points) and whether it comes from a null
    comparison: the largest MDE of the seed-to-seed comparisons paired over all ``folds`` folds
    (a repeat with folds still to run compares fewer clips, so its MDE is not the design's; it
    is reported, not used), else ``claims_mde``, the largest over the claims tested."""
    null = largest_mde([c for c in repeats if c["folds_paired"] == folds])
    return (null, True) if null is not None else (claims_mde, False)


def against_study(sets: Sequence[analysis.RunSet], others: Sequence[analysis.RunSet], other: str,
                  opts: Options) -> list[dict]:
    """Each set against the same configuration (model, width, resolution, seed) in another
    study ``other`` (e.g. one trained on more audio, or with another recipe), paired on their
    common test clips: what the studies' difference did to that configuration, and at what
    training cost (``train_seconds_*``, ``epochs_*``: the K runs' total and mean)."""
    by_config = {(o.model, o.width, o.resolution, o.seed): o for o in others}
    out = []
    for s in sets:
        o = by_config.get((s.model, s.width, s.resolution, s.seed))
        if o is None:
            continue
        out.append({"model": s.model, "width": s.width, "seed": s.seed, "study": other,
                    "from_shape": f"{_label(o)} `{other}`", "to_shape": f"{_label(s)} this",
                    **_compare(o, s, opts),
                    "train_seconds_from": o.train_seconds, "train_seconds_to": s.train_seconds,
                    "epochs_from": o.epochs_done_mean, "epochs_to": s.epochs_done_mean})
    return out


def frequent_view(sets: Sequence[analysis.RunSet], opts: Options) -> dict | None:
    """The comparisons again, averaging only the tags with ``opts.frequent_min_positives`` or
    more positives among the clips compared (a sensitivity check of the primary analysis, whose
    macro average weighs a tag with one positive like one with 500; MTAT's tags, the paper's,
    are all frequent): ``mde_points`` (from the seed-to-seed null comparison, else the claims'
    largest), ``seed_to_seed``, ``claims``, ``between_models``, ``vs_baseline``,
    ``lowest_without_loss`` and ``pooled`` (ROC-AUC and PR-AUC with CIs, ``n_tags``). The
    fold-level t-tests are not recomputed (the runs' own ROC-AUCs average every tag). None when
    the view is off or a set has no such tag."""
    n = opts.frequent_min_positives
    if n <= 1 or not all((s.labels(opts.top_k).sum(axis=0) >= n).any() for s in sets):
        return None
    f = dataclasses.replace(opts, min_positives=n)
    pooled = {r["set"]: r for r in (analysis.summarize_set(s, **f.kwargs()) for s in sets)}
    against, repeats, tested = vs_baseline(sets, f), repeatability(sets, f), claims(sets, f)
    mde, _ = design_mde(repeats, max(s.folds for s in sets), largest_mde(tested or against))
    return {
        "min_positives": n, "mde_points": mde,
        "seed_to_seed": repeats, "claims": tested, "between_models": between_models(sets, f),
        "vs_baseline": against, "lowest_without_loss": lowest_without_loss(pooled, against, opts.alpha),
        "pooled": {k: {m: r[m] for m in ("n_tags", "roc_auc", "ci95", "pr_auc", "pr_ci95")}
                   for k, r in pooled.items()},
    }


def _ceiling_set(sets: Sequence[analysis.RunSet]) -> analysis.RunSet:
    """The set whose pooled clips the ceilings are computed on: the one with the most clips
    (every set that finished its folds holds every clip once), seed 0 first."""
    return max(sets, key=lambda s: (len(s.clip_ids), -s.seed))


def teacher_ceiling(sets: Sequence[analysis.RunSet], opts: Options) -> dict:
    """The teacher's own pooled ROC-AUC against its hard labels (its top-k per clip, from the
    soft labels stored with every run's test predictions, the folds' test clips pooled), all
    tags and frequent tags: the ceiling of every student (:func:`tftag.study.analysis.ceiling`)."""
    s = _ceiling_set(sets)
    most = int(s.labels(opts.top_k).sum(axis=0).max())
    views = {"all_tags": opts.min_positives}
    if 1 < opts.frequent_min_positives <= most:  # the frequent-tag view, when it has a tag
        views["frequent_tags"] = opts.frequent_min_positives
    return {view: analysis.ceiling(s, None, opts.top_k, opts.n_resamples, opts.seed, opts.unit, n)
            for view, n in views.items()}


def verdict(c: dict, alpha: float) -> str:
    """A comparison's call by its primary test: ``loss``, ``gain`` or ``no significant
    difference``."""
    if c["p_bootstrap"] >= alpha:
        return "no significant difference"
    return "loss" if c["delta_points"] < 0 else "gain"


def _resolution_order(rows: Sequence[dict]) -> dict[str, float]:
    """Pooled ROC-AUC of each seed-0 set that finished every fold."""
    return {r["set"]: r["roc_auc"] for r in rows if r["seed"] == 0 and _complete(r)}


def rank_correlation(first: dict[str, float], second: dict[str, float]) -> dict:
    """Spearman's rank correlation of the sets' pooled ROC-AUC under two labellers: over every
    set both score, and per model (the key before the first ``-``)."""
    common = sorted(set(first) & set(second))
    out = {"all": {"n_sets": len(common),
                   "spearman": stats.spearman([first[k] for k in common], [second[k] for k in common])}}
    for model in sorted({k.split("-")[0] for k in common}):
        ks = [k for k in common if k.split("-")[0] == model]
        out[model] = {"n_sets": len(ks),
                      "spearman": stats.spearman([first[k] for k in ks], [second[k] for k in ks])}
    return out


def _under_both(first: Sequence[dict], second: Sequence[dict], alpha: float) -> list[dict]:
    """Each comparison of ``first`` (teacher labels) beside the same under the second labeller."""
    key = ("from", "to")
    by_key = {tuple(c[k] for k in key): c for c in second}
    out = []
    for c in first:
        o = by_key[tuple(c[k] for k in key)]
        out.append({"from": c["from"], "to": c["to"], "from_shape": c["from_shape"],
                    "to_shape": c["to_shape"], "claim": c.get("claim"),
                    "delta_points_teacher": c["delta_points"], "p_teacher": c["p_bootstrap"],
                    "verdict_teacher": verdict(c, alpha),
                    "delta_points": o["delta_points"], "ci95_points": o["ci95_points"],
                    "p_bootstrap": o["p_bootstrap"], "mde_points": o["mde_points"],
                    "verdict": verdict(o, alpha),
                    "holds_under_both": verdict(c, alpha) == verdict(o, alpha)})
    return out


def second_labeller(sets: Sequence[analysis.RunSet], labels, opts: Options, first_rows: Sequence[dict],
                    tested: Sequence[dict], tested_models: Sequence[dict],
                    frequent: dict | None) -> dict:
    """Every run's stored test predictions scored against another labeller's top-k tags
    (``labels``: :class:`tftag.study.labellers.Labels`, no retraining): the claims and the
    between-model claims under it (primary unit only), whether each holds under both
    labellers (the same call: loss, gain or no significant difference), the rank correlation
    of the resolutions' order (pooled ROC-AUC per set) under the two, and the labeller's own
    ceiling and the teacher's score against its labels."""
    relabelled = [analysis.relabel(s, labels) for s in sets]
    o = dataclasses.replace(opts, also_units=())
    rows = [analysis.summarize_set(s, **o.kwargs()) for s in relabelled]
    order = _resolution_order(rows)
    base = _ceiling_set(sets)
    out_base = analysis.relabel(base, labels)
    out = {
        "name": labels.name,
        "labels": f"{labels.name} top-{opts.top_k} per clip",
        "claims": _under_both(tested, claims(relabelled, o), opts.alpha),
        "between_models": _under_both(tested_models, between_models_plain(relabelled, o),
                                      opts.alpha),
        "rank_correlation": rank_correlation(_resolution_order(first_rows), order),
        "pooled_roc_auc": {r["set"]: r["roc_auc"] for r in rows},
        "ceiling": analysis.ceiling(out_base, None, opts.top_k, opts.n_resamples, opts.seed,
                                    opts.unit),
        "teacher_against_it": analysis.ceiling(out_base, base.teacher, opts.top_k,
                                               opts.n_resamples, opts.seed, opts.unit),
    }
    if frequent is not None:
        f = dataclasses.replace(o, min_positives=opts.frequent_min_positives)
        out["frequent_tags"] = {"claims": _under_both(frequent["claims"], claims(relabelled, f),
                                                      opts.alpha)}
    return out


def _frequent_md(view: dict | None, opts: Options) -> list[str]:
    """results.md's section of :func:`frequent_view`."""
    title = f"## Frequent tags only (≥ {opts.frequent_min_positives} positives): a sensitivity check"
    if view is None:
        return [title, "", f"(off, or some set has no tag with {opts.frequent_min_positives} "
                "positives among its clips)"]
    mde = "–" if view["mde_points"] is None else f"{view['mde_points']:.2f}"
    rows = view["between_models"] + view["vs_baseline"] + view["seed_to_seed"]
    lines = [title, "",
             f"The same paired comparisons, the macro average taken over the tags with at least "
             f"{view['min_positives']} positives among the clips compared (`n_tags`, last column) "
             "instead of every tag present: a tag with a handful of positives has a ROC-AUC that "
             "is the rank of those few clips, yet counts as much as any other in the primary "
             "average. MTAT's 50 tags (the paper's) are all frequent. Fold-level t-tests are "
             f"not recomputed (–). **Minimum detectable effect in this view: {mde} points** "
             "(the same rule as above).", "",
             comparison_table(rows, first="n_tags"), ""]
    for key, r in sorted(view["lowest_without_loss"].items()):
        lines.append(f"- cheapest without a significant loss in this view, {key}: `{r['set']}` "
                     f"— Δ {r['delta_points']:+.2f} points [{r['ci95_points'][0]:+.2f}, "
                     f"{r['ci95_points'][1]:+.2f}] (p = {_fmt_p(r['p_bootstrap'])}).")
    return lines


def _per_tag_md(rows: Sequence[dict], alpha: float, n: int = 5) -> list[str]:
    """One line per pair: its ``n`` largest per-tag losses and gains (tag, positives, Δ), in
    bold those called at false discovery rate ``alpha`` (:func:`tftag.study.analysis.per_tag`)."""
    def fmt(ts: Sequence[dict]) -> str:
        def one(t: dict) -> str:
            text = f"{t['tag']} ({t['positives']}) {t['roc_to'] - t['roc_from']:+.1f}"
            return f"**{text}**" if _called(t, alpha) else text
        return ", ".join(one(t) for t in ts) or "none"

    out = []
    for c in rows:
        ts = c["per_tag"]
        losses = [t for t in ts[:n] if t["roc_to"] < t["roc_from"]]
        gains = [t for t in ts[::-1][:n] if t["roc_to"] > t["roc_from"]]
        out.append(f"- {c['label']} {c['from_shape']}, per tag (positives) Δ points: largest "
                   f"losses {fmt(losses)}; largest gains {fmt(gains)} (all {len(ts)} tags: "
                   f"`per_tag` in report.json; bold: called at a false discovery rate of "
                   f"{100 * alpha:g} %, paired cluster bootstrap per tag resampling track groups, "
                   f"Benjamini-Hochberg, over the tags with "
                   f"≥ {analysis.PER_TAG_TEST_MIN_CLIPS} positives).")
    return out


def per_tag_view(against: Sequence[dict], pooled: dict[str, dict]) -> list[dict]:
    """Which tags each resolution loses against its baseline: per model (:data:`BASELINES`'
    order), width and seed, the tags of the comparisons' ``per_tag`` (commonest first) × the sets that finished every fold
    (costliest first), each cell the tag's ROC-AUC change in points with its cluster-bootstrap p
    and
    Benjamini-Hochberg q over the pair's tags (:func:`tftag.study.analysis.per_tag`)."""
    groups: dict[tuple, list[dict]] = {}
    for c in against:
        if _complete(pooled[c["from"]]) and _complete(pooled[c["to"]]):
            groups.setdefault((c["model"], c["width"], c["seed"]), []).append(c)
    out = []
    order = list(BASELINES)  # the models in BASELINES' order, VGG-CNN's grid first
    for (model, width, seed), cs in sorted(groups.items(), key=lambda g: (order.index(g[0][0]), g[0])):
        cs = sorted(cs, key=lambda c: (-c["gmac_ratio"], c["to"]))
        positives = {t["tag"]: t["positives"] for t in cs[0]["per_tag"]}
        tags = sorted(positives, key=lambda t: (-positives[t], t))
        columns = []
        for c in cs:
            by_tag = {t["tag"]: t for t in c["per_tag"]}
            columns.append({"to_shape": c["to_shape"], "set": c["to"], "gmac_ratio": c["gmac_ratio"],
                            "delta_points": c["delta_points"],
                            "cells": [None if t not in by_tag else {
                                "delta_points": by_tag[t]["roc_to"] - by_tag[t]["roc_from"],
                                "p_bootstrap": by_tag[t]["p_bootstrap"],
                                "q_bootstrap": by_tag[t]["q_bootstrap"],
                                "p_delong": by_tag[t]["p_delong"],
                                "q_delong": by_tag[t]["q_delong"]} for t in tags]})
        out.append({"model": model, "width": width, "seed": seed, "baseline": cs[0]["from_shape"],
                    "tags": [{"tag": t, "positives": positives[t]} for t in tags],
                    "columns": columns})
    return out


def _called(cell: dict | None, alpha: float) -> bool:
    """Whether a per-tag change is called real at false discovery rate ``alpha``."""
    return cell is not None and cell["q_bootstrap"] is not None and cell["q_bootstrap"] < alpha


def _per_tag_view_md(view: Sequence[dict], alpha: float, min_positives: int) -> list[str]:
    """results.md's section of :func:`per_tag_view`: one table per model, width and seed."""
    title = "## Per tag: what each resolution loses against its baseline"
    if not view:
        return [title, "", "(no resolution has finished every fold beside its baseline)"]
    which = (f"the tags with ≥ {min_positives} positives" if min_positives > 1
             else "every tag present")
    lines = [title, "",
             f"ROC-AUC change per tag in points against the model's baseline ({which}, commonest "
             f"first; columns costliest first); **bold** = called at a false discovery rate of "
             f"{100 * alpha:g} % (paired bootstrap per tag resampling track groups, "
             "Benjamini-Hochberg over the pair's tags; clip-level DeLong p beside it in "
             "`per_tag` in report.json's `vs_baseline`, every tag). Plot: `per_tag_vs_baseline.png`."]
    for g in view:
        lines += ["", f"{g['model']} (w{g['width']:g}, seed {g['seed']}) against {g['baseline']}:", "",
                  "| tag (positives) | " + " | ".join(c["to_shape"] for c in g["columns"]) + " |",
                  "|---|" + "---|" * len(g["columns"])]
        for i, t in enumerate(g["tags"]):
            cells = []
            for c in g["columns"]:
                cell = c["cells"][i]
                text = "–" if cell is None else f"{cell['delta_points']:+.1f}"
                cells.append(f"**{text}**" if _called(cell, alpha) else text)
            lines.append(f"| {t['tag']} ({t['positives']}) | " + " | ".join(cells) + " |")
        lines.append("| *macro Δ (the column's mean)* | " + " | ".join(
            f"*{c['delta_points']:+.2f}*" for c in g["columns"]) + " |")
    return lines


def _is_baseline(row: dict, model: str = "vgg") -> bool:
    """Whether a pooled row is ``model`` at its baseline resolution (:data:`BASELINES`)."""
    return row["model"] == model and _res_shape(row["resolution"]) == BASELINES[model]


def _complete(row: dict) -> bool:
    """Whether a pooled set has finished every fold (a partial set is compared on fewer clips:
    its wider interval must not make it the answer)."""
    return row["folds_done"] == row["folds"]


def lowest_without_loss(pooled: dict[str, dict], comparisons: Sequence[dict],
                        alpha: float) -> dict[str, dict]:
    """Per model, width and seed: the cheapest set (GMAC) not significantly worse than the
    baseline by the primary paired test (higher, or p ≥ alpha), the baseline included; only
    sets that finished every fold count."""
    best: dict[str, dict] = {}
    for c in comparisons:
        if not (_complete(pooled[c["from"]]) and _complete(pooled[c["to"]])):
            continue
        key = f"{c['model']}-w{c['width']:g}-seed{c['seed']}"
        for name, ok in ((c["from"], True), (c["to"], c["delta_points"] >= 0 or c["p_bootstrap"] >= alpha)):
            row = pooled[name]
            if ok and (key not in best or row["gmacs"] < best[key]["gmacs"]):
                best[key] = {"set": name, "gmacs": row["gmacs"], "baseline": c["from"],
                             "delta_points": 0.0 if name == c["from"] else c["delta_points"],
                             "ci95_points": [0.0, 0.0] if name == c["from"] else c["ci95_points"],
                             "p_bootstrap": None if name == c["from"] else c["p_bootstrap"],
                             "mde_points": c["mde_points"]}
    return best


def front(pooled: dict[str, dict]) -> list[dict]:
    """The accuracy/compute front across models: the seed-0 sets that finished every fold and
    that no other such set matches on pooled ROC-AUC at no more GMAC
    (:func:`tftag.study.pareto.on_front`), cheapest first. Issue 24 ships MUSICNN "where it earned a
    place": a MUSICNN set on this front."""
    rows = [r for r in pooled.values() if r["seed"] == 0 and _complete(r)]
    keep = pareto.on_front([(r["gmacs"], r["roc_auc"]) for r in rows])
    return sorted((r for r, k in zip(rows, keep) if k), key=lambda r: r["gmacs"])


# Issue 24's final students, chosen from the curve: the reference, the cheapest without a
# significant loss, one at ~1/10 of that one's GMAC, the cheapest still agreeing with the teacher.
STUDENT_MIN_TOP5 = 0.5
STUDENT_GMAC_FRACTION = 0.1


def student_choices(pooled: dict[str, dict], lowest: dict[str, dict], model: str = "vgg",
                    min_top5: float = STUDENT_MIN_TOP5,
                    fraction: float = STUDENT_GMAC_FRACTION) -> dict | None:
    """The resolutions to ship as pretrained students (issue 24), by rule, from the complete
    seed-0 sets of ``model`` (the width of its baseline): ``reference`` (the baseline),
    ``no_loss`` (:func:`lowest_without_loss`), ``tenth`` (the GMAC closest to ``fraction`` of
    ``no_loss``'s, on a log scale), ``top5`` (the cheapest with a pooled top-5 overlap with the
    teacher ≥ ``min_top5``); ``resolutions`` lists them once each, cheapest last. None until
    the baseline has finished every fold."""
    base = next((r for r in pooled.values() if r["seed"] == 0 and _complete(r)
                 and _is_baseline(r, model)), None)
    if base is None:
        return None
    rows = [r for r in pooled.values() if r["model"] == model and r["seed"] == 0
            and r["width"] == base["width"] and _complete(r)]
    # no complete set beside the baseline yet: nothing compared, the baseline is the answer
    no_loss = pooled[lowest.get(f"{model}-w{base['width']:g}-seed0", base)["set"]]
    target = fraction * no_loss["gmacs"]
    tenth = min(rows, key=lambda r: (abs(math.log(r["gmacs"] / target)), r["gmacs"]))
    agreeing = [r for r in rows if r["top5_overlap"] >= min_top5]
    top5 = min(agreeing, key=lambda r: r["gmacs"]) if agreeing else None
    picks = {"reference": base, "no_loss": no_loss, "tenth": tenth, "top5": top5}
    order = sorted({r["set"]: r for r in picks.values() if r is not None}.values(),
                   key=lambda r: -r["gmacs"])
    return {
        **{k: (None if r is None else r["resolution"]) for k, r in picks.items()},
        "resolutions": [r["resolution"] for r in order],
        "gmacs": {r["resolution"]: r["gmacs"] for r in order},
        "top5_overlap": {r["resolution"]: r["top5_overlap"] for r in order},
        "complete_sets": len(rows),
        "rule": (f"{model} width {base['width']:g}, seed 0, sets that finished every fold: the "
                 f"reference {BASELINES[model][0]}x{BASELINES[model][1]}; the cheapest without a "
                 f"significant loss (paired bootstrap); the one whose GMAC is closest to "
                 f"{fraction:g} x that one's (log scale); the cheapest with a pooled top-5 "
                 f"overlap with the teacher >= {min_top5:g}"),
    }


def _fmt_r(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}"


def _fmt_p(p: float | None) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def pooled_table(rows: Sequence[dict]) -> str:
    lines = ["| model (width) | resolution | folds | clips | ROC-AUC % [95 % CI] | PR-AUC % [95 % CI] "
             "| per fold ROC-AUC % | top-5 overlap | prob. corr. | GMAC | KiB/clip | train s | at cap |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} (w{r['width']:g}) | {r['resolution']}"
            f"{'' if r['seed'] == 0 else ' seed ' + str(r['seed'])} | {r['folds_done']}/{r['folds']} "
            f"| {r['n_clips']} | {_pct(r['roc_auc'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}] "
            f"| {_pct(r['pr_auc'])} [{_pct(r['pr_ci95'][0])}, {_pct(r['pr_ci95'][1])}] "
            f"| {_pct(r['fold_roc_auc_mean'])} ± {_pct(r['fold_roc_auc_sd'])} "
            f"| {r['top5_overlap']:.3f} | {r['prob_correlation']:.3f} | {r['gmacs']:.4f} "
            f"| {r['kib_per_clip']:.0f} | {r['train_seconds']:.0f} | {r['stopped_at_cap']} |")
    return "\n".join(lines)


def comparison_table(rows: Sequence[dict], first: str = "claim") -> str:
    if not rows:
        return "(none of these resolution pairs ran in this study)"
    lines = ["| model (width) | from → to | ROC-AUC % from → to | Δ points [95 % CI] by track "
             "group | p paired bootstrap | p DeLong (clustered) | p by package | *p by clip "
             "(secondary)* | p paired t (folds) | p independent t | MDE points | GMAC × | "
             + first + " |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        other = c.get("by_unit", {})
        label = c.get("label") or f"{c['model']} (w{c['width']:g})"
        lines.append(
            f"| {label} | {c['from_shape']} → {c['to_shape']} | {c['roc_from']:.2f} → "
            f"{c['roc_to']:.2f} | {c['delta_points']:+.2f} [{c['ci95_points'][0]:+.2f}, "
            f"{c['ci95_points'][1]:+.2f}] | {_fmt_p(c['p_bootstrap'])} | {_fmt_p(c['p_delong'])} "
            f"| {_fmt_p(other.get('package', {}).get('p_bootstrap'))} "
            f"| *{_fmt_p(other.get('clip', {}).get('p_bootstrap'))}* "
            f"| {_fmt_p(c['p_paired_t'])} | {_fmt_p(c['p_independent_t'])} | {c['mde_points']:.2f} "
            f"| {c['gmac_ratio']:.2f} | {c.get(first, c['n_clips'])} |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _curve_label(result: dict, with_width: bool) -> str:
    """A learning curve's legend entry: its resolution, and its width when a panel has several."""
    return f"w{result['width']:g} {result['resolution']}" if with_width else result["resolution"]


def plot_learning_curves(results: Sequence[dict], path: str) -> None:
    """Validation loss per epoch of every run, one panel per model, one colour per resolution."""
    plt = _pyplot()
    models = sorted({r["model"] for r in results})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        runs = [r for r in results if r["model"] == model]
        several_widths = len({r["width"] for r in runs}) > 1
        series = sorted({_curve_label(r, several_widths) for r in runs})
        colours = {s: plt.cm.viridis(i / max(1, len(series) - 1)) for i, s in enumerate(series)}
        for r in runs:
            curve = r["curve"]
            ax.plot([p["epoch"] for p in curve], [p["valid_loss"] for p in curve],
                    color=colours[_curve_label(r, several_widths)], alpha=0.6, lw=1,
                    ls="--" if r["stop_reason"] == "cap" else "-")
            # The epochs that ran at a lower learning rate than the one before (--lr_reductions),
            # found as --mode=status finds them (passes without a kept rate are skipped).
            drops = [curve[i] for i in analysis.reduction_passes(curve)]
            ax.plot([p["epoch"] for p in drops], [p["valid_loss"] for p in drops], "v",
                    color=colours[_curve_label(r, several_widths)], ms=4, alpha=0.8)
        for label, colour in colours.items():
            ax.plot([], [], color=colour, label=label)
        ax.set_yscale("log")  # the first passes' losses are 3x the plateau the curves end on
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(plt.FormatStrFormatter("%.3f"))
        _label_axes(ax, "epoch", "validation loss (log)",
                    f"{model}: validation loss per epoch ({_count(len(runs), 'run')})\n"
                    "dashed = cap, ▼ = learning rate lowered")
    fig.tight_layout()
    runfiles.save_figure_atomic(fig, path, dpi=90)


def plot_roc_vs_gmacs(rows: Sequence[dict], path: str) -> None:
    """Pooled ROC-AUC with its bootstrap 95 % CI against GMAC (log x), one series per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted({(r["model"], r["width"], r["seed"]) for r in rows}):
        rs = [r for r in rows if (r["model"], r["width"], r["seed"]) == key]
        y = [100 * r["roc_auc"] for r in rs]
        err = [[100 * (r["roc_auc"] - r["ci95"][0]) for r in rs],
               [100 * (r["ci95"][1] - r["roc_auc"]) for r in rs]]
        ax.errorbar([r["gmacs"] for r in rs], y, yerr=err, fmt="o", capsize=3,
                    label=f"{key[0]} (w{key[1]:g}, seed {key[2]})")
        for r, yy in zip(rs, y):
            m = MelConfig.from_name(r["resolution"])
            ax.annotate(f"{m.n_mels}×{m.hop_factor}", (r["gmacs"], yy), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _label_axes(ax, "GMAC per clip (log)", "pooled test ROC-AUC % (bootstrap 95 % CI)",
                "ROC-AUC vs compute, K test folds pooled (labels: bands × hop)")
    fig.tight_layout()
    runfiles.save_figure_atomic(fig, path, dpi=90)


def plot_per_tag(view: Sequence[dict], alpha: float, path: str) -> None:
    """:func:`per_tag_view` as heat maps, one panel per model, width and seed: tags × resolutions,
    colour and label the ROC-AUC change in points (red: a loss), bold where it is called at a
    false discovery rate of ``alpha``. Every panel shares one colour scale, so a colour means the
    same change in every model's panel."""
    import numpy as np

    plt = _pyplot()
    groups = list(view) or [None]
    widths = [max(2, len(g["columns"])) if g else 2 for g in groups]
    rows = max((len(g["tags"]) for g in view), default=1)
    fig, axes = plt.subplots(1, len(groups), figsize=(1.6 + 0.75 * sum(widths) + 1.8 * len(groups),
                                                      1.6 + 0.32 * rows),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    deltas = [None if g is None else
              np.array([[np.nan if c["cells"][i] is None else c["cells"][i]["delta_points"]
                         for c in g["columns"]] for i in range(len(g["tags"]))])
              for g in groups]
    finite = [np.abs(d[np.isfinite(d)]) for d in deltas if d is not None]
    limit = max([1.0] + [float(f.max()) for f in finite if f.size])
    for ax, g, delta in zip(axes[0], groups, deltas):
        if g is None:
            ax.text(0.5, 0.5, "no resolution has finished every fold beside its baseline",
                    ha="center", va="center")
            ax.set_axis_off()
            continue
        image = ax.imshow(delta, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for i in range(len(g["tags"])):
            for j, c in enumerate(g["columns"]):
                if np.isfinite(delta[i, j]):
                    ax.text(j, i, f"{delta[i, j]:+.1f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(delta[i, j]) > 0.6 * limit else "black",
                            fontweight="bold" if _called(c["cells"][i], alpha) else "normal")
        ax.set_xticks(range(len(g["columns"])),
                      [f"{c['to_shape']}\n{c['gmac_ratio']:.2g}× GMAC" for c in g["columns"]],
                      fontsize=7)
        ax.set_yticks(range(len(g["tags"])), [f"{t['tag']} ({t['positives']})" for t in g["tags"]],
                      fontsize=7)
        ax.set_title(f"{g['model']} (w{g['width']:g}, seed {g['seed']}): ROC-AUC Δ points per tag\n"
                     f"vs {g['baseline']}; bold = FDR < {alpha:g} (track-group bootstrap, BH)",
                     fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    fig.tight_layout()
    runfiles.save_figure_atomic(fig, path, dpi=90)


def _pick(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """``rows`` cut to ``keys`` (the one-line summary's entries)."""
    return [{k: r[k] for k in keys} for r in rows]


@dataclasses.dataclass(frozen=True)
class _Study:
    """A cross-validated study read back and analysed: what the report files show.

    Attributes:
      results: the per-run results (:func:`tftag.study.analysis.load_runs`).
      sets: the run sets (:func:`tftag.study.analysis.load_sets`).
      against_other: other study name -> its paired comparisons (:func:`against_study`).
      rows: each set's pooled summary.
      pooled: ``rows`` by set name.
      tested: the paper's claims (:func:`claims`).
      tested_models: the MUSICNN-vs-VGG-CNN claims (:func:`between_models`).
      on_front: the accuracy/compute front (:func:`front`).
      against: every resolution against its baseline (:func:`vs_baseline`).
      repeats: the seed-to-seed comparisons (:func:`repeatability`).
      lowest: the cheapest resolution without a significant loss (:func:`lowest_without_loss`).
      frequent: the frequent-tag view (:func:`frequent_view`), or None.
      tag_view: the per-tag view (:func:`per_tag_view`).
      tag_view_min: the per-tag view's minimum positives.
      claims_mde: the claims' largest MDE (:func:`largest_mde`).
      folds: the fold counts of the runs, sorted.
      mde: the design's MDE (:func:`design_mde`).
      null: whether ``mde`` comes from a null comparison (two seeds).
      ceiling: the teacher's own score against its labels (:func:`teacher_ceiling`).
      second: labeller name -> the study under that second labeller (:func:`second_labeller`).
      unseen: the claims without the pilot's fold (:func:`without_fold`), or None.
    """

    results: list[dict]
    sets: list[analysis.RunSet]
    against_other: dict[str, list[dict]]
    rows: list[dict]
    pooled: dict[str, dict]
    tested: list[dict]
    tested_models: list[dict]
    on_front: list[dict]
    against: list[dict]
    repeats: list[dict]
    lowest: dict[str, dict]
    frequent: dict | None
    tag_view: list[dict]
    tag_view_min: int
    claims_mde: float | None
    folds: list[int]
    mde: float | None
    null: bool
    ceiling: dict
    second: dict[str, dict]
    unseen: dict | None


def _analyse(runs_dir: str, opts: Options, compare: Sequence[tuple[str, str]],
             labeller_files: Sequence[str] = ()) -> _Study:
    """Reads the study of ``runs_dir`` (and those of ``compare``) and runs every analysis
    (``labeller_files``: second labellers' memos, :mod:`tftag.study.labellers`)."""
    from tftag.study import labellers

    results = analysis.load_runs(runs_dir)
    sets = analysis.load_sets(results)
    against_other = {other: against_study(sets, analysis.load_sets(analysis.load_runs(other_dir)),
                                          other, opts)
                     for other, other_dir in compare}
    rows = [analysis.summarize_set(s, also_units=opts.also_units, **opts.kwargs()) for s in sets]
    pooled = {r["set"]: r for r in rows}
    tested = claims(sets, opts)
    tested_models = between_models(sets, opts)
    on_front = front(pooled)
    against = vs_baseline(sets, opts)
    repeats = repeatability(sets, opts)
    lowest = lowest_without_loss(pooled, against, opts.alpha)
    frequent = frequent_view(sets, opts)
    # per tag: the frequent tags when that view is on (a rare tag's ROC-AUC is a handful of ranks)
    tag_view = per_tag_view(frequent["vs_baseline"] if frequent else against, pooled)
    tag_view_min = frequent["min_positives"] if frequent else opts.min_positives
    claims_mde = largest_mde(tested or against)
    folds = sorted({int(r["folds"]) for r in results})
    # the design's MDE: a null comparison's (the same configuration retrained, every fold)
    mde, null = design_mde(repeats, max(folds), claims_mde)
    ceiling = teacher_ceiling(sets, opts)
    second = {}
    for path in labeller_files:
        labels = labellers.read_labels(path)
        second[labels.name] = {"file": os.path.basename(path), **second_labeller(
            sets, labels, opts, rows, tested, tested_models, frequent)}
    return _Study(results, sets, against_other, rows, pooled, tested, tested_models, on_front,
                  against, repeats, lowest, frequent, tag_view, tag_view_min, claims_mde, folds,
                  mde, null, ceiling, second, without_fold(results, PILOT_FOLD, opts))


# The fold whose test clips the pilot scored (the width and MUSICNN's recipe were chosen partly
# on them): the claims are repeated on the other folds' clips alone (:func:`without_fold`).
PILOT_FOLD = 0


def without_fold(results: Sequence[dict], fold: int, opts: Options) -> dict | None:
    """The claims and between-model claims on the test clips of every fold but ``fold`` (primary
    unit only): the answer without the clips a design choice saw. None if nothing is left."""
    rest = [r for r in results if int(r["fold"]) != fold]
    if not rest:
        return None
    sets = analysis.load_sets(rest)
    o = dataclasses.replace(opts, also_units=())
    return {"fold_left_out": fold, "folds": sorted({int(r["fold"]) for r in rest}),
            "n_clips": len(_ceiling_set(sets).clip_ids),
            "claims": claims(sets, o), "between_models": between_models_plain(sets, o)}


# Second labellers' memos the report reads from its own folder (:mod:`tftag.study.labellers`).
LABELLER_FILES = "labels_*.npz"


def build(runs_dir: str, out_dir: str, name: str, opts: Options = Options(),
          compare: Sequence[tuple[str, str]] = (),
          labeller_files: Sequence[str] | None = None) -> dict:
    """Writes the study's report files into ``out_dir``; returns a one-line summary.

    Args:
      compare: (name, runs_dir) of other cross-validated studies: each configuration both ran
        is compared paired clip by clip (:func:`against_study`; ``report.json`` "against").
      labeller_files: second labellers' memos (``labels_<name>.npz``, written once by
        :func:`tftag.study.labellers.label_dataset`); None: those in ``out_dir``
        (:data:`LABELLER_FILES`).
    """
    import glob

    if labeller_files is None:
        labeller_files = sorted(glob.glob(os.path.join(out_dir, LABELLER_FILES)))
    st = _analyse(runs_dir, opts, compare, labeller_files)
    os.makedirs(out_dir, exist_ok=True)
    runfiles.write_csv_atomic(os.path.join(out_dir, "runs.csv"), analysis.runs_rows(st.results),
                              analysis.CSV_COLUMNS)
    report = _report_json(st, opts)
    runfiles.write_json_atomic(os.path.join(out_dir, "report.json"), report)
    md = _results_md(st, report, name, opts)
    runfiles.write_text_atomic(os.path.join(out_dir, "results.md"), "\n".join(md))
    plot_learning_curves(st.results, os.path.join(out_dir, "learning_curves.png"))
    plot_roc_vs_gmacs(st.rows, os.path.join(out_dir, "roc_vs_gmacs.png"))
    plot_per_tag(st.tag_view, opts.alpha, os.path.join(out_dir, "per_tag_vs_baseline.png"))
    return _summary(st, report, name, out_dir)


def _report_json(st: _Study, opts: Options) -> dict:
    """``report.json`` (module docstring)."""
    mde_rule = ("(z(1-alpha/2) + z(power)) x SE of the paired bootstrap difference between "
                "two seeds of the same configuration over every fold (a null comparison; the "
                "largest if several)" if st.null else
                "(z(1-alpha/2) + z(power)) x SE of the paired bootstrap difference; the largest "
                "over the claims tested")
    folds = st.folds
    return {
        "folds": folds[0] if len(folds) == 1 else folds, "runs": len(st.results),
        "stopped_at_cap": sum(r["stop_reason"] == "cap" for r in st.results),
        "mde_points": st.mde,
        "mde_rule": f"{mde_rule}; alpha {opts.alpha:g}, power {opts.power:g}",
        "mde_claims_points": st.claims_mde,
        "seed_to_seed": st.repeats,
        "primary_test": "paired bootstrap of the pooled macro ROC-AUC difference "
                        f"({opts.n_resamples} resamples of {opts.unit}s, seed {opts.seed}; a "
                        "cluster bootstrap: every clip of a drawn unit at once)",
        "unit": opts.unit, "secondary_units": list(opts.also_units),
        "n_units": {u: analysis.n_units(_ceiling_set(st.sets).clip_ids, u)
                    for u in (opts.unit, *opts.also_units)},
        "per_tag_test": f"paired bootstrap of each tag's ROC-AUC difference on the same "
                        f"{opts.unit} resamples, Benjamini-Hochberg over the tags with >= "
                        f"{analysis.PER_TAG_TEST_MIN_CLIPS} positives and negatives "
                        "(p_bootstrap, q_bootstrap); DeLong treating clips as independent "
                        "beside it (p_delong, q_delong, secondary)",
        "teacher_ceiling": st.ceiling,
        "without_pilot_fold": st.unseen,
        "second_labellers": st.second,
        "labels": f"teacher top-{opts.top_k} per clip", "alpha": opts.alpha,
        "claims": _with_second(st.tested, st.second, "claims"),
        "between_models": _with_second(st.tested_models, st.second, "between_models"),
        "front": [{k: r[k] for k in ("set", "model", "width", "resolution", "gmacs", "roc_auc")}
                  for r in st.on_front],
        "pooled": st.pooled, "vs_baseline": st.against,
        "lowest_without_loss": st.lowest,
        "students": student_choices(st.pooled, st.lowest),
        "against": st.against_other,
        "frequent_tags": st.frequent,
        "per_tag_vs_baseline": {"min_positives": st.tag_view_min, "groups": st.tag_view},
    }


def _with_second(rows: Sequence[dict], second: dict[str, dict], key: str) -> list[dict]:
    """``rows`` with each second labeller's Δ, p and call beside (``second_labellers``)."""
    out = []
    for i, c in enumerate(rows):
        extra = {name: {k: v[key][i][k] for k in ("delta_points", "ci95_points", "p_bootstrap",
                                                   "verdict", "holds_under_both")}
                 for name, v in second.items()}
        out.append({**c, "second_labellers": extra} if extra else dict(c))
    return out


def _results_md(st: _Study, report: dict, name: str, opts: Options) -> list[str]:
    """The lines of ``results.md``."""
    mde_text = "–" if st.mde is None else f"{st.mde:.2f}"
    claims_text = "–" if st.claims_mde is None else f"{st.claims_mde:.2f}"
    tested_models, repeats = st.tested_models, st.repeats
    md = [
        f"# Study `{name}` (cross-validated, trained to convergence)", "",
        f"- {_count(len(st.results), 'run')}, {_count(len(st.sets), 'run set')}, folds: "
        f"{report['folds']}; "
        f"runs stopped at the epoch cap: {report['stopped_at_cap']} (the others on a plateau).",
        f"- labels: the teacher's top-{opts.top_k} tags per clip; metrics macro over the tags "
        "present among the pooled clips; each set's K test folds pooled (every clip once).",
        f"- primary paired test: {report['primary_test']}; beside it DeLong's test of the same "
        "macro difference, the paired t-test over folds and the paper's independent-samples "
        "t-test over runs.",
        f"- **minimum detectable effect of the design: {mde_text} ROC-AUC points** "
        f"({report['mde_rule']}); the claims' comparisons detect up to {claims_text} points "
        "(their SE grows with how differently the two resolutions rank the clips).", "",
        "## Every resolution, folds pooled", "", pooled_table(st.rows), "",
        "## The paper's claims on this data", "", "Δ = to − from.", "",
        comparison_table(st.tested), "",
        *_ceiling_md(st.ceiling), "",
        *_second_md(st.second), "",
        *_unseen_md(st.unseen), "",
        "## The paper's claim between the architectures", "",
        *(["Δ = to − from, at the same resolution, each model at its study width; PR-AUC "
           "(the claim's other half) on the same clips: " + ", ".join(
               f"{c['label']} {c['from_shape']}: {c['pr_from']:.2f} → {c['pr_to']:.2f} %"
               for c in tested_models) + ".", "",
           comparison_table(tested_models), "", *_per_tag_md(tested_models, opts.alpha)] if tested_models
          else ["(no resolution ran with both models in this study)"]), "",
        "## The accuracy/compute front across models", "",
        "Sets that finished every fold (seed 0) that no other such set matches on pooled ROC-AUC "
        "at no more GMAC, cheapest first; a MUSICNN set here is where MUSICNN earns a shipped "
        "student (issue 24):", "",
        *([f"- `{r['set']}`: {r['gmacs']:.4f} GMAC, ROC-AUC {_pct(r['roc_auc'])} %"
           for r in st.on_front] or ["(no set has finished every fold)"]), "",
        "## Every resolution against its model's baseline", "",
        comparison_table(st.against, first="n_clips"), "",
        "## Repeatability: the same configuration, another seed (a null comparison)", "",
        ("Nothing but training randomness differs: the paired SE here is the design's noise "
         "floor (its MDE is the design's, from the repeats paired over every fold; a repeat "
         "with folds still to run is shown, not used), and |Δ| is the seed-to-seed variation "
         "that a clip bootstrap of single trained models does not include — a resolution "
         "effect smaller than it is not evidence." if repeats else
         "(no configuration ran with a second seed: the MDE above is the claims' largest)"), "",
        *([comparison_table(repeats, first="n_clips"), ""] if repeats else []),
        "## Cheapest resolution without a significant loss (paired test)", "",
    ]
    md += _lowest_md(st, opts)
    md += ["", *_frequent_md(st.frequent, opts)]
    md += ["", *_per_tag_view_md(st.tag_view, opts.alpha, st.tag_view_min)]
    md += _against_md(st.against_other)
    return md + _students_md(report["students"], st.rows)


def _ceiling_md(ceiling: dict) -> list[str]:
    """results.md's section of :func:`teacher_ceiling`."""
    lines = ["## The teacher's ceiling", "",
             "The teacher's own soft labels scored against its hard labels (its top-3 per clip), "
             "the folds' test clips pooled: no student of this teacher can score above it."]
    for view, c in ceiling.items():
        lines.append(f"- {view.replace('_', ' ')} ({c['n_tags']} tags, {c['n_clips']} clips): "
                     f"ROC-AUC {_pct(c['roc_auc'])} % [{_pct(c['ci95'][0])}, {_pct(c['ci95'][1])}], "
                     f"PR-AUC {_pct(c['pr_auc'])} % (95 % CI resampling {c['unit']}s)")
    return lines


def _second_md(second: dict[str, dict]) -> list[str]:
    """results.md's section per second labeller (:func:`second_labeller`)."""
    lines = []
    for name, v in second.items():
        rc = v["rank_correlation"]
        lines += [f"## A second labeller: {name}", "",
                  f"Every run's stored test predictions scored against {v['labels']} (`{v['file']}`, "
                  f"no retraining). {name}'s own ceiling: ROC-AUC {_pct(v['ceiling']['roc_auc'])} %; "
                  f"the teacher against {name}'s labels: {_pct(v['teacher_against_it']['roc_auc'])} %. "
                  "Spearman rank correlation of the sets' pooled ROC-AUC under the two labellers: "
                  + ", ".join(f"{k} {_fmt_r(r['spearman'])} ({r['n_sets']} sets)"
                              for k, r in rc.items()) + ".", "",
                  "| claim | from → to | teacher Δ (p) | " + name + " Δ [95 % CI] (p) | holds under both |",
                  "|---|---|---|---|---|"]
        views = [("", v["claims"] + v["between_models"])]
        if "frequent_tags" in v:
            views.append((" (frequent tags)", v["frequent_tags"]["claims"]))
        for suffix, rows in views:
            for c in rows:
                lines.append(
                    f"| {(c['claim'] or '')[:48]}{suffix} | {c['from']} → {c['to']} | "
                    f"{c['delta_points_teacher']:+.2f} ({_fmt_p(c['p_teacher'])}) | "
                    f"{c['delta_points']:+.2f} [{c['ci95_points'][0]:+.2f}, {c['ci95_points'][1]:+.2f}] "
                    f"({_fmt_p(c['p_bootstrap'])}) | {'yes' if c['holds_under_both'] else 'no'} |")
        lines.append("")
    return lines


def _unseen_md(unseen: dict | None) -> list[str]:
    """results.md's section of :func:`without_fold`."""
    if unseen is None:
        return []
    rows = unseen["claims"] + unseen["between_models"]
    return [f"## Without fold {unseen['fold_left_out']}'s test clips (the pilot scored them)", "",
            f"The claims on the {unseen['n_clips']} test clips of folds "
            f"{', '.join(map(str, unseen['folds']))} alone: no design choice saw them.", "",
            "| claim | from → to | Δ points [95 % CI] | p |", "|---|---|---|---|",
            *[f"| {c['claim'][:48]} | {c['from']} → {c['to']} | {c['delta_points']:+.2f} "
              f"[{c['ci95_points'][0]:+.2f}, {c['ci95_points'][1]:+.2f}] | {_fmt_p(c['p_bootstrap'])} |"
              for c in rows]]


def _lowest_md(st: _Study, opts: Options) -> list[str]:
    """The cheapest resolution per model without a significant loss, and the sets not yet
    counted."""
    md = []
    for key, r in sorted(st.lowest.items()):
        md.append(f"- {key}: `{r['set']}` — {r['gmacs']:.4f} GMAC, Δ {r['delta_points']:+.2f} "
                  f"points [{r['ci95_points'][0]:+.2f}, {r['ci95_points'][1]:+.2f}] vs "
                  f"`{r['baseline']}` (p = {_fmt_p(r['p_bootstrap'])}); this comparison detects "
                  f"{r['mde_points']:.2f} points with {100 * opts.power:.0f} % power.")
    partial = [r for r in st.rows if not _complete(r)]
    if partial:
        md.append("- not yet counted (folds still to run): " + ", ".join(
            f"`{r['set']}` ({r['folds_done']}/{r['folds']})" for r in partial) + ".")
    return md


def _against_md(against_other: dict[str, list[dict]]) -> list[str]:
    """A section per other study: the same configurations, paired clip by clip."""
    md = []
    for other, rows_other in against_other.items():
        md += ["", f"## Against `{other}`: the same configurations, paired clip by clip", "",
               "Δ = this study − `" + other + "`; training: the K runs' total seconds and mean "
               "passes, `" + other + "` → this.", "",
               comparison_table([{**c, "training": f"{c['train_seconds_from']:,.0f} s, "
                                  f"{c['epochs_from']:.1f} passes → {c['train_seconds_to']:,.0f} s, "
                                  f"{c['epochs_to']:.1f} passes"} for c in rows_other],
                                first="training")
               if rows_other else "(no configuration ran in both studies)"]
    return md


def _students_md(students: dict | None, rows: Sequence[dict]) -> list[str]:
    """The resolutions to ship as pretrained students (issue 24's rule)."""
    md = ["", "## Resolutions to ship as pretrained students (issue 24's rule)", ""]
    if students is None:
        md.append("(the baseline has not finished every fold yet)"
                  if any(_is_baseline(r) for r in rows)
                  else "(this study has no VGG-CNN 96×1 baseline: the rule does not apply)")
    else:
        md.append(f"Rule: {students['rule']}.")
        md.append("")
        for k in ("reference", "no_loss", "tenth", "top5"):
            res = students[k]
            md.append(f"- {k}: " + ("none" if res is None else
                                    f"`{res}` ({students['gmacs'][res]:.4f} GMAC, top-5 "
                                    f"{students['top5_overlap'][res]:.3f})"))
        md.append(f"- from {students['complete_sets']} complete sets; to ship: "
                  + ", ".join(f"`{r}`" for r in students["resolutions"]))
    return md


def _summary(st: _Study, report: dict, name: str, out_dir: str) -> dict:
    """The one-line summary :func:`build` returns."""
    claim_keys = ("model", "from_shape", "to_shape", "delta_points", "p_bootstrap")
    model_keys = ("label", "from_shape", "delta_points", "p_bootstrap")
    frequent = st.frequent
    return {"study": name, "runs": len(st.results), "sets": len(st.sets), "folds": report["folds"],
            "mde_points": st.mde, "mde_claims_points": st.claims_mde,
            "seed_to_seed_points": [round(c["delta_points"], 3) for c in st.repeats],
            "claims": _pick(st.tested, claim_keys),
            "between_models": _pick(st.tested_models, model_keys),
            "front": [r["set"] for r in st.on_front],
            "frequent_tags": None if frequent is None else {
                "mde_points": frequent["mde_points"],
                "claims": _pick(frequent["claims"], claim_keys),
                "between_models": _pick(frequent["between_models"], model_keys)},
            "lowest_without_loss": {k: v["set"] for k, v in st.lowest.items()},
            "students": None if report["students"] is None else report["students"]["resolutions"],
            "against": {other: _pick(rows_other, ("to", "delta_points", "p_bootstrap"))
                        for other, rows_other in st.against_other.items()},
            "out": out_dir}


def run(name: str, out_root: str, runs_dir: str | None = None, run_dir: str | None = None,
        opts: Options = Options(), compare: Sequence[tuple[str, str]] = (),
        max_drop: float = 1.0) -> dict:
    """``--mode=report``: the report of a cross-validated study (``runs_dir``: its per-run
    files) or of a fixed-budget sweep (``run_dir``), written into ``<out_root>/<name>/``.

    Args:
      compare: (name, directory) of other studies of the same kind, compared beside it.
      max_drop: the fixed-budget report's "no loss" margin in ROC-AUC points.

    Raises:
      ValueError: no name, not exactly one of ``runs_dir`` and ``run_dir``, or nothing to report.
    """
    if not name:
        raise ValueError("--mode=report needs --name (writes <out_root>/<name>/)")
    if (run_dir is None) == (runs_dir is None):
        raise ValueError("give exactly one of --run_dir (a fixed-budget sweep) or --runs_dir "
                         "(a cross-validated study's per-run files)")
    out = os.path.join(out_root, name)
    if runs_dir is not None:
        return build(runs_dir, out, name, opts, compare=compare)
    from tftag.study import sweep_report

    return sweep_report.build(run_dir, out, name, compare, opts.alpha, max_drop)
