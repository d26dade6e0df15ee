"""Run bookkeeping: what a run directory holds and how a run repeats and spreads.

Owns ``runfiles`` (atomic writes, JSON records, checkpoints and progress of a run directory),
``runrecord`` (which mode owns a run directory's record), ``determinism`` (seeds, op determinism,
thread settings, ``determinism.json``) and ``distributed`` (tf.distribute strategies and
multi-worker roles).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`; no other tftag module (the bottom layer).
"""
