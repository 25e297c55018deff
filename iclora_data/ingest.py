"""Ingest: find the image sets in SOURCE (a folder of sets or a JSONL/CSV manifest).

Nothing is decoded here. Every regular file and link met under SOURCE ends up either in a
set or in ``IngestResult.files`` as ignored/rejected/used-as-metadata, so the ledger can
account for all of them. Links that point outside SOURCE are never followed.

Hostile input is a ledger reason, never a crash or a hang:

- Names that are not valid UTF-8 are shown with :func:`ledger_name` (``\\xHH`` per undecodable
  byte, ``\\\\`` for a backslash); :func:`name_from_ledger` maps a ledger name back.
- Named pipes, sockets and devices are refused from ``lstat``, without being opened.
- ``set.json`` and manifest rows are parsed defensively: invalid or too deeply nested JSON, wrong
  types, an unknown preset, text that is not UTF-8, an over-long CSV field each reject that set
  or row (with its line number), never the source.
- Caption hints are capped at :data:`MAX_HINT_CHARS`: a longer hint rejects its set, and is never
  read whole or sent to a model.
- The build's own OUT inside SOURCE is skipped (and reported); OUT equal to SOURCE is refused.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from natsort import natsorted, ns
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from iclora_data.errors import IcloraError
from iclora_data.presets import get_preset
from iclora_data.records import FileEntry, SourceSet
from iclora_data.sources import hub_source, is_url
from iclora_data.sources.settings import SourceSettings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                  ".heic", ".heif", ".avif"}
JUNK_DIRS = {"__MACOSX", ".git", ".svn", ".Trash", ".Trashes", ".ipynb_checkpoints", "@eaDir"}
JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini", ".directory", "ehthumbs.db"}
SET_META = "set.json"
SET_CAPTION = "caption.txt"
# A hint (caption.txt, N.txt, set.json or manifest caption/panels) goes into the captioner's prompt.
# T5's 512 tokens hold about 2,000 characters of English; twice that is generous, and a megabyte of
# "hint" is a mistake that would otherwise cost the whole caption batch its memory.
MAX_HINT_CHARS = 4000
MAX_SET_META_BYTES = 1 << 20  # set.json: hints for many panels fit easily
SourceKind = Literal["folder", "manifest", "archive", "dataset"]


class SourceError(IcloraError):
    pass


# ----- names -----------------------------------------------------------------------------------

_SURROGATE = re.compile(r"[\udc80-\udcff]")  # how os.fsdecode (surrogateescape) carries undecodable bytes
_LEDGER_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def ledger_name(name: str) -> str:
    """A file or folder name as the ledger shows it: readable and reversible.

    Names are read with ``os.fsdecode`` (surrogateescape); each byte that is not UTF-8 is written
    ``\\xHH`` (lower-case hex) and a backslash itself ``\\\\``, so every ledger name is valid UTF-8
    text and :func:`name_from_ledger` gives back the exact name on disk."""
    if "\\" not in name and not _SURROGATE.search(name):
        return name
    return "".join("\\\\" if c == "\\" else f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c
                   for c in name)


def name_from_ledger(text: str) -> str:
    """The name on disk (an ``os.fsdecode`` string) of a :func:`ledger_name`."""
    return _LEDGER_ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)


def _undecodable(text: str) -> str | None:
    """Where ``text`` (decoded with surrogateescape) holds bytes that are not UTF-8, or None."""
    m = _SURROGATE.search(text)
    return None if m is None else f"byte 0x{ord(m.group()) - 0xDC00:02X} at column {m.start() + 1}"


# ----- special files ---------------------------------------------------------------------------

_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _not_regular(path: Path, *, follow: bool) -> str | None:
    """Why ``path`` must not be opened (judged from (l)stat, never by opening it), or None."""
    try:
        st = path.stat() if follow else path.lstat()
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(st.st_mode):
        return None
    return f"{_kind(st.st_mode)}, not a regular file (not opened)"


def _read_capped(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ValueError when it is longer."""
    problem = _not_regular(path, follow=True)
    if problem:
        raise OSError(problem)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{os.path.getsize(path):,} bytes, over the limit of {limit:,}")
    return data


def _read_hint(path: Path, what: str) -> tuple[str, str | None]:
    """(hint text, problem) of a caption hint file."""
    try:
        # more than 4 bytes a character is impossible in UTF-8: a longer file is over the limit
        data = _read_capped(path, 4 * MAX_HINT_CHARS)
    except ValueError as exc:
        return "", f"{what} is {exc}: a caption hint may have at most {MAX_HINT_CHARS} characters"
    except OSError as exc:
        return "", _os_problem(what, exc)
    text = data.decode("utf-8", errors="replace").strip()
    return text, _hint_problem(text, what)


def _os_problem(what: str, exc: OSError) -> str:
    # our own refusals carry a phrase ("a named pipe, not a regular file"); the system's a strerror
    return f"{what} cannot be read: {exc.strerror}" if exc.strerror else f"{what} is {exc}"


def _hint_problem(text: str | None, what: str) -> str | None:
    if text and len(text) > MAX_HINT_CHARS:
        return (f"{what} has {len(text):,} characters: a caption hint may have at most {MAX_HINT_CHARS} "
                "(hints go into the captioner's prompt)")
    return None


# ----- set metadata ----------------------------------------------------------------------------


def _known_preset(v: str | None) -> str | None:
    if v is not None:
        get_preset(v)  # the one list of presets; raises naming the known ones
    return v


class SetMeta(BaseModel):
    """Optional ``set.json`` in a set folder."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    preset: str | None = None
    order: list[str] | None = None  # file names in panel order (ledger names)
    panels: list[str] | dict[str, str] | None = None  # per-panel hints, by order or by file name
    caption: str | None = None

    _preset = field_validator("preset")(_known_preset)


@dataclass
class IngestResult:
    source: Path | str  # a path, or an hf://datasets/... address
    kind: SourceKind
    sets: list[SourceSet] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)  # files not (yet) tied to a usable panel


def ingest(source: Path | str, out: Path | None = None, *, settings: SourceSettings | None = None,
           work_dir: Path | None = None, grid: str | None = None) -> IngestResult:
    """Read SOURCE: a folder of sets, a ``.jsonl``/``.csv`` manifest, an archive (``.zip``, ``.tar``,
    ``.tar.gz``), a Hugging Face dataset (a local folder or ``hf://datasets/ORG/NAME[@rev]``), or a
    folder of IC-LoRA jpg+txt pairs (ready composites).

    ``out`` is the build's output folder: when it lies inside SOURCE it is skipped (and reported);
    when it is SOURCE itself the build is refused. ``work_dir`` holds what a source must spool
    (dataset images, compressed tar members): the build passes ``OUT/.iclora``; without it, the user
    cache. ``grid`` (``--layout``) is the grid of ready composites when ``settings.composite_grid``
    gives none."""
    from iclora_data.sources import archive, hf, tree
    from iclora_data.store import cache_dir

    settings = settings or SourceSettings()
    spool = Path(work_dir) / "spool" if work_dir is not None else cache_dir("spool")
    composite_grid = settings.composite_grid or grid
    hub = hub_source(source)
    if hub is not None:
        return hf.ingest_dataset(hub, settings, spool, grid=composite_grid)
    source = Path(source)
    if not source.exists():
        raise SourceError(f"SOURCE {source} does not exist")
    check_out_is_not_source(source, out)
    if source.is_dir() and hf.is_dataset_folder(source):
        return hf.ingest_dataset(source, settings, spool, grid=composite_grid)
    if source.is_dir() and tree.is_pairs_folder(source):
        return tree.ingest_pairs_folder(source, grid=composite_grid)
    if source.is_dir():
        return ingest_folder(source, out)
    if archive.is_archive(source):
        return archive.ingest_archive(source, settings.archive, spool, grid=composite_grid)
    if source.suffix.lower() in (".jsonl", ".csv"):
        problem = _not_regular(source, follow=True)
        if problem:
            raise SourceError(f"SOURCE {source} is {problem}")
        return ingest_manifest(source)
    raise SourceError(f"SOURCE {source} is neither a folder of image sets, a .jsonl/.csv manifest, "
                      "an archive (.zip, .tar, .tar.gz) nor a Hugging Face dataset")


def check_out_is_not_source(source: str | Path, out: str | Path | None) -> None:
    """OUT equal to SOURCE is refused: the build would read its own output as sets."""
    if out is not None and Path(out).resolve() == Path(source).resolve():
        raise SourceError(f"OUT {out} is SOURCE itself: the build would read its own output; "
                          "choose an output folder outside SOURCE")


def _junk_reason(parts: tuple[str, ...]) -> str | None:
    for part in parts[:-1]:
        if part in JUNK_DIRS:
            return f"junk: inside {part}/ (archive or system metadata)"
    name = parts[-1]
    if name in JUNK_FILES:
        return f"junk: {name} is system metadata"
    if name.startswith("._"):
        return "junk: macOS resource fork (._ file)"
    return None


def _link_problem(path: Path, root: Path) -> str | None:
    """Why a symbolic link must not be followed, or None when it stays inside SOURCE."""
    try:
        target = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        return "broken symbolic link"
    if not target.is_relative_to(root):
        return "symbolic link to a file outside SOURCE (not followed)"
    if target.is_dir():
        return "symbolic link to a folder (not followed)"
    problem = _not_regular(target, follow=False)
    return f"symbolic link to {problem}" if problem else None


def ingest_folder(root: Path, out: Path | None = None) -> IngestResult:
    root = root.resolve()
    out_resolved = Path(out).resolve() if out is not None else None
    result = IngestResult(root, "folder")
    by_set: dict[str, list[tuple[str, Path]]] = {}
    set_problems: dict[str, list[str]] = {}

    def ledger_rel(path: Path) -> str:
        return "/".join(ledger_name(p) for p in path.relative_to(root).parts)

    def unreadable(exc: OSError) -> None:  # os.walk's onerror: a folder it cannot list
        folder = Path(exc.filename)
        if folder == root:
            raise SourceError(f"SOURCE {root} cannot be read: {exc.strerror or exc}")
        rel = ledger_rel(folder)
        set_id = rel.split("/")[0]
        if "/" not in rel:
            set_problems.setdefault(set_id, []).append(f"the folder cannot be read: {exc.strerror or exc}")
        else:
            result.files.append(FileEntry(rel + "/", set_id, "ignored",
                                          f"folder cannot be read: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(dirpath)
        # the walk starts at the resolved root and follows no links, so paths here are real paths
        if out_resolved is not None and here == out_resolved.parent and out_resolved.name in dirnames:
            dirnames.remove(out_resolved.name)
            rel = ledger_rel(out_resolved)
            result.files.append(FileEntry(rel + "/", rel.split("/")[0] if "/" in rel else None, "ignored",
                                          "the build's own output folder (OUT) inside SOURCE: not read"))
        # links to folders show up as dirnames; os.walk does not descend into them
        names = list(filenames) + [d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
        if here == root:
            for d in dirnames:
                if d not in JUNK_DIRS:
                    by_set.setdefault(ledger_name(d), [])
        for name in names:
            path = here / name
            raw_parts = path.relative_to(root).parts
            parts = tuple(ledger_name(p) for p in raw_parts)
            rel = "/".join(parts)
            set_id = parts[0] if len(parts) > 1 else None
            junk = _junk_reason(raw_parts)
            if junk:
                result.files.append(FileEntry(rel, None if raw_parts[0] in JUNK_DIRS else set_id, "ignored", junk))
                continue
            problem = _link_problem(path, root) if path.is_symlink() else _not_regular(path, follow=False)
            if problem:
                status: Literal["ignored", "rejected"] = "rejected" if len(parts) == 2 else "ignored"
                result.files.append(FileEntry(rel, set_id, status, problem))
                if status == "rejected" and set_id is not None:
                    by_set.setdefault(set_id, []).append((name, path))  # rejects the set below
                continue
            if len(parts) == 1:
                result.files.append(FileEntry(rel, None, "ignored", "loose file: not inside a set folder"))
            elif len(parts) > 2:
                result.files.append(FileEntry(rel, set_id, "ignored",
                                              f"in a sub-folder of set '{set_id}'; panels must lie directly "
                                              "in the set folder"))
            else:
                by_set.setdefault(set_id or "", []).append((name, path))
    if not by_set and not result.files:
        raise SourceError(f"SOURCE {root} is empty: expected one sub-folder per image set")
    rejected = {f.path for f in result.files if f.status == "rejected"}
    for set_id in natsorted(by_set, alg=ns.IGNORECASE):
        result.sets.append(_folder_set(set_id, by_set[set_id], rejected, result.files,
                                       set_problems.get(set_id, [])))
    return result


def _folder_set(set_id: str, entries: list[tuple[str, Path]], rejected: set[str],
                files: list[FileEntry], folder_problems: list[str]) -> SourceSet:
    names = {ledger_name(name): path for name, path in entries}  # ledger name -> path on disk
    src = SourceSet(set_id=set_id, files=[], paths=[])
    meta = SetMeta()
    rel = lambda name: f"{set_id}/{name}"  # noqa: E731
    problems = list(folder_problems)
    problems += [f"{f.path}: {f.reason}" for f in files if f.set_id == set_id and f.status == "rejected"]
    names = {n: p for n, p in names.items() if rel(n) not in rejected}
    if SET_META in names:
        src.meta_files.append(rel(SET_META))
        meta, problem = _read_set_meta(names.pop(SET_META))
        if problem:
            problems.append(problem)
    if SET_CAPTION in names:
        src.meta_files.append(rel(SET_CAPTION))
        text, problem = _read_hint(names.pop(SET_CAPTION), SET_CAPTION)
        src.caption = text or None
        if problem:
            problems.append(problem)
    if meta.caption:
        src.caption = meta.caption.strip() or src.caption
    src.task, src.preset = meta.task, meta.preset

    images = {n: p for n, p in names.items() if Path(n).suffix.lower() in IMAGE_SUFFIXES}
    stems = {Path(n).stem: n for n in images}
    for name in natsorted(set(names) - set(images), alg=ns.IGNORECASE):
        if Path(name).suffix.lower() == ".txt" and Path(name).stem in stems:
            src.meta_files.append(rel(name))  # per-panel caption hint, read below
        else:
            files.append(FileEntry(rel(name), set_id, "ignored",
                                   f"not an image file (extension {Path(name).suffix or 'none'})"))
    if meta.order is not None:
        missing = [n for n in meta.order if n not in images]
        if missing:
            problems.append(f"set.json order names files that are not in the set: {', '.join(missing)}")
        order = [n for n in meta.order if n in images]
        for name in natsorted(set(images) - set(order), alg=ns.IGNORECASE):
            files.append(FileEntry(rel(name), set_id, "ignored", "not listed in set.json order"))
    else:
        order = natsorted(images, alg=ns.IGNORECASE)
    src.files = [rel(n) for n in order]
    src.paths = [str(images[n]) for n in order]

    def hint_file_text(name: str) -> str:
        hint_file = names.get(f"{Path(name).stem}.txt")
        if not hint_file:
            return ""
        hint, problem = _read_hint(hint_file, f"{Path(name).stem}.txt")
        if problem:
            problems.append(problem)
        return hint

    src.panel_hints = panel_hints(order, meta, hint_file_text, problems)
    problems += _text_problems(src, "set.json")
    if problems:
        src.rejection = _text("; ".join(dict.fromkeys(problems)))
    return src


def panel_hints(order: Sequence[str], meta: SetMeta, hint_file_text: Callable[[str], str],
                problems: list[str]) -> list[str] | None:
    """A set's per-panel hints, for folder and archive sets alike: each panel's ``N.txt`` (read by
    ``hint_file_text``), overridden by set.json ``panels`` (by file name, or a list in panel order)."""
    hints = []
    for name in order:
        hint = hint_file_text(name)
        if isinstance(meta.panels, dict):
            hint = meta.panels.get(name, hint)
        hints.append(hint)
    if isinstance(meta.panels, list):
        if len(meta.panels) != len(order):
            problems.append(f"set.json gives {len(meta.panels)} panel hints for {len(order)} panels")
        else:
            hints = list(meta.panels)
    return hints if any(hints) else None


def _read_set_meta(path: Path) -> tuple[SetMeta, str | None]:
    """``set.json`` parsed, or an empty SetMeta and why it cannot be used."""
    try:
        text = _read_capped(path, MAX_SET_META_BYTES).decode("utf-8")
        return SetMeta.model_validate(json.loads(text)), None
    except ValueError as exc:  # too long
        if isinstance(exc, json.JSONDecodeError):
            return SetMeta(), f"set.json is not valid JSON: {exc}"
        if isinstance(exc, UnicodeDecodeError):
            return SetMeta(), f"set.json is not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at offset {exc.start})"
        if isinstance(exc, ValidationError):
            return SetMeta(), f"set.json: {_pydantic_message(exc)}"
        return SetMeta(), f"set.json is {exc}"
    except RecursionError:
        return SetMeta(), "set.json is not valid JSON: nested too deeply"
    except OSError as exc:
        return SetMeta(), _os_problem("set.json", exc)


def _text_problems(src: SourceSet, where: str) -> list[str]:
    """Hints over the cap, and strings that are not text (a JSON ``\\udcff`` escape)."""
    problems = [p for p in (_hint_problem(src.caption, f"the {where} caption"),
                            *(_hint_problem(h, f"panel {i} hint") for i, h in enumerate(src.panel_hints or [], 1)))
                if p]
    for value in (src.set_id, src.task, src.preset, src.caption, *(src.panel_hints or []), *src.files):
        if value and _undecodable(value):
            problems.append(f"{where} holds a string that is not valid Unicode text ({_undecodable(value)})")
            break
    if problems:  # the set is rejected: keep none of its text, so nothing downstream has to cope with it
        src.task = src.preset = src.caption = src.panel_hints = None
    return problems


def _text(value: str) -> str:
    """Ledger text: a lone surrogate (from a JSON ``\\udcff`` escape) would make the UTF-8 ledger fail."""
    return _SURROGATE.sub("\ufffd", value)


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "value"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}"


# ----- manifests -------------------------------------------------------------------------------


class ManifestRow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    set_id: str
    images: list[str]
    task: str | None = None
    preset: str | None = None
    caption: str | None = None
    panels: list[str] | None = None

    _preset = field_validator("preset")(_known_preset)


def _read_manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row dict or why the row cannot be used) per row."""
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise SourceError(f"manifest {manifest} cannot be read: {exc.strerror or exc}") from None
    # undecodable bytes survive as surrogates so that one Latin-1 row rejects that row, not the file
    text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")
    not_utf8 = "the line is not UTF-8 text ({}); save the manifest as UTF-8"
    if manifest.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.split("\n"), 1):  # JSON text may hold U+2028: split on \n only
            if not line.strip():
                continue
            if _undecodable(line):
                yield n, not_utf8.format(_undecodable(line))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, f"invalid JSON: {exc}"
                continue
            except RecursionError:
                yield n, "invalid JSON: nested too deeply"
                continue
            yield n, row if isinstance(row, dict) else "row is not a JSON object"
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        reader.fieldnames  # noqa: B018 - reads the header, so that line numbers below count it
    except csv.Error as exc:
        raise SourceError(f"manifest {manifest} has no readable CSV header: {exc}") from None
    while True:
        n = reader.line_num + 1  # the line the row starts on (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (128 KiB)
            yield n, f"not valid CSV: {exc}"
            continue
        values = [v for v in row.values() if isinstance(v, str)]
        bad = next((_undecodable(v) for v in values if _undecodable(v)), None)
        if bad:
            yield n, not_utf8.format(bad)
            continue
        images = (row.get("images") or "").strip()
        if images.startswith("["):
            try:
                parsed: Any = json.loads(images)
            except (json.JSONDecodeError, RecursionError) as exc:
                yield n, f"images column is not a JSON list: {exc}"
                continue
        else:
            parsed = [p.strip() for p in images.replace(";", "|").split("|") if p.strip()]
        yield n, {**{k: v for k, v in row.items() if k is not None and v not in (None, "")}, "images": parsed}


def ingest_manifest(manifest: Path) -> IngestResult:
    manifest = manifest.resolve()
    base = manifest.parent
    result = IngestResult(manifest, "manifest")
    result.files.append(FileEntry(ledger_name(manifest.name), None, "used", "the manifest"))
    seen_files: set[str] = {ledger_name(manifest.name)}
    seen_ids: set[str] = set()
    row_id = lambda line: f"{ledger_name(manifest.name)}:{line}"  # noqa: E731
    for line, row in _read_manifest_rows(manifest):
        if isinstance(row, str):
            result.sets.append(SourceSet(row_id(line), [], [], rejection=f"manifest line {line}: {row}"))
            continue
        try:
            parsed = ManifestRow.model_validate(row)
        except ValidationError as exc:
            given = row.get("set_id")
            set_id = given if isinstance(given, str) and given and not _undecodable(given) and \
                given not in seen_ids else row_id(line)
            result.sets.append(SourceSet(set_id, [], [],
                                         rejection=_text(f"manifest line {line}: {_pydantic_message(exc)}")))
            seen_ids.add(set_id)
            continue
        if any(_undecodable(v) for v in (parsed.set_id, *parsed.images)):
            result.sets.append(SourceSet(row_id(line), [], [], rejection=f"manifest line {line}: set_id or images "
                                         "hold a string that is not valid Unicode text"))
            continue
        if parsed.set_id in seen_ids:
            result.sets.append(SourceSet(f"{parsed.set_id} ({row_id(line)})", [], [],
                                         rejection=f"manifest line {line}: set_id '{parsed.set_id}' is used twice"))
            continue
        seen_ids.add(parsed.set_id)
        src = SourceSet(parsed.set_id, [], [], task=parsed.task, preset=parsed.preset, caption=parsed.caption,
                        panel_hints=parsed.panels)
        problems: list[str] = []
        for ref in parsed.images:
            problem, path, ledger = _resolve_reference(base, ref)
            src.files.append(ledger)
            src.paths.append(str(path) if path else ref if is_url(ref) and not problem else "")
            if problem:
                problems.append(f"{ledger}: {problem}")
                if ledger not in seen_files:
                    result.files.append(FileEntry(ledger, parsed.set_id, "rejected", problem))
            seen_files.add(ledger)
        if parsed.panels is not None and len(parsed.panels) != len(parsed.images):
            problems.append(f"{len(parsed.panels)} panel hints for {len(parsed.images)} images")
        problems += _text_problems(src, f"manifest line {line}")
        if problems:
            src.rejection = _text("; ".join(problems))
        result.sets.append(src)
    return result


def _resolve_reference(base: Path, ref: str) -> tuple[str | None, Path | None, str]:
    """(problem, resolved path, ledger path) of a manifest image reference."""
    if "://" in ref:  # fetched per shard by sources.download.fetch_urls; the URL is its own ledger path
        from iclora_data.sources.download import url_problem

        return url_problem(ref), None, ref
    if "\0" in ref:
        return "the path holds a NUL character", None, ref.replace("\0", "\\x00")
    candidate = base / ref
    lexical = Path(os.path.normpath(candidate))
    if not lexical.is_relative_to(base):
        return "path escapes the manifest's folder", None, ref
    ledger = "/".join(ledger_name(p) for p in lexical.relative_to(base).parts)
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, OSError, RuntimeError):
        return "file not found", None, ledger
    if not resolved.is_relative_to(base):
        return "symbolic link to a file outside the manifest's folder (not followed)", None, ledger
    problem = _not_regular(resolved, follow=False)
    if problem:
        return problem, None, ledger
    return None, resolved, ledger
