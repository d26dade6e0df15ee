"""Tagging music collections with pretrained models, exports or a TF Serving server.

Owns ``tag`` (``--mode=tag``), ``tracks`` (whole tracks in bounded memory: block decoding, the
streaming mel, the model's windows), ``embeddings`` (a collection's embeddings: sharded rows + an
index), ``similar`` (``--mode=similar``: nearest tracks, exact or HNSW) and ``ship`` (``--mode=ship``: a finished student run as a
pretrained model that ships with tftag).

May import: every layer below it — :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`,
:mod:`tftag.audio`, :mod:`tftag.features`, :mod:`tftag.patches`, :mod:`tftag.datasets`,
:mod:`tftag.storage`, :mod:`tftag.models`, :mod:`tftag.extraction`, :mod:`tftag.delivery`,
:mod:`tftag.experiment`, :mod:`tftag.evaluate`, :mod:`tftag.profile`, :mod:`tftag.train`.
"""
