"""Resolution studies: cross-validated sweeps, where they stand, and their report.

Owns ``sweep`` (``--mode=sweep``: every model × resolution × repeat trained and compared),
``crossval`` (the same over K folds by track group), ``status`` (``--mode=status``: every run of a
study finished, started or not started, and the time left), ``analysis`` (a study read back from
its committed per-run files: pooled metrics, comparisons, per-tag tests; TensorFlow-free),
``stats`` (bootstrap intervals, paired tests, power; plain arrays) and ``pareto`` (accuracy/cost
fronts).

May import: every layer below it — :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`,
:mod:`tftag.audio`, :mod:`tftag.features`, :mod:`tftag.patches`, :mod:`tftag.datasets`,
:mod:`tftag.storage`, :mod:`tftag.models`, :mod:`tftag.extraction`, :mod:`tftag.delivery`,
:mod:`tftag.experiment`, :mod:`tftag.evaluate`, :mod:`tftag.profile`, :mod:`tftag.train`.
"""
