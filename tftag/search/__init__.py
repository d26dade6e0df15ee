"""How low can your data go: searches over resolution, model, width and codec.

Owns ``how_low`` (``--mode=how_low``: the cost-aware search for the accuracy/cost front and its
cheapest answer), ``tuner`` (its keras-tuner side: the tuner and the multi-fidelity oracles) and
``tune`` (``--mode=tune``: hyper-parameter search at one resolution).

May import: every layer below it, :mod:`tftag.study` included (sweeps, folds, statistics and
Pareto fronts of the grid it is compared with); not :mod:`tftag.tagging`.
"""
