"""Atomic file output: write to a temporary file beside the target, fsync, rename.

Every file bloomlink writes for a person or a peer (encoded files, positions files, link-key
files, LU payloads) goes through here, so a crash or a bad row never leaves half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "fsync_directory"]


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path | str, *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block finishes without error.

    The file is created with ``mode`` (default owner-only): outputs may be private to the
    department (positions files) and nothing should be more open than it needs to be.
    """
    target = Path(path)
    if target.is_dir():
        # Said before anything is written, naming the path (a rename would name the temp file).
        raise IsADirectoryError(errno.EISDIR, "it is a directory; give a file path", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".partial", dir=target.parent
    )
    temp = Path(temp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fsync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
