"""The ledger, ``OUT/report.json``: every file and every set exactly once, with a reason."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iclora_data.ingest import IngestResult
from iclora_data.outdir import OutDir
from iclora_data.records import FileEntry, FileStatus, PreparedSet, SetDecision, SetEntry, to_dict
from iclora_data.store import FILE_MODE, atomic_write_json

REPORT_VERSION = 1


def set_entries(ingested: IngestResult, prepared: Mapping[str, PreparedSet],
                decisions: Mapping[str, SetDecision]) -> list[SetEntry]:
    """The final status of every set, in ingest order."""
    entries = []
    for src in ingested.sets:
        p = prepared.get(src.set_id)
        d = decisions.get(src.set_id)
        if p is not None and p.rejection:
            entry = SetEntry(src.set_id, "rejected", p.rejection, None, list(src.files))
        elif src.rejection:
            entry = SetEntry(src.set_id, "rejected", src.rejection, None, list(src.files))
        elif d is None:
            raise RuntimeError(f"set {src.set_id!r} has neither a rejection nor a dedup decision")
        else:
            entry = SetEntry(src.set_id, d.status, d.reason, d.duplicate_of, list(src.files), list(d.warnings))
        entries.append(entry)
    return entries


def file_entries(ingested: IngestResult, sets: Sequence[SetEntry],
                 prepared: Mapping[str, PreparedSet]) -> list[FileEntry]:
    """Every file exactly once: what ingest set aside, then each set's panels and metadata."""
    files: dict[str, FileEntry] = {}
    for f in ingested.files:
        files.setdefault(f.path, f)
    by_id = {s.set_id: s for s in sets}
    for src in ingested.sets:
        entry = by_id[src.set_id]
        p = prepared.get(src.set_id)
        own_reasons = p.file_reasons if p else {}
        for i, path in enumerate(src.files, 1):
            if path in files:
                continue  # already accounted for (a manifest reference that was missing, or used twice)
            if entry.status == "kept":
                files[path] = FileEntry(path, src.set_id, "used", f"panel {i} of set '{src.set_id}'")
            elif entry.status == "duplicate":
                files[path] = FileEntry(path, src.set_id, "duplicate",
                                        f"set '{src.set_id}' duplicates set '{entry.duplicate_of}'")
            elif path in own_reasons:
                files[path] = FileEntry(path, src.set_id, "rejected", own_reasons[path])
            else:
                files[path] = FileEntry(path, src.set_id, "rejected",
                                        f"set '{src.set_id}' was rejected: {entry.reason}")
        for path in src.meta_files:
            if path in files:
                continue
            what = "set description" if path.endswith("set.json") else "caption text"
            if entry.status == "kept":
                files[path] = FileEntry(path, src.set_id, "used", f"{what} of set '{src.set_id}'")
            else:
                status: FileStatus = "duplicate" if entry.status == "duplicate" else "rejected"
                files[path] = FileEntry(path, src.set_id, status, f"{what} of {entry.status} set '{src.set_id}'")
    return sorted(files.values(), key=lambda f: f.path)


def build_report_entries(
    ingested: IngestResult, prepared: Sequence[PreparedSet], decisions: Mapping[str, SetDecision],
) -> tuple[list[SetEntry], list[FileEntry], dict[str, int]]:
    """The ledger's set entries, file entries and counts."""
    by_id = {p.set_id: p for p in prepared}
    sets = set_entries(ingested, by_id, decisions)
    files = file_entries(ingested, sets, by_id)
    counts = {"files": len(files), "sets": len(sets),
              "kept": sum(s.status == "kept" for s in sets),
              "duplicate": sum(s.status == "duplicate" for s in sets),
              "rejected": sum(s.status == "rejected" for s in sets)}
    return sets, files, counts


def build_report(ingested: IngestResult, prepared: Sequence[PreparedSet],
                 decisions: Mapping[str, SetDecision]) -> dict[str, Any]:
    """The whole ledger as one dict (small builds and tests; the build streams it instead)."""
    sets, files, counts = build_report_entries(ingested, prepared, decisions)
    return {"version": REPORT_VERSION, "counts": counts,
            "sets": [to_dict(s) for s in sets], "files": [to_dict(f) for f in files]}


def write_report_stream(path: Path, counts: Mapping[str, int], sets: Iterable[SetEntry],
                        files: Iterable[FileEntry]) -> str:
    """Write the ledger to ``path`` one entry per line, never holding it as one string; returns the
    sha256 of what was written (the build compares it with the last commit's)."""
    digest = hashlib.sha256()
    with open(path, "w", encoding="utf-8") as f:
        def put(text: str) -> None:
            f.write(text)
            digest.update(text.encode("utf-8"))

        put(f'{{\n  "version": {REPORT_VERSION},\n  "counts": {json.dumps(dict(counts))},\n')
        for key, entries in (("sets", sets), ("files", files)):
            put(f'  "{key}": [')
            first = True
            for entry in entries:
                put(("\n    " if first else ",\n    ") + json.dumps(to_dict(entry), ensure_ascii=False))
                first = False
            put("\n  ]" if not first else "]")
            put(",\n" if key == "sets" else "\n")
        put("}\n")
    os.chmod(path, FILE_MODE)
    return digest.hexdigest()


def write_report(out: Path, report: Mapping[str, Any]) -> Path:
    path = OutDir(out).report
    atomic_write_json(path, report)
    return path
