r"""tftag's entry point: ``python -m tftag.main --flagfile=configs/NAME.flags``.

Modes (more arrive with training, evaluation and serving):
  extract   render the built-in corpus when --catalog=synthetic has no --input, then extract
            mel-spectrograms of the requested resolutions into <run_dir>/dataset (Apache Beam);
  describe  print and write the data card of a catalogue into <run_dir>.

Every run writes a self-describing --run_dir: flags.txt (the flags as used, a valid flagfile),
configs.json (resolved configs), TensorBoard logs (tb/) and summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging

from pipelines import mel_flags
from tftag import datacard, datasets, extraction

MODES = ("extract", "describe")
CATALOGS = ("synthetic", "mtat", "msd", "csv", "folder")

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "extract", list(MODES), "What to run.")
flags.DEFINE_string("run_dir", None, "Run directory (created): flags, configs, TensorBoard logs, "
                    "summary.json, and the dataset of --mode=extract.")
flags.DEFINE_enum("catalog", "synthetic", list(CATALOGS), "Which collection: the built-in corpus "
                  "or a user's MTAT / MSD / CSV / folder (see --input).")
flags.DEFINE_string("input", None, "Catalogue input (MTAT or MSD directory, CSV file, audio "
                    "folder, rendered corpus). Empty with --catalog=synthetic: render the corpus "
                    "into <run_dir>/corpus.")
flags.DEFINE_integer("num_clips", 48, "Built-in corpus: clips to render.", lower_bound=1)
flags.DEFINE_float("clip_seconds", 30.0, "Built-in corpus: seconds per rendered clip.",
                   lower_bound=0.5)
flags.DEFINE_integer("synth_sr", 16000, "Built-in corpus: sample rate of the WAVs.",
                     lower_bound=8000)
flags.DEFINE_integer("seed", 0, "Seed (corpus composition).")
mel_flags.define_mel_flags()
flags.DEFINE_enum("mel_dtype", "float32", ["float32", "float16"], "Storage dtype of base mels.")
flags.DEFINE_integer("clips_per_shard", 256, "Clips per TFRecord shard.", lower_bound=1)
flags.DEFINE_integer("direct_num_workers", 1, "Beam DirectRunner workers (0 = all cores).",
                     lower_bound=0)


def _write_run_files(configs) -> None:
    from tftag.data import write_bytes_atomic, write_json_atomic

    os.makedirs(FLAGS.run_dir, exist_ok=True)
    write_bytes_atomic(os.path.join(FLAGS.run_dir, "flags.txt"),
                       FLAGS.flags_into_string().encode("utf-8"))
    write_json_atomic(os.path.join(FLAGS.run_dir, "configs.json"),
                      {"mel_configs": [dict(dataclasses.asdict(c), name=c.name) for c in configs]})


def _catalog():
    if FLAGS.catalog == "synthetic" and not FLAGS.input:
        from tftag.datasets import synthetic

        corpus_dir = os.path.join(FLAGS.run_dir, "corpus")
        started = time.monotonic()
        catalog = synthetic.render_corpus(corpus_dir, FLAGS.num_clips, FLAGS.clip_seconds,
                                          FLAGS.synth_sr, FLAGS.seed, progress=True)
        logging.info("built-in corpus: %d clips in %s (%.1f s)", len(catalog.clips), corpus_dir,
                     time.monotonic() - started)
        return catalog
    if not FLAGS.input:
        raise app.UsageError(f"--input is required with --catalog={FLAGS.catalog}")
    try:
        return datasets.load(FLAGS.catalog, FLAGS.input)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        raise app.UsageError(f"--catalog={FLAGS.catalog} --input={FLAGS.input}: {e}") from None


def _tensorboard_card(card: dict, png: str) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(FLAGS.run_dir, "tb", "data"))
    with writer.as_default():
        tf.summary.text("datacard", "```\n" + datacard.format_card(card) + "\n```", step=0)
        image = tf.image.decode_png(tf.io.read_file(png), channels=4)[tf.newaxis]
        tf.summary.image("tag_frequencies", image, step=0)
        for split, n in card["splits"].items():
            tf.summary.scalar(f"clips/{split}", n, step=0)
    writer.close()


def run_describe() -> dict:
    catalog = _catalog()
    card = datacard.write_card(catalog, FLAGS.run_dir)
    print(datacard.format_card(card))
    _tensorboard_card(card, os.path.join(FLAGS.run_dir, "tag_frequencies.png"))
    return {"mode": "describe", "datacard": os.path.join(FLAGS.run_dir, "datacard.json"),
            "clips": card["clips"], "splits": card["splits"]}


def run_extract(configs) -> dict:
    from pipelines import extract

    catalog = _catalog()
    card = datacard.write_card(catalog, FLAGS.run_dir)
    _tensorboard_card(card, os.path.join(FLAGS.run_dir, "tag_frequencies.png"))
    dataset_dir = os.path.join(FLAGS.run_dir, "dataset")
    plan = extraction.ExtractionPlan(dataset_dir, tuple(configs), catalog.tags, FLAGS.mel_dtype,
                                     FLAGS.clips_per_shard)
    state = extraction.prepare_output(plan, catalog, overwrite=False, retry_failed=False)
    if state == "complete":
        logging.info("%s is complete already", dataset_dir)
        from tftag.data import load_dataset_info

        meta = load_dataset_info(dataset_dir).raw
        summary = {k: meta[k] for k in ("clips_total", "clips_written", "clips_failed", "splits")}
    else:
        options = extract.pipeline_options("DirectRunner", FLAGS.direct_num_workers)
        summary = extract.run(plan, catalog, options)
    print(f"extracted {summary['clips_written']}/{summary['clips_total']} clips into {dataset_dir}")
    return {"mode": "extract", "dataset_dir": dataset_dir, **summary}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.run_dir:
        raise app.UsageError("--run_dir is required")
    configs = mel_flags.mel_configs()
    _write_run_files(configs)
    summary = run_describe() if FLAGS.mode == "describe" else run_extract(configs)
    from tftag.data import write_json_atomic

    write_json_atomic(os.path.join(FLAGS.run_dir, "summary.json"), summary)
    logging.info("summary: %s", json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
