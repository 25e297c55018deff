"""Archives as SOURCE: ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` (also ``.tar.bz2``/``.tar.xz``)
holding a folder of sets, or IC-LoRA's flat ``jpg``+``txt`` pairs (ready composites).

Nothing is extracted where the format allows random access: a zip member is read through the
archive's central directory when a stage needs it (locator ``zip:<archive>!<member>``), and a
member of an uncompressed tar by seeking to its data (``tar:<archive>!<offset>:<size>``).
A compressed tar has no random access (reaching member k means decompressing all before it), so it
is read once, in order, and each member is spooled into a content-addressed folder: one pass of
decompression and one copy of the images on disk, instead of a decompression per panel.

Every entry is in the ledger, as ``<archive name>/<member>``. Entries whose names hold ``..`` or
an absolute path, links, devices, encrypted and duplicate entries are rejected with their reason.
Zip bombs are bounded before a byte is inflated: a member's declared size, its compression ratio
and the archive's declared total. Python's zipfile never inflates past the declared size (and
checks the CRC), so the declared size bounds the actual one.
"""

from __future__ import annotations

import stat
import tarfile
import threading
import zipfile
import zlib
from collections import Counter, OrderedDict
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

from iclora_data.records import FileEntry
from iclora_data.sources import TAR_PREFIX, ZIP_PREFIX
from iclora_data.sources.settings import ArchiveSettings
from iclora_data.sources.spool import spool_bytes
from iclora_data.sources.tree import Entry, group_entries, strip_wrapper

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_SMALL = 1_000_000  # under this size, a high compression ratio is harmless (a flat PNG, a text file)


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(ZIP_SUFFIXES + TAR_SUFFIXES)


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used, or None. Backslashes count as separators (Windows zips)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "unsafe entry: absolute path in the archive"
    if ".." in PurePosixPath(posix).parts:
        return "unsafe entry: '..' in its path would leave the archive"
    return None


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n:,.0f} bytes"


class _Budget:
    """The archive-wide total of uncompressed bytes, checked as entries are accepted."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> str | None:
        if self.used + size > self.limit:
            return (f"over the archive limit: entries before it already hold {_mb(self.used)} uncompressed, "
                    f"the limit is {_mb(self.limit)} (source.archive.max_total_bytes)")
        self.used += size
        return None


# ----- zip -------------------------------------------------------------------------------------------


def zip_locator(archive: Path, member: str) -> str:
    return f"{ZIP_PREFIX}{quote(str(archive))}!{quote(member)}"


def _zip_entries(archive: Path, settings: ArchiveSettings) -> tuple[list[Entry], list[FileEntry]]:
    label = archive.name
    entries: list[Entry] = []
    files: list[FileEntry] = []
    budget = _Budget(settings.max_total_bytes)
    seen: set[str] = set()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        from iclora_data.ingest import SourceError

        raise SourceError(f"SOURCE {archive} is not a readable zip archive: {exc}") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        # two entries of one name: tools disagree on which is meant (zipfile reads the last), so neither is used
        name_count = Counter(i.filename for i in infos)
        for number, info in enumerate(infos, 1):
            ledger = f"{label}/{info.filename}"
            if ledger in seen:
                ledger = f"{ledger} (entry {number})"
            mode = info.external_attr >> 16
            problem = unsafe_name(info.filename)
            if problem is None and name_count[info.filename] > 1:
                problem = f"ambiguous entry: the archive holds {name_count[info.filename]} entries of this name"
            if problem is None and stat.S_ISLNK(mode):
                problem = "symbolic link in the archive (not followed)"
            if problem is None and info.flag_bits & 0x1:
                problem = "encrypted entry (no password is used)"
            if problem is None and info.file_size > settings.max_member_bytes:
                problem = (f"too large: declares {_mb(info.file_size)} uncompressed, over the limit of "
                           f"{_mb(settings.max_member_bytes)} (source.archive.max_member_bytes)")
            if problem is None and info.file_size > _SMALL \
                    and info.file_size > settings.max_ratio * max(info.compress_size, 1):
                problem = (f"compression ratio {info.file_size / max(info.compress_size, 1):,.0f}:1 is over the "
                           f"limit of {settings.max_ratio:,.0f}:1 (zip bomb guard)")
            if problem is None:
                problem = budget.take(info.file_size)
            seen.add(ledger)
            if problem:
                files.append(FileEntry(ledger, None, "rejected", problem))
                continue
            entries.append(Entry(info.filename.replace("\\", "/"), zip_locator(archive, info.filename), ledger))
    return entries, files


_open_zips = threading.local()  # per thread: a ZipFile shares one file position between readers
_MAX_OPEN = 8


def _zip_handle(path: str) -> zipfile.ZipFile:
    cache: OrderedDict[str, zipfile.ZipFile] = getattr(_open_zips, "cache", None) or OrderedDict()
    _open_zips.cache = cache
    zf = cache.get(path)
    if zf is None:
        zf = zipfile.ZipFile(path)  # parses the central directory once, not once per member
        cache[path] = zf
        while len(cache) > _MAX_OPEN:
            cache.popitem(last=False)[1].close()
    cache.move_to_end(path)
    return zf


def read_zip_member(locator: str) -> bytes:
    archive, _, member = locator[len(ZIP_PREFIX):].partition("!")
    path, name = unquote(archive), unquote(member)
    try:
        zf = _zip_handle(path)
        info = zf.getinfo(name)
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except KeyError:
        raise OSError(f"no entry {name!r} in {path}") from None
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
        raise OSError(f"cannot read entry {name!r} of {Path(path).name}: {exc}") from None
    if len(data) != info.file_size:  # belt and braces: zipfile stops at the declared size
        raise OSError(f"entry {name!r} holds {len(data)} bytes, its header declares {info.file_size}")
    return data


# ----- tar -------------------------------------------------------------------------------------------


def tar_locator(archive: Path, offset: int, size: int) -> str:
    return f"{TAR_PREFIX}{quote(str(archive))}!{offset}:{size}"


def read_tar_member(locator: str) -> bytes:
    archive, _, span = locator[len(TAR_PREFIX):].rpartition("!")
    offset, _, size = span.partition(":")
    with open(unquote(archive), "rb") as f:
        f.seek(int(offset))
        data = f.read(int(size))
    if len(data) != int(size):
        raise OSError(f"tar entry at byte {offset} of {unquote(archive)} is cut short")
    return data


def _tar_entries(archive: Path, settings: ArchiveSettings, spool_dir: Path) -> tuple[list[Entry], list[FileEntry]]:
    label = archive.name
    compressed = not archive.name.lower().endswith(".tar")
    entries: list[Entry] = []
    files: list[FileEntry] = []
    budget = _Budget(settings.max_total_bytes)
    # a compressed tar's expansion is bounded as a whole: there is no per-member compressed size. The floor
    # keeps small archives of highly compressible headers and padding (tar blocks are zeros) usable.
    expansion_limit = max(settings.max_ratio * archive.stat().st_size, 10 * _SMALL) if compressed else None
    seen: set[str] = set()
    try:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        from iclora_data.ingest import SourceError

        raise SourceError(f"SOURCE {archive} is not a readable tar archive: {exc}") from None
    with tf:
        try:
            for number, member in enumerate(tf, 1):
                if member.isdir():
                    continue
                ledger = f"{label}/{member.name}"
                problem = unsafe_name(member.name)
                if ledger in seen:  # read by offset, so the first is unambiguous; later copies are set aside
                    ledger = f"{ledger} (entry {number})"
                    problem = problem or "duplicate entry: an earlier entry of the archive has the same name"
                if problem is None and (member.issym() or member.islnk()):
                    problem = "link in the archive (not followed)"
                if problem is None and not member.isreg():
                    problem = "not a regular file (device, pipe or special entry)"
                if problem is None and member.size > settings.max_member_bytes:
                    problem = (f"too large: {_mb(member.size)} uncompressed, over the limit of "
                               f"{_mb(settings.max_member_bytes)} (source.archive.max_member_bytes)")
                if problem is None:
                    problem = budget.take(member.size)
                if problem is None and expansion_limit is not None and budget.used > expansion_limit:
                    problem = (f"the archive expands to more than {settings.max_ratio:,.0f} times its "
                               "compressed size (bomb guard)")
                seen.add(ledger)
                if problem:
                    files.append(FileEntry(ledger, None, "rejected", problem))
                    continue
                if compressed:
                    f = tf.extractfile(member)
                    if f is None:
                        files.append(FileEntry(ledger, None, "rejected", "entry has no data"))
                        continue
                    locator = str(spool_bytes(spool_dir, f.read()))
                else:
                    locator = tar_locator(archive, member.offset_data, member.size)
                entries.append(Entry(member.name, locator, ledger))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            # a cut-short or corrupt tail: what was read stands; the rest cannot be listed
            files.append(FileEntry(f"{label}/(after {len(seen)} entries)", None, "rejected",
                                   f"the archive is corrupt or cut short here: {exc}"))
    return entries, files


# ----- ingest ----------------------------------------------------------------------------------------


def ingest_archive(archive: Path, settings: ArchiveSettings, spool_dir: Path, *, grid: str | None = None,
                   pairs: bool | None = None):  # -> IngestResult (imported late: ingest imports this module)
    from iclora_data.ingest import IngestResult

    archive = archive.resolve()
    if archive.name.lower().endswith(ZIP_SUFFIXES):
        entries, files = _zip_entries(archive, settings)
    else:
        entries, files = _tar_entries(archive, settings, spool_dir)
    sets, set_aside = group_entries(strip_wrapper(entries), pairs=pairs, grid=grid)
    return IngestResult(archive, "archive", sets=sets, files=files + set_aside)
