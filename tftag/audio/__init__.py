"""Audio primitives below the mel: Essentia in its own process and the compressions.

Owns ``_essentia`` (the parent side: decoding and Essentia's mel in an isolated child process,
since essentia-tensorflow's bundled TensorFlow 2.5 aborts a process that imported TensorFlow
first), ``_essentia_guard`` (the check that keeps TensorFlow out of that child), ``_essentia_ops``
(the child process itself) and ``compressions`` (the registry of mel compressions: log, dB, ...).

May import: :mod:`tftag.registry`, :mod:`tftag.errors`, :mod:`tftag.runs`.
"""
