"""The run store under ``OUT/.iclora/``: content-addressed artifacts, atomic writes, one lock.

Objects are named by content keys (sha256 of what determines them), so an unchanged input
finds its work already done, and a run killed at any moment leaves either a whole object or
none: every write goes to a temporary file in the same folder and is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

STORE_DIR = ".iclora"


class OutputLockedError(RuntimeError):
    pass


def content_key(*parts: Any) -> str:
    """A stable sha256 key of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    For writers that want a file name (PIL ``save``, ``pyarrow`` writers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Place ``src`` at ``dst`` by hard link (no second copy), falling back to a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)


# atomic_write_* / atomic_path write ".<name>.<8 random chars>[.ext]" and rename it into place
_PARTIAL_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_partial_files(out: Path) -> int:
    """Delete temporary files a killed run left under OUT (called under the OUT lock: none is in use).
    Finished files were renamed into place whole, so only these can be partial."""
    removed = 0
    for folder, _dirs, files in os.walk(out):
        for name in files:
            if name.startswith(".") and _PARTIAL_NAME.match(name):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


class RunStore:
    """Content-addressed objects of one OUT folder."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = self.out / STORE_DIR

    def object_path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def get_json(self, kind: str, key: str) -> Any | None:
        path = self.object_path(kind, key, ".json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put_json(self, kind: str, key: str, data: Any) -> Path:
        path = self.object_path(kind, key, ".json")
        atomic_write_json(path, data)
        return path

    @contextmanager
    def lock(self, timeout: float = 0) -> Iterator[None]:
        """Hold the OUT lock. ``timeout`` seconds to wait; 0 refuses at once, -1 waits forever."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / "lock"))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise OutputLockedError(
                f"{self.out} is in use by another iclora run (lock {self.root / 'lock'}); "
                "wait for it to finish or use another --out") from None
        try:
            yield
        finally:
            lock.release()


def cache_dir(*parts: str) -> Path:
    """User-level cache for things built once per machine (tiny offline models).

    ``ICLORA_CACHE`` overrides; else ``$XDG_CACHE_HOME/iclora`` or ``~/.cache/iclora``."""
    base = os.environ.get("ICLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "iclora")
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
