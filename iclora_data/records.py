"""Records that cross stage boundaries. Plain dataclasses, JSON-friendly, one per boundary.

ingest -> SourceSet (+ FileEntry for files it ignored or rejected)
prepare (validate, decode, hash, compose) -> PreparedSet with PanelRecord and CompositeRecord
dedup -> SetDecision
caption -> CaptionRecord
report -> SetEntry / FileEntry in OUT/report.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from iclora_data.outdir import captions_dir, composites_dir

if TYPE_CHECKING:
    from iclora_data.layout import Layout

SetStatus = Literal["kept", "duplicate", "rejected"]
FileStatus = Literal["used", "duplicate", "rejected", "ignored"]

T = TypeVar("T")


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def file_stem(set_id: str) -> str:
    """File-safe, unique name for a set's files (composite, sidecar, caption).

    Keeps readable ids as they are; an id that had to be changed gets a short hash of the
    original so that ``a/b`` and ``a_b`` never collide."""
    safe = re.sub(r"[^\w.-]+", "_", set_id, flags=re.UNICODE).strip("._") or "set"
    if safe == set_id and len(safe) <= 120:
        return safe
    return f"{safe[:100]}-{hashlib.sha256(set_id.encode('utf-8')).hexdigest()[:8]}"


@dataclass
class FileEntry:
    """One file under SOURCE in the ledger."""

    path: str  # relative to SOURCE, POSIX separators
    set_id: str | None
    status: FileStatus
    reason: str


@dataclass
class SourceSet:
    """One image set as ingest found it; nothing decoded yet."""

    set_id: str
    files: list[str]  # ledger paths of the panels, in panel order
    paths: list[str]  # absolute paths of the same files
    task: str | None = None
    preset: str | None = None
    panel_hints: list[str] | None = None  # per-panel text the set brought (set.json or N.txt)
    caption: str | None = None  # a caption the set brought (caption.txt or set.json)
    meta_files: list[str] = field(default_factory=list)  # set.json, caption.txt: ledger paths
    rejection: str | None = None  # set-level problem found at ingest (missing file, bad set.json)
    composite_grid: str | None = None  # "RxC": the one file is a ready composite of that grid (sources/composite.py)


@dataclass
class Shard:
    """A group of sets that one task handles: the unit the executors map over (docs/ARCHITECTURE.md)."""

    index: int
    sets: list[SourceSet]

    def name(self, stage: str) -> str:
        """``prepare shard 3 (a … f, 100 sets)``: which sets a task holds, for logs and the Prefect UI."""
        return shard_name(stage, self.index, [s.set_id for s in self.sets])


def shard_name(stage: str, index: int, set_ids: list[str]) -> str:
    n = len(set_ids)
    if n == 0:
        return f"{stage} shard {index} (empty)"
    span = set_ids[0] if n == 1 else f"{set_ids[0]} … {set_ids[-1]}"
    return f"{stage} shard {index} ({span[:120]}, {n} set{'s' if n != 1 else ''})"


@dataclass
class PanelRecord:
    """A decoded panel: what dedup and compose need, cached by content hash."""

    path: str  # ledger path
    sha256: str
    phash: int  # 64-bit perceptual hash, see dedup.perceptual_hash
    width: int  # after EXIF orientation
    height: int


@dataclass
class CompositeRecord:
    """A composite grid and its geometry; written as the JSON sidecar in OUT/composites/."""

    set_id: str
    key: str  # content key: panel bytes + layout settings
    image: str  # file name inside OUT/composites/
    rows: int
    cols: int
    width: int
    height: int
    panel_boxes: list[list[int]]
    panel_tags: list[str]
    prefix: str
    preset: str | None
    task: str | None
    source_files: list[str]
    panel_hints: list[str] | None = None
    source_caption: str | None = None

    @classmethod
    def of_set(cls, src: SourceSet, key: str, layout: Layout, image_format: str) -> CompositeRecord:
        """The record of ``src``'s composite in ``layout``: the one way both compose paths (panels pasted
        into a grid, a ready composite re-made) describe what they wrote."""
        return cls(
            set_id=src.set_id, key=key, image=f"{file_stem(src.set_id)}.{image_format}",
            rows=layout.rows, cols=layout.cols, width=layout.width, height=layout.height,
            panel_boxes=[list(b) for b in layout.panel_boxes()], panel_tags=list(layout.panel_tags),
            prefix=layout.prefix, preset=layout.preset, task=src.task, source_files=list(src.files),
            panel_hints=src.panel_hints, source_caption=src.caption)

    def save(self, path: Path) -> None:
        from iclora_data.store import atomic_write_text

        atomic_write_text(path, json.dumps(to_dict(self), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> CompositeRecord:
        return from_dict(cls, json.loads(path.read_text(encoding="utf-8")))


@dataclass
class PreparedSet:
    """Result of validating, hashing and composing one set."""

    set_id: str
    files: list[str]
    panels: list[PanelRecord] = field(default_factory=list)
    composite: CompositeRecord | None = None
    rejection: str | None = None  # why the whole set is rejected
    file_reasons: dict[str, str] = field(default_factory=dict)  # ledger path -> why that file is unusable
    decoded: int = 0  # images decoded in this run (0 when everything came from the store)


@dataclass
class PreparedShard:
    """What the prepare stage returns for one shard: its sets, and what it learnt for the stat cache
    (rows that the driver, the one writer, puts in ``StatCache``)."""

    index: int
    sets: list[PreparedSet]
    stat_rows: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def decoded(self) -> int:
        return sum(p.decoded for p in self.sets)


@dataclass
class SetDecision:
    """What dedup decided for one set that survived validation."""

    set_id: str
    status: SetStatus
    reason: str
    duplicate_of: str | None = None
    warnings: list[str] = field(default_factory=list)


# a caption record's ``error`` when the set's new caption failed and its previous one was kept
KEPT_PREVIOUS_CAPTION = "kept the previous caption: the new one failed: "


@dataclass
class CaptionRecord:
    """A joint caption of one composite."""

    set_id: str
    key: str  # caption key: composite key + model + template + generation settings
    composite_key: str
    status: Literal["ok", "failed"]
    summary: str = ""
    panels: list[str] = field(default_factory=list)
    caption: str = ""  # the rendered training prompt
    captioner: str = ""  # model id / backend, e.g. "transformers:Qwen/Qwen2.5-VL-7B-Instruct"
    source: Literal["model", "sidecar", "human"] = "model"  # human: edited (iclora captions import)
    error: str | None = None
    attempts: int = 0


@dataclass
class SetEntry:
    """One set in the ledger."""

    set_id: str
    status: SetStatus
    reason: str
    duplicate_of: str | None
    files: list[str]
    warnings: list[str] = field(default_factory=list)


def save_caption(out: Path, record: CaptionRecord) -> Path:
    """Write ``OUT/captions/<file_stem>.json`` atomically."""
    from iclora_data.store import atomic_write_json

    path = captions_dir(out) / f"{file_stem(record.set_id)}.json"
    atomic_write_json(path, to_dict(record))
    return path


def load_captions(out: Path) -> dict[str, CaptionRecord]:
    """All caption records of a build, by set id (empty when it was not captioned)."""
    records: dict[str, CaptionRecord] = {}
    for path in sorted(captions_dir(out).glob("*.json")):
        rec = from_dict(CaptionRecord, json.loads(path.read_text(encoding="utf-8")))
        records[rec.set_id] = rec
    return records


def load_composites(out: Path) -> list[CompositeRecord]:
    """Sidecars of ``OUT/composites/``, sorted by set id."""
    recs = [CompositeRecord.load(p) for p in composites_dir(out).glob("*.json")]
    return sorted(recs, key=lambda r: r.set_id)
