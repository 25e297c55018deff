"""Sets from a list of named entries that are not files of a folder: archive members (and a folder
of IC-LoRA jpg+txt pairs). The same rules as a folder SOURCE (README "Source layouts",
docs/ARCHITECTURE.md "Sources"): each top-level folder is a set, its images in natural order,
``set.json``/``caption.txt``/``N.txt`` as metadata, junk and loose files ignored with a reason."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from natsort import natsorted, ns
from pydantic import ValidationError

from iclora_data.ingest import (
    IMAGE_SUFFIXES,
    JUNK_DIRS,
    SET_CAPTION,
    SET_META,
    SetMeta,
    _junk_reason,
    _pydantic_message,
    _text_problems,
    panel_hints,
)
from iclora_data.layout import LayoutError
from iclora_data.records import FileEntry, SourceSet
from iclora_data.sources import read_source
from iclora_data.sources.composite import resolve_grid


@dataclass(frozen=True)
class Entry:
    name: str  # POSIX path inside the container, relative to its root
    locator: str  # how read_source reads it
    ledger: str  # its path in the ledger


def _text(entry: Entry) -> str:
    return read_source(entry.locator).decode("utf-8", errors="replace").strip()


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _single_top(names: list[str]) -> str | None:
    useful = [n for n in names if _junk_reason(PurePosixPath(n).parts) is None]
    tops = {PurePosixPath(n).parts[0] for n in useful}
    if len(tops) != 1 or any(len(PurePosixPath(n).parts) < 2 for n in useful):
        return None
    return next(iter(tops))


def strip_wrapper(entries: list[Entry]) -> list[Entry]:
    """Entries without the single folder that wraps everything (``dataset/`` of ``dataset/set-a/1.jpg``).

    Zipping a folder usually stores it as the top folder. It is stripped when it holds folders (its
    sub-folders are then the sets), or when it holds IC-LoRA pairs; never when it is itself one set."""
    top = _single_top([e.name for e in entries])
    if top is None:
        return entries
    stripped = [Entry(e.name[len(top) + 1:], e.locator, e.ledger) if e.name.startswith(top + "/") else e
                for e in entries]
    deeper = any(len(PurePosixPath(e.name).parts) >= 3 for e in entries if e.name.startswith(top + "/"))
    return stripped if deeper or looks_like_pairs(stripped) else entries


def looks_like_pairs(entries: list[Entry]) -> bool:
    """IC-LoRA's flat layout: images at the root, most with a same-named .txt, no set folders."""
    useful = [e for e in entries if _junk_reason(PurePosixPath(e.name).parts) is None]
    if any("/" in e.name and _is_image(e.name) for e in useful):
        return False
    images = [e.name for e in useful if _is_image(e.name)]
    stems = {str(PurePosixPath(e.name).with_suffix("")) for e in useful if e.name.lower().endswith(".txt")}
    paired = sum(str(PurePosixPath(n).with_suffix("")) in stems for n in images)
    return bool(images) and paired * 2 >= len(images)


def group_entries(entries: list[Entry], *, pairs: bool | None = None,
                  grid: str | None = None) -> tuple[list[SourceSet], list[FileEntry]]:
    """Sets and set-aside files of a container. ``pairs`` None: detect IC-LoRA's flat pairs."""
    if pairs is None:
        pairs = looks_like_pairs(entries)
    files: list[FileEntry] = []
    by_set: dict[str, list[Entry]] = {}
    roots: list[Entry] = []
    for e in entries:
        parts = PurePosixPath(e.name).parts
        junk = _junk_reason(parts)
        if junk:
            files.append(FileEntry(e.ledger, None if parts[0] in JUNK_DIRS else parts[0], "ignored", junk))
        elif len(parts) == 1:
            roots.append(e)
        elif len(parts) > 2:
            files.append(FileEntry(e.ledger, parts[0], "ignored",
                                   f"in a sub-folder of set '{parts[0]}'; panels must lie directly in the set folder"))
        else:
            by_set.setdefault(parts[0], []).append(e)
    if pairs:
        sets = _pair_sets(roots, files, grid)
        for set_entries in by_set.values():
            for e in set_entries:
                files.append(FileEntry(e.ledger, None, "ignored", "inside a folder; ready composites lie at the root"))
        return sets, files
    for e in roots:
        files.append(FileEntry(e.ledger, None, "ignored", "loose file: not inside a set folder"))
    sets = [_folder_set(set_id, by_set[set_id], files) for set_id in natsorted(by_set, alg=ns.IGNORECASE)]
    return sets, files


def _pair_sets(roots: list[Entry], files: list[FileEntry], grid: str | None) -> list[SourceSet]:
    by_name = {e.name: e for e in roots}
    images = natsorted([e.name for e in roots if _is_image(e.name)], alg=ns.IGNORECASE)
    stems = [str(PurePosixPath(n).with_suffix("")) for n in images]
    used: set[str] = set()
    sets: list[SourceSet] = []
    for name, stem in zip(images, stems, strict=True):
        e = by_name[name]
        set_id = stem if stems.count(stem) == 1 else name  # 1.jpg and 1.png are two sets
        src = SourceSet(set_id, [e.ledger], [e.locator])
        caption_entry = by_name.get(f"{stem}.txt")
        if caption_entry is not None and stems.count(stem) == 1:
            src.caption = _text(caption_entry) or None
            src.meta_files.append(caption_entry.ledger)
            used.add(caption_entry.name)
        try:
            src.composite_grid = resolve_grid(grid, caption=src.caption)
        except LayoutError as exc:
            src.rejection = str(exc)
        if src.composite_grid is None and src.rejection is None:
            src.composite_grid = ""
            src.rejection = ("a ready composite needs its grid: give --layout ROWSxCOLS (or source.composite_grid); "
                             "its caption names no panel tags to read it from")
        sets.append(src)
        used.add(name)
    for e in roots:
        if e.name not in used:
            what = "caption text without an image of the same name" if e.name.lower().endswith(".txt") \
                else f"not an image file (extension {PurePosixPath(e.name).suffix or 'none'})"
            files.append(FileEntry(e.ledger, None, "ignored", what))
    return sets


def _folder_set(set_id: str, entries: list[Entry], files: list[FileEntry]) -> SourceSet:
    names = {PurePosixPath(e.name).name: e for e in entries}
    src = SourceSet(set_id=set_id, files=[], paths=[])
    meta = SetMeta()
    problems: list[str] = []
    if SET_META in names:
        entry = names.pop(SET_META)
        src.meta_files.append(entry.ledger)
        try:
            meta = SetMeta.model_validate(json.loads(read_source(entry.locator).decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"set.json is not valid JSON: {exc}")
        except ValidationError as exc:
            problems.append(f"set.json: {_pydantic_message(exc)}")
        except OSError as exc:
            problems.append(f"set.json cannot be read: {exc}")
    if SET_CAPTION in names:
        entry = names.pop(SET_CAPTION)
        src.meta_files.append(entry.ledger)
        src.caption = _text(entry) or None
    if meta.caption:
        src.caption = meta.caption.strip() or src.caption
    src.task, src.preset = meta.task, meta.preset
    images = {n: e for n, e in names.items() if _is_image(n)}
    stems = {PurePosixPath(n).stem for n in images}
    hint_files: dict[str, Entry] = {}
    for name in natsorted(set(names) - set(images), alg=ns.IGNORECASE):
        e = names[name]
        if name.lower().endswith(".txt") and PurePosixPath(name).stem in stems:
            src.meta_files.append(e.ledger)
            hint_files[PurePosixPath(name).stem] = e
        else:
            files.append(FileEntry(e.ledger, set_id, "ignored",
                                   f"not an image file (extension {PurePosixPath(name).suffix or 'none'})"))
    if meta.order is not None:
        missing = [n for n in meta.order if n not in images]
        if missing:
            problems.append(f"set.json order names files that are not in the set: {', '.join(missing)}")
        order = [n for n in meta.order if n in images]
        for name in natsorted(set(images) - set(order), alg=ns.IGNORECASE):
            files.append(FileEntry(images[name].ledger, set_id, "ignored", "not listed in set.json order"))
    else:
        order = natsorted(images, alg=ns.IGNORECASE)
    src.files = [images[n].ledger for n in order]
    src.paths = [images[n].locator for n in order]
    def hint_file_text(name: str) -> str:
        hint_entry = hint_files.get(PurePosixPath(name).stem)
        return _text(hint_entry) if hint_entry else ""

    src.panel_hints = panel_hints(order, meta, hint_file_text, problems)
    problems += _text_problems(src, "set.json")  # the caps and checks of a folder set's text, one rule
    if problems:
        src.rejection = "; ".join(dict.fromkeys(problems))
    return src


# ----- a folder of IC-LoRA pairs ---------------------------------------------------------------------


def _pairs_folder_entries(root: Path) -> list[Entry] | None:
    """The files of a folder that holds only files (and junk folders), or None when it has set
    folders or links (those follow the folder-of-sets rules of ``ingest_folder``)."""
    entries: list[Entry] = []
    with os.scandir(root) as it:
        for d in it:
            if d.is_symlink():
                return None
            if d.is_dir():
                if d.name in JUNK_DIRS:
                    continue
                return None
            entries.append(Entry(d.name, str(Path(d.path).resolve()), d.name))
    return entries


def is_pairs_folder(root: Path) -> bool:
    entries = _pairs_folder_entries(root)
    return entries is not None and looks_like_pairs(entries)


def ingest_pairs_folder(root: Path, *, grid: str | None = None):  # -> IngestResult
    from iclora_data.ingest import IngestResult, ingest_folder

    root = root.resolve()
    entries = _pairs_folder_entries(root) or []
    sets, files = group_entries(entries, pairs=True, grid=grid)
    # junk folders are walked as a folder SOURCE would, so each of their files is in the ledger
    junk = [f for f in ingest_folder(root).files if PurePosixPath(f.path).parts[0] in JUNK_DIRS]
    return IngestResult(root, "folder", sets=sets, files=files + junk)
