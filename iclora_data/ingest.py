"""Ingest: find the image sets in SOURCE (a folder of sets or a JSONL/CSV manifest).

Nothing is decoded here. Every regular file and link met under SOURCE ends up either in a
set or in ``IngestResult.files`` as ignored/rejected/used-as-metadata, so the ledger can
account for all of them. Links that point outside SOURCE are never followed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from natsort import natsorted, ns
from pydantic import BaseModel, ConfigDict, ValidationError

from iclora_data.errors import IcloraError
from iclora_data.records import FileEntry, SourceSet
from iclora_data.sources import hub_source, is_url
from iclora_data.sources.settings import SourceSettings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                  ".heic", ".heif", ".avif"}
JUNK_DIRS = {"__MACOSX", ".git", ".svn", ".Trash", ".Trashes", ".ipynb_checkpoints", "@eaDir"}
JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini", ".directory", "ehthumbs.db"}
SET_META = "set.json"
SET_CAPTION = "caption.txt"
SourceKind = Literal["folder", "manifest", "archive", "dataset"]


class SourceError(IcloraError):
    pass


class SetMeta(BaseModel):
    """Optional ``set.json`` in a set folder."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = None
    preset: str | None = None
    order: list[str] | None = None  # file names in panel order
    panels: list[str] | dict[str, str] | None = None  # per-panel hints, by order or by file name
    caption: str | None = None


@dataclass
class IngestResult:
    source: Path | str  # a path, or an hf://datasets/... address
    kind: SourceKind
    sets: list[SourceSet] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)  # files not (yet) tied to a usable panel


def ingest(source: Path | str, *, settings: SourceSettings | None = None, work_dir: Path | None = None,
           grid: str | None = None) -> IngestResult:
    """Read SOURCE: a folder of sets, a ``.jsonl``/``.csv`` manifest, an archive (``.zip``, ``.tar``,
    ``.tar.gz``), a Hugging Face dataset (a local folder or ``hf://datasets/ORG/NAME[@rev]``), or a
    folder of IC-LoRA jpg+txt pairs (ready composites).

    ``work_dir`` holds what a source must spool (dataset images, compressed tar members): the
    build passes ``OUT/.iclora``; without it, the user cache. ``grid`` (``--layout``) is the grid of
    ready composites when ``settings.composite_grid`` gives none."""
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
    if source.is_dir() and hf.is_dataset_folder(source):
        return hf.ingest_dataset(source, settings, spool, grid=composite_grid)
    if source.is_dir() and tree.is_pairs_folder(source):
        return tree.ingest_pairs_folder(source, grid=composite_grid)
    if source.is_dir():
        return ingest_folder(source)
    if archive.is_archive(source):
        return archive.ingest_archive(source, settings.archive, spool, grid=composite_grid)
    if source.suffix.lower() in (".jsonl", ".csv"):
        return ingest_manifest(source)
    raise SourceError(f"SOURCE {source} is neither a folder of image sets, a .jsonl/.csv manifest, "
                      "an archive (.zip, .tar, .tar.gz) nor a Hugging Face dataset")


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
    return None


def ingest_folder(root: Path) -> IngestResult:
    root = root.resolve()
    result = IngestResult(root, "folder")
    by_set: dict[str, list[tuple[str, Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        # links to folders show up as dirnames; os.walk does not descend into them
        names = list(filenames) + [d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
        if here == root:
            for d in dirnames:
                if d not in JUNK_DIRS:
                    by_set.setdefault(d, [])
        for name in names:
            path = here / name
            rel = path.relative_to(root).as_posix()
            parts = PurePosixPath(rel).parts
            set_id = parts[0] if len(parts) > 1 else None
            junk = _junk_reason(parts)
            if junk:
                result.files.append(FileEntry(rel, None if parts[0] in JUNK_DIRS else set_id, "ignored", junk))
                continue
            if path.is_symlink():
                problem = _link_problem(path, root)
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
                by_set.setdefault(parts[0], []).append((name, path))
    if not by_set and not result.files:
        raise SourceError(f"SOURCE {root} is empty: expected one sub-folder per image set")
    rejected_links = {f.path for f in result.files if f.status == "rejected"}
    for set_id in natsorted(by_set, alg=ns.IGNORECASE):
        result.sets.append(_folder_set(root, set_id, by_set[set_id], rejected_links, result.files))
    return result


def _folder_set(root: Path, set_id: str, entries: list[tuple[str, Path]], rejected_links: set[str],
                files: list[FileEntry]) -> SourceSet:
    names = {name: path for name, path in entries}
    src = SourceSet(set_id=set_id, files=[], paths=[])
    meta = SetMeta()
    rel = lambda name: f"{set_id}/{name}"  # noqa: E731
    problems = [f"{f.path}: {f.reason}" for f in files if f.set_id == set_id and f.status == "rejected"]
    if SET_META in names:
        src.meta_files.append(rel(SET_META))
        try:
            meta = SetMeta.model_validate(json.loads(names.pop(SET_META).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"set.json is not valid JSON: {exc}")
        except ValidationError as exc:
            problems.append(f"set.json: {_pydantic_message(exc)}")
    if SET_CAPTION in names:
        src.meta_files.append(rel(SET_CAPTION))
        src.caption = names.pop(SET_CAPTION).read_text(encoding="utf-8", errors="replace").strip() or None
    if meta.caption:
        src.caption = meta.caption.strip() or src.caption
    src.task, src.preset = meta.task, meta.preset

    images = {n: p for n, p in names.items() if Path(n).suffix.lower() in IMAGE_SUFFIXES
              and rel(n) not in rejected_links}
    stems = {Path(n).stem: n for n in images}
    for name in natsorted(set(names) - set(images), alg=ns.IGNORECASE):
        if rel(name) in rejected_links:
            continue
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

    hints: list[str] = []
    for name in order:
        hint_file = names.get(f"{Path(name).stem}.txt")
        hint = hint_file.read_text(encoding="utf-8", errors="replace").strip() if hint_file else ""
        if isinstance(meta.panels, dict):
            hint = meta.panels.get(name, hint)
        hints.append(hint)
    if isinstance(meta.panels, list):
        if len(meta.panels) != len(order):
            problems.append(f"set.json gives {len(meta.panels)} panel hints for {len(order)} panels")
        else:
            hints = list(meta.panels)
    src.panel_hints = hints if any(hints) else None
    if problems:
        src.rejection = "; ".join(problems)
    return src


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "value"
    return f"{loc}: {err['msg']}"


# ----- manifests -------------------------------------------------------------------------------


class ManifestRow(BaseModel):
    model_config = ConfigDict(extra="ignore")
    set_id: str
    images: list[str]
    task: str | None = None
    preset: str | None = None
    caption: str | None = None
    panels: list[str] | None = None


def _read_manifest_rows(manifest: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """(line number, row dict or an error message) per row."""
    rows: list[tuple[int, dict[str, Any] | str]] = []
    text = manifest.read_text(encoding="utf-8-sig")
    if manifest.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((n, row if isinstance(row, dict) else "row is not a JSON object"))
            except json.JSONDecodeError as exc:
                rows.append((n, f"invalid JSON: {exc}"))
        return rows
    for n, row in enumerate(csv.DictReader(text.splitlines()), 2):
        images = (row.get("images") or "").strip()
        if images.startswith("["):
            try:
                parsed: Any = json.loads(images)
            except json.JSONDecodeError as exc:
                rows.append((n, f"images column is not a JSON list: {exc}"))
                continue
        else:
            parsed = [p.strip() for p in images.replace(";", "|").split("|") if p.strip()]
        rows.append((n, {**{k: v for k, v in row.items() if v not in (None, "")}, "images": parsed}))
    return rows


def ingest_manifest(manifest: Path) -> IngestResult:
    manifest = manifest.resolve()
    base = manifest.parent
    result = IngestResult(manifest, "manifest")
    result.files.append(FileEntry(manifest.name, None, "used", "the manifest"))
    seen_files: set[str] = {manifest.name}
    seen_ids: set[str] = set()
    for line, row in _read_manifest_rows(manifest):
        if isinstance(row, str):
            result.sets.append(SourceSet(f"{manifest.name}:{line}", [], [], rejection=f"manifest line {line}: {row}"))
            continue
        try:
            parsed = ManifestRow.model_validate(row)
        except ValidationError as exc:
            set_id = str(row.get("set_id") or f"{manifest.name}:{line}")
            result.sets.append(SourceSet(set_id, [], [], rejection=f"manifest line {line}: {_pydantic_message(exc)}"))
            continue
        if parsed.set_id in seen_ids:
            result.sets.append(SourceSet(f"{parsed.set_id} ({manifest.name}:{line})", [], [],
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
        if problems:
            src.rejection = "; ".join(problems)
        result.sets.append(src)
    return result


def _resolve_reference(base: Path, ref: str) -> tuple[str | None, Path | None, str]:
    """(problem, resolved path, ledger path) of a manifest image reference."""
    if "://" in ref:  # fetched per shard by sources.download.fetch_urls; the URL is its own ledger path
        from iclora_data.sources.download import url_problem

        return url_problem(ref), None, ref
    candidate = base / ref
    lexical = Path(os.path.normpath(candidate))
    if not lexical.is_relative_to(base):
        return "path escapes the manifest's folder", None, ref
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, OSError):
        return "file not found", None, lexical.relative_to(base).as_posix()
    ledger = lexical.relative_to(base).as_posix()
    if not resolved.is_relative_to(base):
        return "symbolic link to a file outside the manifest's folder (not followed)", None, ledger
    if not resolved.is_file():
        return "not a regular file", None, ledger
    return None, resolved, ledger
