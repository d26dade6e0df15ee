"""``python -m tftag`` and the ``tftag`` console command (pyproject.toml): ``tftag.main`` run as
the program, exactly as ``python -m tftag.main`` runs it (its flags are the main module's, so
``--helpshort`` lists them)."""

from __future__ import annotations

import runpy


def console() -> None:
    """Runs ``tftag.main`` as ``__main__`` with the command line as it is."""
    runpy.run_module("tftag.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    console()
