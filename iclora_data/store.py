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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from iclora_data.errors import IcloraError
from iclora_data.outdir import STORE_DIR, TEMP_PREFIX
from iclora_data.secrets import scrub_obj


class OutputLockedError(IcloraError, RuntimeError):
    """OUT is in use by another run: the user waits or picks another OUT (one ``error:`` line)."""


def content_key(*parts: Any) -> str:
    """A stable sha256 key of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, in every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes files 0600; a finished file gets the mode open() would have given it (0666 & ~umask)
FILE_MODE = 0o666 & ~_read_umask()
DIR_MODE = 0o777 & ~_read_umask()


def temp_file(folder: Path, name: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file beside its final ``name`` (same file system: the rename is atomic)."""
    return tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}{name}.", suffix=suffix)


def temp_dir(folder: Path, name: str) -> Path:
    """A new temporary folder in ``folder`` with the user's mode (mkdtemp makes it 0700)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=folder, prefix=f"{TEMP_PREFIX}{name}."))
    path.chmod(DIR_MODE)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temporary file + rename).

    No fsync here: a rename is atomic against a killed process, and durability against power loss
    is bought once per shard (``sync_filesystem``), not once per tiny file (docs/ARCHITECTURE.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), FILE_MODE)
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
    fd, tmp = temp_file(path.parent, path.stem, path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            os.chmod(tmp, FILE_MODE)
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


def sync_filesystem(path: Path) -> None:
    """Flush everything written to the file system holding ``path`` to disk (Linux ``syncfs``; else
    ``sync``). Called once per shard and once per commit: the durability point of a build."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


_SYNC_INTERVAL = 5.0  # seconds: at most one syncfs per process this often from the shards
_last_sync = [0.0]
_sync_lock = threading.Lock()


def sync_shard(path: Path) -> None:
    """The durability point of a shard: its store objects reach the disk. A syncfs flushes the whole file
    system (50-200 ms on a busy machine), so shards of one process share one every few seconds; the
    commit step syncs unconditionally before it touches an output (docs/ARCHITECTURE.md)."""
    with _sync_lock:
        now = time.monotonic()
        if now - _last_sync[0] < _SYNC_INTERVAL:
            return
        _last_sync[0] = now
    sync_filesystem(path)


# Names an older iclora gave its temporary files: ".<name>.<8 random chars>[.ext]"
_LEGACY_PARTIAL = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def is_partial(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) or bool(_LEGACY_PARTIAL.match(name))


def remove_partial_files(out: Path) -> int:
    """Delete temporary files and folders a killed run left under OUT (called under the OUT lock:
    none is in use). Finished files were renamed into place whole, so only these can be partial."""
    import shutil

    removed = 0
    for folder, dirs, files in os.walk(out):
        for name in [d for d in dirs if d.startswith(TEMP_PREFIX)]:
            shutil.rmtree(Path(folder, name), ignore_errors=True)
            dirs.remove(name)
            removed += 1
        for name in files:
            if name.startswith(".") and is_partial(name):
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
        atomic_write_json(path, scrub_obj(data))  # records may hold server text that echoes a key
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


def _path_key(path: str) -> str:
    """A path as SQLite text: a name that is not UTF-8 (os.fsdecode keeps its bytes as surrogates, which
    SQLite cannot store) is written with the ledger's reversible escape, so keys stay unique."""
    from iclora_data.ingest import ledger_name

    return ledger_name(path)


class StatCache:
    """What is known of a local file from its ``stat``, as git's index knows it: (path, size, mtime_ns,
    inode) -> sha256 and the panel's facts. An unchanged SOURCE is then neither read nor hashed again.

    One SQLite file in the run store. Workers only read it (``lookup``, any thread or process); the
    driver writes what the shards learnt (``update``), so there is one writer."""

    # a file changed within this many seconds of being read might change again within the same
    # mtime tick unseen ("racily clean" in git's words): such entries are not cached
    RACY_SECONDS = 2.0

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: Any = None

    def _connect(self, write: bool) -> Any:
        import sqlite3

        if self._conn is None:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")  # readers in workers never wait for the writer
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                             "mtime_ns INTEGER, ino INTEGER, sha256 TEXT, facts TEXT)")
            else:
                if not self.path.exists():
                    return None
                # read-only: a worker takes no lock that could make the driver's writes wait
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                                       check_same_thread=False)
            self._conn = conn
        return self._conn

    def open_for_writing(self) -> None:
        """Create the table and switch to WAL, before any worker reads (the driver calls it)."""
        self._connect(write=True)

    @staticmethod
    def stat_key(st: os.stat_result) -> tuple[int, int, int]:
        return st.st_size, st.st_mtime_ns, st.st_ino

    def lookup(self, path: str, st: os.stat_result) -> tuple[str, dict[str, Any] | None] | None:
        """(sha256, facts or None) of ``path`` when its stat is unchanged since it was cached."""
        import sqlite3

        conn = self._connect(write=False)
        if conn is None:
            return None
        try:
            row = conn.execute("SELECT size, mtime_ns, ino, sha256, facts FROM files WHERE path = ?",
                               (_path_key(path),)).fetchone()
        except sqlite3.OperationalError:  # no table yet, or the file is not a database: a miss
            return None
        if row is None or tuple(row[:3]) != self.stat_key(st):
            return None
        return row[3], (json.loads(row[4]) if row[4] else None)

    @classmethod
    def row(cls, path: str, st: os.stat_result, sha: str, facts: dict[str, Any] | None,
            read_at: float) -> tuple[Any, ...] | None:
        """A row for ``update``, or None when the file is too fresh to trust its stat."""
        if read_at - st.st_mtime_ns / 1e9 < cls.RACY_SECONDS:
            return None
        return (_path_key(path), *cls.stat_key(st), sha, json.dumps(facts, separators=(",", ":")) if facts else None)

    def update(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        conn = self._connect(write=True)
        with conn:
            conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
