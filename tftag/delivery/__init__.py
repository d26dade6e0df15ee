"""Delivery: trained models as files other programs run.

Owns ``export`` (``--mode=export``: versioned SavedModels for TF Serving and Essentia, reloaded and
compared before they count), ``export_layout`` (the export directory's layout, TensorFlow-free),
``serving`` (a TF Serving client and its configs), ``tflite`` (TFLite conversions: float16,
dynamic, int8), ``litert`` (running a TFLite model with LiteRT) and ``modelcards`` (the cards of
the pretrained models).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`, :mod:`tftag.audio`,
:mod:`tftag.features`, :mod:`tftag.patches`, :mod:`tftag.datasets`, :mod:`tftag.storage`,
:mod:`tftag.models`, :mod:`tftag.extraction`.
"""
