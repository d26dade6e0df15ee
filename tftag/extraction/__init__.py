"""Extraction: audio catalogues into a dataset directory, labelled by a catalogue or a teacher.

Owns ``extractor`` (the extraction plan and the per-clip work: decode, base mels, staged clips,
shards; resumable), ``pipeline`` (the Apache Beam pipeline around it: Direct, Dask and other
runners), ``extract`` (``--mode=extract`` and ``--mode=describe``, and ``ensure_dataset``, every
mode's ``--dataset_dir`` check) and ``teacher`` (teacher labels from a pretrained model, and
their memo).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`, :mod:`tftag.audio`,
:mod:`tftag.features`, :mod:`tftag.patches`, :mod:`tftag.datasets`, :mod:`tftag.storage`,
:mod:`tftag.models`.
"""
