"""Dataset storage: the dataset directory, its TFRecord shards, codecs, checks and folds.

Owns ``codecs`` (storage codecs of the stored power mels: float32, float16, uint8), ``dataset_dir``
(the directory's layout and ``dataset.json``, TensorFlow-free), ``data`` (the one feature spec,
the shard writer and the tf.data readers), ``verify`` (``--mode=verify``), ``transcode``
(``--mode=transcode``: re-encode a dataset with another codec), ``datacard`` (the data card of a
catalogue) and ``folds`` (cross-validation folds by track group: a view of one dataset).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`, :mod:`tftag.audio`,
:mod:`tftag.features`, :mod:`tftag.patches`, :mod:`tftag.datasets`.
"""
