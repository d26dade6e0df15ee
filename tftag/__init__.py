"""tftag: how low can the input resolution go? Music auto-tagging at every mel resolution.

Library modules take dataclasses (`tftag.features.MelConfig`, ...); flags live only in the entry
points (`tftag/main.py`, `pipelines/*.py`).
"""

import os as _os

__version__ = "0.1.0"

# The folder that holds this package: child processes (Essentia's, Beam's workers) get it on
# $PYTHONPATH so that they import this tftag.
PACKAGE_PARENT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))

# TensorFlow's oneDNN kernels, on unless the user chose (``TF_ENABLE_ONEDNN_OPTS=0`` turns them
# off). TensorFlow enables them by default only on CPUs with AVX-512 or AMX and reads the switch
# once, at its import, so it is set here, before any tftag module imports TensorFlow (a process
# that imported TensorFlow first keeps TensorFlow's choice). Measured on a 2-core AVX2 machine
# (AMD EPYC), one training step of 16 whole clips: VGG-CNN 96x1 width 1/8 7.1 -> 20.3 examples/s
# on one thread, 12.1 -> 37.4 on two; MUSICNN 96x1 width 1/4 (3-s patches) 20.8 -> 25.1 on one.
# Numbers differ from the Eigen kernels' in the last bits; runs stay repeatable (the setting is
# recorded in every run's determinism.json: tftag.runs.determinism).
# Essentia's bundled TensorFlow 2.5 must not inherit this default: with oneDNN on, its
# TensorflowPredict dies of SIGFPE on the same machine; processes that run Essentia get
# tftag.audio._essentia.child_env().
ONEDNN_DEFAULTED = "TF_ENABLE_ONEDNN_OPTS" not in _os.environ
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
