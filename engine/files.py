"""Atomic file writes: the keys file, promoted rule files and edited list files.

A worker reloading a file must read either the old text or the new one, never half of one, and a crash
must leave one of the two on disk. So the text goes to a temporary dot file beside the target (the
rules loader skips dot files, and so does a reload caught mid-write), is fsynced, renamed over the
target, and the directory is fsynced so that the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` with `text` (UTF-8) atomically; the file gets `mode`, set before it is visible.

    The temporary file is created 0600 by `mkstemp`, so a secret is never readable by others, not even
    for a moment; its mode is set to `mode` before the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
