"""runfiles.atomic_path, the one write-to-temp-then-rename, and the writers built on it."""

from __future__ import annotations

import os

import pytest

from tftag.runs import runfiles


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with runfiles.atomic_path(str(target), suffix=".bin") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "sub")  # beside the target: same filesystem
        assert os.path.basename(tmp).startswith(".tmp-") and tmp.endswith(".bin")
        assert not target.exists()
        with open(tmp, "wb") as f:
            f.write(b"payload")
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path / "sub") == ["out.bin"]


def test_atomic_path_gives_the_mode_open_would(tmp_path):
    old = os.umask(0o027)
    try:
        with runfiles.atomic_path(str(tmp_path / "plot.png"), suffix=".png") as tmp:
            assert os.stat(tmp).st_mode & 0o777 == 0o600  # private while half-written
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "plot.png").st_mode & 0o777 == 0o640
    assert os.stat(plain).st_mode & 0o777 == 0o640


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with runfiles.atomic_path(str(target)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # the temp file is gone


def test_writers_use_it(tmp_path):
    runfiles.write_json_atomic(str(tmp_path / "a" / "x.json"), {"b": [1, 2]})
    assert runfiles.read_json(str(tmp_path / "a" / "x.json")) == {"b": [1, 2]}
    runfiles.write_text_atomic(str(tmp_path / "t.txt"), "line")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    with pytest.raises(TypeError):
        runfiles.write_json_atomic(str(tmp_path / "bad.json"), {"x": object()})
    assert not (tmp_path / "bad.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["a", "t.txt"]


def test_save_figure_atomic(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    path = runfiles.save_figure_atomic(fig, str(tmp_path / "plot.png"), dpi=50)
    assert path == str(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["plot.png"]
    assert not plt.fignum_exists(fig.number)  # closed
