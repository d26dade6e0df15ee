"""tftag: how low can the input resolution go? Music auto-tagging at every mel resolution.

Library modules take dataclasses (`tftag.features.MelConfig`, ...); flags live only in the entry
points (`tftag/main.py`, `pipelines/*.py`).
"""

__version__ = "0.1.0"
