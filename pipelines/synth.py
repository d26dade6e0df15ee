r"""Renders the built-in tagged corpus (procedural MIDI -> FluidSynth -> 16 kHz mono WAV).

    python -m pipelines.synth --num_clips=200 --output_dir=data/synthetic
    python -m pipelines.synth --mode=describe --output_dir=data/synthetic

Same --seed, same bytes. Rendering runs on --workers threads, shows progress and skips clips
already rendered, so an interrupted run resumes. See tftag/datasets/synthetic.py for the tags.
"""

from __future__ import annotations

import time

from absl import app, flags, logging

from tftag import cli
from tftag.storage import datacard
from tftag.datasets import synthetic

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this pipeline's flags (only when it runs as the entry point)."""
    flags.DEFINE_enum("mode", "render", ["render", "describe"], "render: make (or complete) the "
                      "corpus and its data card; describe: only print and write the data card.")
    flags.DEFINE_string("output_dir", None, "Corpus directory.")
    flags.DEFINE_integer("num_clips", 200, "Clips in the corpus.", lower_bound=1)
    flags.DEFINE_float("duration", 30.0, "Seconds per clip.", lower_bound=0.5)
    flags.DEFINE_integer("synth_sr", 16000, "Sample rate of the rendered WAVs (Hz).", lower_bound=8000)
    flags.DEFINE_integer("seed", 0, "Composition seed: the same seed gives a byte-identical corpus.")
    flags.DEFINE_integer("workers", 0, "Parallel FluidSynth renders (0 = number of cores).",
                         lower_bound=0)
    flags.DEFINE_string("soundfont", synthetic.SOUNDFONT, "General MIDI SoundFont (.sf2).")
    flags.DEFINE_bool("overwrite_corpus", False, "Replace a corpus rendered with other settings.")


def render_from_flags(output_dir: str):
    """Renders the corpus described by the flags; returns its catalogue."""
    started = time.monotonic()
    catalog = synthetic.render_corpus(
        output_dir, FLAGS.num_clips, FLAGS.duration, FLAGS.synth_sr, FLAGS.seed, FLAGS.workers,
        FLAGS.soundfont, FLAGS.overwrite_corpus, progress=True,
    )
    seconds = time.monotonic() - started
    rendered = catalog.info["rendered_now"]
    logging.info("corpus %s: %d clips (%d rendered now in %.1f s, %.3f s/clip)", output_dir,
                 len(catalog.clips), rendered, seconds, seconds / max(rendered, 1))
    return catalog


def main(argv):
    del argv
    if FLAGS.mode == "render":
        try:
            catalog = render_from_flags(FLAGS.output_dir)
        except FileExistsError as e:
            raise app.UsageError(str(e)) from None
    else:
        catalog = synthetic.load_synthetic(FLAGS.output_dir)
    card = datacard.write_card(catalog, FLAGS.output_dir)
    print(datacard.format_card(card))


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("output_dir")
    cli.run(main)
