"""Error types the entry points turn into short messages (no traceback)."""

from __future__ import annotations


class DataError(RuntimeError):
    """A run failed on its data (e.g. a corrupt shard): exit code 1, the message says the fix."""


class Stopped(KeyboardInterrupt):
    """Training stopped on a signal (SIGTERM, a first Ctrl-C) after checkpointing the step it was
    at: not an error (code that handles interrupts treats it as one); the entry points exit with
    128 + the signal's number and say how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum
