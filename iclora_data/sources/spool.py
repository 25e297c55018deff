"""A content-addressed folder for image bytes that have no file of their own to point at: images
embedded in a dataset's parquet/arrow rows, members of a compressed tar (which has no random access).
Each blob is written once, named by its sha256, so a re-run or a second source with the same image
writes nothing new. Writes go to a temporary name and are renamed into place: a killed run leaves
whole blobs or none."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def spool_bytes(spool_dir: Path, data: bytes) -> Path:
    """Store ``data`` under ``spool_dir`` by content; returns its path (a plain-path locator)."""
    sha = hashlib.sha256(data).hexdigest()
    path = Path(spool_dir) / sha[:2] / sha
    if not path.exists():
        write_replaceable(path, data)
    return path


def write_replaceable(path: Path, data: bytes) -> None:
    """Write whole-or-nothing (temporary name, then rename), without fsync: a file that a crash
    loses is made again by the next run (spooled again, downloaded again), and an fsync per image
    would cost more than the image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
