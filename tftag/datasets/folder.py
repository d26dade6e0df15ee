"""``folder``: every audio file below a directory, unlabelled (split "all")."""

from __future__ import annotations

import os

from tftag.datasets import UNSPLIT, Catalog, Clip, register

AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au",
    ".wma", ".wv",
)


@register("folder")
def load_folder(input_path: str, **_unused) -> Catalog:
    """All files with an audio extension below ``input_path`` (recursive, sorted, no labels).

    Clip ids are paths relative to ``input_path`` (POSIX separators).
    """
    if not os.path.isdir(input_path):
        raise NotADirectoryError(f"--input={input_path!r} is not a directory")
    clips, ignored = [], []
    for root, dirs, files in os.walk(input_path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, input_path).replace(os.sep, "/")
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
                ignored.append(rel)
                continue
            clips.append(Clip(clip_id=rel, path=path, split=UNSPLIT))
    if not clips:
        raise ValueError(
            f"--input={input_path!r} holds no audio files (extensions: "
            f"{', '.join(AUDIO_EXTENSIONS)})"
        )
    return Catalog(
        name="folder",
        clips=tuple(clips),
        tags=(),
        info={"input": os.path.abspath(input_path), "ignored_files": ignored},
    )
