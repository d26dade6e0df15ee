"""Error types the entry points turn into short messages (no traceback)."""

from __future__ import annotations


class DataError(RuntimeError):
    """A run failed on its data (e.g. a corrupt shard): exit code 1, the message says the fix."""
