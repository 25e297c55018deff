"""Hugging Face datasets as SOURCE: one row per set.

A local folder (``Dataset.save_to_disk`` output, or parquet files in the hub layout such as
``data/train-00000-of-00001.parquet``) or ``hf://datasets/ORG/NAME[@revision]``. The images of a
set are one column: a list of ``Image`` (embedded bytes, or a path), a list of paths/URLs, or a
single ``Image`` that is a ready composite. Optional columns give the set id, task, preset, caption
and a ready composite's grid; their names are settings (``source:`` in the build config).

Streamed: data files are read one record batch at a time (parquet row groups, arrow stream
batches), never whole. An embedded image is spooled once into a content-addressed folder and its
path is the panel's locator, so later stages read one small file instead of re-reading a row
group per panel. A hub dataset's data files are downloaded one at a time into the Hugging Face
cache under the run store (a re-run downloads nothing), then read the same way.

Ledger: row ``i`` (counted over all data files, in file order) is a set, its id the ``set_id``
column or ``row-<i>``; panel ``j`` of the images column is the file ``rows/<i>/<column>/<j>``
(``rows/<i>/<column>`` for a single-image column). The data files themselves are ``used``; other
files of a local dataset folder are ``ignored``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from natsort import natsorted, ns

from iclora_data.layout import LayoutError
from iclora_data.presets import UnknownPresetError, get_preset
from iclora_data.records import FileEntry, SourceSet
from iclora_data.sources import hub_source
from iclora_data.sources.composite import resolve_grid
from iclora_data.sources.download import url_problem
from iclora_data.sources.settings import SourceSettings
from iclora_data.sources.spool import spool_bytes

BATCH_ROWS = 16  # rows in memory at once (each may hold several full-size images)


def _error(message: str) -> Exception:
    from iclora_data.ingest import SourceError

    return SourceError(message)


# ----- where the data files are ----------------------------------------------------------------------


def _parquet_files(root: Path) -> list[Path]:
    found = [p for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet") for p in root.glob(pattern)]
    return natsorted(found, key=lambda p: p.relative_to(root).as_posix(), alg=ns.IGNORECASE)


def is_dataset_folder(root: Path) -> bool:
    """A ``save_to_disk`` folder, parquet files at the root or in ``data/``, or deeper parquet files
    (``<config>/<split>/``) in a folder that is not a folder of sets: a stray parquet file in a set
    folder does not turn the sets into a dataset."""
    if (root / "state.json").is_file() or (root / "dataset_dict.json").is_file():
        return True
    parquet = _parquet_files(root)
    if not parquet:
        return False
    if any(p.parent in (root, root / "data") for p in parquet):  # the hub layout's own places
        return True
    from iclora_data.ingest import IMAGE_SUFFIXES

    with os.scandir(root) as entries:
        folders = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    return not any(p.suffix.lower() in IMAGE_SUFFIXES for folder in folders for p in folder.iterdir())


def _in_split(rel: str, split: str | None) -> bool:
    if split is None:
        return True
    parts = rel.split("/")
    name = parts[-1]
    return split in parts[:-1] or name.startswith((f"{split}-", f"{split}.", f"{split}_"))


def _saved_arrow_files(root: Path, split: str | None) -> list[Path]:
    """Arrow files of a ``save_to_disk`` folder (a Dataset, or a DatasetDict of splits)."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split is not None:
            if split not in splits:
                raise _error(f"dataset {root} has no split {split!r}; its splits: {', '.join(splits)}")
            splits = [split]
        return [f for s in splits for f in _saved_arrow_files(root / s, None)]
    state = json.loads((root / "state.json").read_text(encoding="utf-8"))
    return [root / f["filename"] for f in state.get("_data_files", [])]


def _local_data_files(root: Path, split: str | None) -> list[Path]:
    if (root / "state.json").is_file() or (root / "dataset_dict.json").is_file():
        return _saved_arrow_files(root, split)
    return [p for p in _parquet_files(root) if _in_split(p.relative_to(root).as_posix(), split)]


def _batches(path: Path, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                yield batch.select(columns) if columns is not None else batch
        return
    pf = pq.ParquetFile(path)
    yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _schema(path: Path) -> pa.Schema:
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).schema
    return pq.read_schema(path)


# ----- which column holds the images -----------------------------------------------------------------


def _is_image_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}


def _image_kind(t: pa.DataType) -> str | None:
    """"list" (a set's panels), "single" (a ready composite), or None for a column of no images."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        v = t.value_type
        if _is_image_struct(v) or pa.types.is_string(v) or pa.types.is_large_string(v):
            return "list"
        return None
    return "single" if _is_image_struct(t) else None


def _images_column(schema: pa.Schema, settings: SourceSettings) -> tuple[str, str]:
    if settings.images_column:
        if settings.images_column not in schema.names:
            raise _error(f"the dataset has no column {settings.images_column!r} (source.images_column); "
                         f"its columns: {', '.join(schema.names)}")
        kind = _image_kind(schema.field(settings.images_column).type)
        if kind is None:
            raise _error(f"column {settings.images_column!r} holds {schema.field(settings.images_column).type}, "
                         "not images: expected a list of Image, a list of paths/URLs, or an Image")
        return settings.images_column, kind
    if "images" in schema.names and _image_kind(schema.field("images").type):
        return "images", _image_kind(schema.field("images").type) or "list"
    image_cols = [f.name for f in schema if _is_image_struct(f.type) or
                  (_image_kind(f.type) == "list" and _is_image_struct(f.type.value_type))]
    if len(image_cols) == 1:
        return image_cols[0], _image_kind(schema.field(image_cols[0]).type) or "list"
    found = f"columns of images: {', '.join(image_cols)}" if image_cols else "no column of images"
    raise _error(f"the dataset has {found}; name the one that holds each set's images with "
                 f"source.images_column (its columns: {', '.join(schema.names)})")


# ----- rows -> sets ----------------------------------------------------------------------------------


class _RowReader:
    def __init__(self, settings: SourceSettings, spool: Path, column: str, kind: str, base: Path | None,
                 grid: str | None) -> None:
        self.settings, self.spool, self.column, self.kind = settings, spool, column, kind
        self.base, self.grid = base, grid
        self.seen_ids: set[str] = set()

    def _panel(self, value: Any) -> tuple[str, str | None]:
        """(locator, problem) of one image value."""
        if isinstance(value, dict):
            if value.get("bytes"):
                return str(spool_bytes(self.spool, value["bytes"])), None
            value = value.get("path")
        if not isinstance(value, str) or not value.strip():
            return "", "no image (empty value)"
        ref = value.strip()
        if "://" in ref:
            problem = url_problem(ref)
            return (ref, None) if problem is None else ("", f"{ref}: {problem}")
        if self.base is None:
            return "", f"{ref}: a path in a hub dataset names no file here; embed the image or give a URL"
        candidate = Path(os.path.normpath(self.base / ref))
        if not candidate.is_relative_to(self.base):
            return "", f"{ref}: path escapes the dataset's folder"
        try:
            resolved = candidate.resolve(strict=True)
        except OSError:
            return "", f"{ref}: file not found"
        if not resolved.is_relative_to(self.base.resolve()) or not resolved.is_file():
            return "", f"{ref}: not a file inside the dataset's folder"
        return str(resolved), None

    def _text(self, row: dict[str, Any], column: str) -> str | None:
        value = row.get(column)
        return str(value).strip() or None if value is not None else None

    def set_of(self, index: int, row: dict[str, Any]) -> tuple[SourceSet, list[FileEntry]]:
        s = self.settings
        set_id = self._text(row, s.set_id_column) or f"row-{index}"
        problems: list[str] = []
        if set_id in self.seen_ids:
            problems.append(f"row {index}: set_id '{set_id}' is used twice")
            set_id = f"{set_id} (row {index})"
        self.seen_ids.add(set_id)
        src = SourceSet(set_id, [], [], task=self._text(row, s.task_column), preset=self._text(row, s.preset_column),
                        caption=self._text(row, s.caption_column))
        failed: list[FileEntry] = []
        value = row.get(self.column)
        values = [value] if self.kind == "single" else (value or [])
        if self.kind == "list" and not values:
            problems.append(f"row {index}: column '{self.column}' holds no images")
        for j, v in enumerate(values):
            ledger = f"rows/{index}/{self.column}" if self.kind == "single" else f"rows/{index}/{self.column}/{j}"
            locator, problem = self._panel(v)
            src.files.append(ledger)
            src.paths.append(locator)
            if problem:
                problems.append(f"{ledger}: {problem}")
                failed.append(FileEntry(ledger, set_id, "rejected", problem))
        if src.preset:
            try:
                get_preset(src.preset)
            except UnknownPresetError as exc:
                problems.append(str(exc))
        if self.kind == "single":
            try:
                src.composite_grid = resolve_grid(self._text(row, s.layout_column), self.grid, caption=src.caption)
            except LayoutError as exc:
                problems.append(f"column '{s.layout_column}': {exc}")
            if src.composite_grid is None:
                src.composite_grid = ""
                problems.append("a ready composite needs its grid: give --layout ROWSxCOLS, source.composite_grid "
                                f"or a '{s.layout_column}' column; its caption names no panel tags to read it from")
        if problems:
            src.rejection = "; ".join(problems)
        return src, failed


def _read_rows(data_files: list[tuple[Path, str]], settings: SourceSettings, spool: Path, base: Path | None,
               grid: str | None) -> tuple[list[SourceSet], list[FileEntry]]:
    if not data_files:
        raise _error("the dataset has no data files (parquet or arrow)" +
                     (f" of split {settings.split!r}" if settings.split else ""))
    schema = _schema(data_files[0][0])
    column, kind = _images_column(schema, settings)
    wanted = [column, settings.set_id_column, settings.task_column, settings.preset_column,
              settings.caption_column, settings.layout_column]
    reader = _RowReader(settings, spool, column, kind, base, grid)
    sets: list[SourceSet] = []
    files: list[FileEntry] = []
    index = 0
    for path, ledger in data_files:
        names = _schema(path).names
        if column not in names:
            files.append(FileEntry(ledger, None, "rejected", f"data file has no column '{column}'"))
            continue
        first = index
        columns = list(dict.fromkeys(c for c in wanted if c in names))
        for batch in _batches(path, columns):
            for row in batch.to_pylist():
                src, failed = reader.set_of(index, row)
                sets.append(src)
                files.extend(failed)
                index += 1
        rows = f"rows {first}-{index - 1}" if index - first > 1 else f"row {first}" if index > first else "no rows"
        files.append(FileEntry(ledger, None, "used", f"data file of the dataset: {rows}"))
    return sets, files


def ingest_dataset(source: Path | str, settings: SourceSettings, spool: Path, *, grid: str | None = None):
    """Read a dataset (local folder or ``hf://datasets/...``) into an IngestResult."""
    from iclora_data.ingest import IngestResult

    hub = hub_source(source)
    if hub is not None:
        data_files = _hub_data_files(hub, settings, spool.parent / "hub")
        sets, files = _read_rows(data_files, settings, spool, None, grid)
        return IngestResult(hub, "dataset", sets=sets, files=files)
    root = Path(source).resolve()
    data = _local_data_files(root, settings.split)
    sets, files = _read_rows([(p, p.relative_to(root).as_posix()) for p in data], settings, spool, root, grid)
    listed = {f.path for f in files}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in listed:
                other = f"not a data file of split {settings.split!r}" if settings.split else "not a data file"
                why = "dataset metadata" if name.endswith((".json", ".md")) else other
                files.append(FileEntry(rel, None, "ignored", why))
    return IngestResult(root, "dataset", sets=sets, files=files)


# ----- the hub ---------------------------------------------------------------------------------------


_HUB_RE = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<sub>.*))?$")


def _hub_data_files(source: str, settings: SourceSettings, cache: Path) -> list[tuple[Path, str]]:
    """Download the dataset's parquet files (one by one, into the cache) and name them for the ledger."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    m = _HUB_RE.match(source)
    if not m:
        raise _error(f"SOURCE {source} is not hf://datasets/ORG/NAME[@revision]")
    repo, revision, sub = m.group("repo"), m.group("rev"), (m.group("sub") or "").strip("/")
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at import: tests and users set it late
    api = HfApi(endpoint=endpoint)
    try:
        names = api.list_repo_files(repo, repo_type="dataset", revision=revision)
        wanted = [n for n in names if n.endswith(".parquet") and (not sub or n.startswith(sub + "/"))
                  and _in_split(n, settings.split)]
        wanted = natsorted(wanted, alg=ns.IGNORECASE)
        files = []
        for name in wanted:
            local = hf_hub_download(repo, name, repo_type="dataset", revision=revision, cache_dir=cache,
                                    endpoint=endpoint)
            files.append((Path(local), name))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise _error(f"hub dataset {repo}{'@' + revision if revision else ''} not found: "
                     f"{str(exc).splitlines()[0]}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise _error(f"cannot read hub dataset {repo}: {str(exc).splitlines()[0]}") from None
    return files
