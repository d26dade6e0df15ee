"""``--mode=extract`` and ``--mode=describe``: the catalogue of an experiment, its data card and
its dataset directory.

Both entry points (``tftag.main`` and ``pipelines/extract.py``) resolve a catalogue through
:func:`resolve_catalog`, so the same catalogue flags (``--seed`` included) give the same clips
and splits. Every mode that reads a dataset checks it with :func:`ensure_dataset`; the Apache
Beam pipeline (:mod:`tftag.extraction.pipeline`) is imported only when a dataset has to be extracted, so
training, evaluating or exporting from an existing ``--dataset_dir`` never loads Beam.
"""

from __future__ import annotations

import os
import time

from absl import logging

from tftag import datasets
from tftag.runs import runfiles
from tftag.storage import datacard
from tftag.datasets import Catalog


def resolve_catalog(data_config, seed: int, corpus_dir: str | None = None) -> Catalog:
    """The catalogue of a :class:`~tftag.experiment.DataConfig`.

    Args:
      data_config: the data source (catalogue name, input, packages, cache, min_tag_count, ...).
      seed: the seed of the built-in corpus and of the ``debian`` catalogue's split.
      corpus_dir: where ``--catalog=synthetic`` without an input renders the built-in corpus.

    Returns:
      The catalogue; every loader gets the same options (each ignores the ones it does not use).

    Raises:
      ValueError: no input where one is needed, or the catalogue cannot read it.
      FileNotFoundError: the input does not exist.
    """
    d = data_config
    if d.catalog == "synthetic" and not d.input:
        if corpus_dir is None:
            raise ValueError("--input is required: the built-in corpus (--catalog=synthetic "
                             "without --input) is rendered into a run directory by "
                             "`python -m tftag.main --mode=extract --run_dir=DIR`")
        from tftag.datasets import synthetic

        started = time.monotonic()
        catalog = synthetic.render_corpus(corpus_dir, d.num_clips, d.clip_seconds, d.synth_sr,
                                          seed, progress=True)
        logging.info("built-in corpus: %d clips in %s (%.1f s)", len(catalog.clips), corpus_dir,
                     time.monotonic() - started)
        return catalog
    if d.input and not os.path.exists(d.input):
        raise FileNotFoundError(f"--input={d.input!r} does not exist")
    if not d.input and d.catalog != "debian":  # debian reads the apt sources, not an input
        raise ValueError(f"--input is required with --catalog={d.catalog}")
    options = dict(seed=seed, cache_dir=d.cache_dir, min_tag_count=d.min_tag_count)
    if d.packages:
        options["packages"] = tuple(d.packages)
    if d.train_clip_hop:
        options["train_clip_hop"] = d.train_clip_hop
    try:
        return datasets.load(d.catalog, d.input, **options)
    except (ValueError, NotADirectoryError) as e:  # the catalogue's own complaint about its input
        raise ValueError(f"--catalog={d.catalog} --input={d.input}: {e}") from None


def catalog_of(experiment) -> Catalog:
    """The experiment's catalogue; the built-in corpus is rendered into ``<run_dir>/corpus``."""
    corpus_dir = experiment.path("corpus") if experiment.run_dir else None
    return resolve_catalog(experiment.data, experiment.train.seed, corpus_dir)


def plan_tags(catalog: Catalog, labels: str) -> tuple[str, ...]:
    """The tag list labels index into: the teacher's with teacher labels, else the catalogue's."""
    from tftag.extraction import teacher

    return teacher.tags() if teacher.parse_labels(labels) else tuple(catalog.tags)


def write_datacard(catalog: Catalog, out_dir: str) -> dict:
    """Writes the data card into ``out_dir`` (files and TensorBoard ``tb/data``)."""
    card = datacard.write_card(catalog, out_dir)
    runfiles.tensorboard_notes(
        os.path.join(out_dir, "tb", "data"), texts={"datacard": datacard.format_card(card)},
        images={"tag_frequencies": os.path.join(out_dir, "tag_frequencies.png")},
        scalars={f"clips/{split}": n for split, n in card["splits"].items()})
    return card


def describe(experiment) -> dict:
    """``--mode=describe``: prints the data card of the experiment's catalogue (and writes it into
    the run directory if there is one).

    Returns:
      {"clips", "splits"}.
    """
    catalog = catalog_of(experiment)
    card = (write_datacard(catalog, experiment.run_dir) if experiment.run_dir
            else datacard.describe(catalog))
    print(datacard.format_card(card))
    return {"clips": card["clips"], "splits": card["splits"]}


def summary_of(meta: dict) -> dict:
    """The clip counts of a finished ``dataset.json``."""
    return {k: meta[k] for k in ("clips_total", "clips_written", "clips_failed", "splits")}


def extract(experiment) -> dict:
    """``--mode=extract``: the experiment's catalogue into ``<run_dir>/dataset`` (resumes; a
    no-op when complete). The only function here that imports Apache Beam.

    Returns:
      A summary: dataset_dir, clip counts per split, Beam counters.
    """
    from tftag.extraction import extractor, pipeline
    from tftag.storage import data

    d = experiment.data
    catalog = catalog_of(experiment)
    write_datacard(catalog, experiment.run_dir)
    dataset_dir = experiment.path("dataset")
    plan = extractor.ExtractionPlan(dataset_dir, tuple(experiment.mel_configs),
                                     plan_tags(catalog, d.labels), d.mel_dtype, d.clips_per_shard,
                                     labels=d.labels, teacher_top_k=d.teacher_top_k,
                                     teacher_memo=d.teacher_memo)
    state = extractor.prepare_output(plan, catalog, overwrite=False, retry_failed=False)
    if state == "complete":
        logging.info("%s is complete already", dataset_dir)
        summary = summary_of(data.load_dataset_info(dataset_dir).raw)
        memo = extractor.remember_complete(plan)
        if memo:
            summary["teacher_memo"] = memo
    else:
        summary = pipeline.run(plan, catalog,
                               pipeline.pipeline_options("DirectRunner", d.direct_num_workers))
    print(f"extracted {summary['clips_written']}/{summary['clips_total']} clips into {dataset_dir}")
    return {"dataset_dir": dataset_dir, **summary}


def ensure_dataset(experiment) -> str:
    """The experiment's dataset directory, checked against its resolutions; made if missing.

    With ``data.dataset_dir`` the dataset must exist and hold every resolution (no Beam
    imported); otherwise it is extracted into ``<run_dir>/dataset`` as :func:`extract` does (a
    no-op when complete).
    """
    if experiment.data.dataset_dir:
        from tftag.storage import data

        try:
            info = data.load_dataset_info(experiment.data.dataset_dir)
            for config in experiment.mel_configs:
                info.check(config)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"--dataset_dir: {e}") from None
        return experiment.data.dataset_dir
    return extract(experiment)["dataset_dir"]
