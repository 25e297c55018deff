"""The dataset writer: a finished build as a Hugging Face dataset under ``OUT/dataset/``.

Parquet shards with the composites' JPEG bytes embedded (no paths that break when files
move), typed ``datasets`` features stored in the parquet schema, and a ``README.md`` card
that the hub's viewer reads. Rows are streamed shard by shard, one row group at a time,
so memory does not grow with the number of rows. The whole folder is written beside the
old one and swapped in, so a reader never sees a half-written dataset and an interrupted
write leaves the previous dataset as it was.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclora_data.errors import IcloraError
from iclora_data.faults import crash_point
from iclora_data.outdir import STORE_DIR, TEMP_PREFIX, composites_dir
from iclora_data.presets import PRESETS
from iclora_data.records import (
    CaptionRecord,
    CompositeRecord,
    load_captions,
    load_composites,
)
from iclora_data.store import DIR_MODE, FILE_MODE, temp_dir

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

DATASET_DIR = "dataset"
SPLIT = "train"
# What datasets itself uses for image data: small row groups keep the hub viewer and
# streaming readers fast, and bound the memory one row group takes while writing.
ROW_GROUP_ROWS = 100
ROW_GROUP_BYTES = 16 * 2**20
ROW_OVERHEAD_BYTES = 2048  # captions, boxes, ids: a generous estimate per row for shard planning
USAGE_PLACEHOLDER = "path/to/OUT/dataset"  # push_dataset puts the repo id here in the uploaded card


class PublishError(IcloraError):
    """OUT cannot be published as it is (no finished build, missing files, bad repo id)."""


@dataclass
class FinishedBuild:
    """What a finished OUT folder holds, read once: the inputs of every publish step."""

    out: Path
    report: dict[str, Any]
    build: dict[str, Any]
    kept: list[CompositeRecord]  # kept sets' sidecars, sorted by set id
    captions: dict[str, CaptionRecord]


@dataclass
class DatasetSummary:
    """What ``write_dataset`` wrote."""

    path: Path  # OUT/dataset
    rows: int
    shards: list[str]  # paths inside the dataset folder, in order
    download_size: int  # bytes of parquet on disk
    dataset_size: int  # bytes of the rows in memory (arrow), for the card's dataset_info
    captioned: bool
    caption_failed: list[str] = field(default_factory=list)  # kept sets left out: caption failed
    caption_missing: list[str] = field(default_factory=list)  # kept sets left out: no caption record


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{path.parent} has no finished build ({path.name} is missing); "
                           f"run `iclora build SOURCE --out {path.parent}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PublishError(f"{path} is not valid JSON ({e}); re-run the build to rewrite {what}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path} does not hold a {what} object; re-run the build")
    return data


def load_finished_build(out: Path) -> FinishedBuild:
    """Read a finished OUT folder; a missing or broken part is a PublishError saying what to do."""
    out = Path(out)
    if not out.is_dir():
        raise PublishError(f"{out} is not a folder; give the --out folder of a finished `iclora build`")
    report = read_json(out / "report.json", "the report")
    build = read_json(out / "build.json", "the build manifest")
    kept_ids = {s["set_id"] for s in report.get("sets", []) if s.get("status") == "kept"}
    kept = [c for c in load_composites(out) if c.set_id in kept_ids]
    missing = sorted(kept_ids - {c.set_id for c in kept})
    if missing:
        raise PublishError(f"kept set {missing[0]!r} has no composite in {composites_dir(out)} "
                           f"({len(missing)} missing); re-run the build to finish it")
    for rec in kept:
        if not (composites_dir(out) / rec.image).is_file():
            raise PublishError(f"composite {composites_dir(out) / rec.image} of set {rec.set_id!r} is missing; "
                               "re-run the build to finish it")
    return FinishedBuild(out, report, build, kept, load_captions(out))


def dataset_features() -> datasets.Features:
    """The dataset's columns (docs/ARCHITECTURE.md, "The dataset"; the card lists them), typed."""
    from datasets import Features, Image, Sequence, Value

    text = Value("string")
    size = Value("int32")
    return Features({
        "image": Image(),
        "caption": text,
        "summary": text,
        "panel_captions": Sequence(text),
        "set_id": text,
        "task": text,
        "rows": size,
        "cols": size,
        "width": size,
        "height": size,
        "panel_boxes": Sequence(Sequence(size, length=4)),
        "source_files": Sequence(text),
        "captioner": text,
    })


Row = tuple[CompositeRecord, CaptionRecord | None]


def select_rows(build: FinishedBuild, require_captions: bool) -> tuple[list[Row], list[str], list[str]]:
    """Kept sets that become rows, and the kept sets left out for a failed / missing caption."""
    rows: list[Row] = []
    failed: list[str] = []
    missing: list[str] = []
    for rec in build.kept:
        cap = build.captions.get(rec.set_id)
        if cap is not None and cap.status == "ok":
            rows.append((rec, cap))
        elif not require_captions:
            rows.append((rec, None))
        elif cap is None:
            missing.append(rec.set_id)
        else:
            failed.append(rec.set_id)
    if require_captions and build.kept and not build.captions:
        raise PublishError(f"{build.out} was built without captions (e.g. --until compose); caption it first, "
                           "or write the dataset without captions")
    return rows, failed, missing


def row_task(rec: CompositeRecord) -> str:
    if rec.task:
        return rec.task
    preset = PRESETS.get(rec.preset or "")
    return preset.task if preset else ""


def make_row(image_path: Path, rec: CompositeRecord, cap: CaptionRecord | None) -> dict[str, Any]:
    return {
        # the JPEG's own bytes: pixel-exact, nothing re-encoded
        "image": {"bytes": image_path.read_bytes(), "path": rec.image},
        "caption": cap.caption if cap else "",
        "summary": cap.summary if cap else "",
        "panel_captions": list(cap.panels) if cap else [],
        "set_id": rec.set_id,
        "task": row_task(rec),
        "rows": rec.rows,
        "cols": rec.cols,
        "width": rec.width,
        "height": rec.height,
        "panel_boxes": [list(map(int, box)) for box in rec.panel_boxes],
        "source_files": list(rec.source_files),
        "captioner": public_model_id(cap.captioner) if cap else "",
    }


def plan_shards(sizes: list[int], max_shard_bytes: int) -> list[range]:
    """Split rows (in order) into consecutive shards of at most ``max_shard_bytes`` each.

    Planned from file sizes before writing, so every shard's ``-of-N`` name is known up front.
    A single row larger than the limit gets a shard of its own."""
    shards: list[range] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > max_shard_bytes:
            shards.append(range(start, i))
            start, total = i, 0
        total += size
    shards.append(range(start, len(sizes)))
    return shards


def shard_name(index: int, count: int) -> str:
    return f"data/{SPLIT}-{index:05d}-of-{count:05d}.parquet"


def write_shard(path: Path, image_path: Callable[[CompositeRecord], Path], rows: list[Row],
                schema: pa.Schema) -> int:
    """Stream ``rows`` into one parquet file, a row group at a time. Returns the arrow bytes written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_bytes = 0
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes, arrow_bytes
            table = pa.Table.from_pylist(batch, schema=schema)
            writer.write_table(table, row_group_size=len(batch))
            arrow_bytes += table.nbytes
            batch, batch_bytes = [], 0

        for rec, cap in rows:
            row = make_row(image_path(rec), rec, cap)
            batch.append(row)
            batch_bytes += len(row["image"]["bytes"])
            if len(batch) >= ROW_GROUP_ROWS or batch_bytes >= ROW_GROUP_BYTES:
                flush()
        if batch:
            flush()
    return arrow_bytes


def replace_dir(new: Path, final: Path) -> None:
    """Put the finished folder ``new`` at ``final``; at every instant ``final`` is the old or the new whole.

    Where the system swaps two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``: ext4, xfs,
    btrfs, tmpfs) it is one atomic exchange. Elsewhere the old folder is first set aside under a name
    the sweep of temporary files never touches (:func:`previous_dir`), then the new one renamed in; a
    kill between the two renames leaves the old one there, and :func:`recover_dirs` (run before anything
    else by the next build or publish) puts it back. No step ever deletes the only whole copy."""
    recover_dirs(final.parent)
    if not final.exists():
        os.replace(new, final)
        return
    if exchange_paths(new, final):
        crash_point(f"{final.name}-exchanged")
        shutil.rmtree(new, ignore_errors=True)  # ``new`` holds the old folder now
        return
    previous = previous_dir(final)
    previous.parent.mkdir(parents=True, exist_ok=True)
    os.replace(final, previous)
    crash_point(f"{final.name}-set-aside")
    os.replace(new, final)
    crash_point(f"{final.name}-in-place")
    shutil.rmtree(previous, ignore_errors=True)


def previous_dir(final: Path) -> Path:
    """Where :func:`replace_dir` keeps the old folder between its two renames (inside the run store)."""
    return final.parent / STORE_DIR / "previous" / final.name


def recover_dirs(out: Path) -> None:
    """Finish a swap that a killed run left half done: where the published folder is missing, its previous
    copy goes back; where the new one made it, the previous copy goes. Callers hold the OUT lock."""
    kept = Path(out) / STORE_DIR / "previous"
    if not kept.is_dir():
        return
    for previous in kept.iterdir():
        final = Path(out) / previous.name
        if final.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, final)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False  # e.g. a file system (NFS, some FUSE) that does not offer the exchange
    raise OSError(code, os.strerror(code), str(b))


def remove_stale_temps(out: Path) -> None:
    """Leftovers of an interrupted write (callers hold the OUT lock, so none is in use)."""
    for stale in [*out.glob(f".{DATASET_DIR}.tmp-*"), *out.glob(f".{DATASET_DIR}.old-*"),
                  *out.glob(f"{TEMP_PREFIX}{DATASET_DIR}.*")]:
        shutil.rmtree(stale, ignore_errors=True)


def dataset_name(build: FinishedBuild) -> str:
    config = build.build.get("config")
    return str((publish_setting(config, "name") if isinstance(config, dict) else None) or build.out.resolve().name)


def remove_dir(folder: Path) -> None:
    """Remove a published folder by renaming it aside first, so no reader sees it half deleted."""
    recover_dirs(folder.parent)
    if folder.exists():
        stale = temp_dir(folder.parent, f"{folder.name}.old")
        os.replace(folder, stale / folder.name)
        shutil.rmtree(stale, ignore_errors=True)


def write_dataset(out: Path, *, max_shard_bytes: int = 500 * 2**20, require_captions: bool = True) -> DatasetSummary:
    """Write ``OUT/dataset/``: ``data/train-0000k-of-0000n.parquet`` shards and ``README.md``.

    Rows are the kept sets in set-id order that have an ok caption; a kept set whose caption
    failed (or is missing) is left out and counted. With ``require_captions=False`` (a build
    that asked for no captions) every kept set is a row and uncaptioned rows have empty
    caption columns. Raises PublishError for an OUT without a finished build.
    """
    out = Path(out)
    if max_shard_bytes < 1:
        raise PublishError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    build = load_finished_build(out)
    recover_dirs(out)
    remove_stale_temps(out)
    tmp = temp_dir(out, DATASET_DIR)
    try:
        summary = stage_dataset(build, tmp, image_path=lambda rec: composites_dir(out) / rec.image,
                                require_captions=require_captions, max_shard_bytes=max_shard_bytes)
        if summary.rows:
            replace_dir(tmp, out / DATASET_DIR)
        else:
            # datasets cannot load a split without rows: write nothing, and drop a dataset of an earlier build
            remove_dir(out / DATASET_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def stage_dataset(build: FinishedBuild, dest: Path, *, image_path: Callable[[CompositeRecord], Path],
                  require_captions: bool = True, max_shard_bytes: int = 500 * 2**20) -> DatasetSummary:
    """Write the dataset of ``build`` into the new folder ``dest`` (nothing when it has no row). The
    build's commit step and ``write_dataset`` then put it in place. ``image_path`` says where each
    composite's file is (the run store during a build, ``OUT/composites/`` after)."""
    rows, failed, missing = select_rows(build, require_captions)
    final = build.out / DATASET_DIR
    if not rows:
        return DatasetSummary(path=final, rows=0, shards=[], download_size=0, dataset_size=0,
                              captioned=False, caption_failed=failed, caption_missing=missing)
    features = dataset_features()
    schema = features.arrow_schema  # carries the datasets feature types in its metadata

    sizes = [image_path(rec).stat().st_size + ROW_OVERHEAD_BYTES for rec, _ in rows]
    shards = plan_shards(sizes, max_shard_bytes)
    names = [shard_name(i, len(shards)) for i in range(len(shards))]
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(DIR_MODE)  # the dataset is meant to be read by others
    (dest / "data").mkdir(exist_ok=True)
    arrow_bytes = 0
    for name, part in zip(names, shards, strict=True):
        arrow_bytes += write_shard(dest / name, image_path, [rows[i] for i in part], schema)
        os.chmod(dest / name, FILE_MODE)
    summary = DatasetSummary(
        path=final, rows=len(rows), shards=names,
        download_size=sum((dest / n).stat().st_size for n in names), dataset_size=arrow_bytes,
        captioned=any(cap is not None for _, cap in rows), caption_failed=failed, caption_missing=missing)
    card = dataset_card(summary, build.build, build.report, layouts=layout_counts(rec for rec, _ in rows),
                        name=dataset_name(build))
    (dest / "README.md").write_text(card, encoding="utf-8")
    os.chmod(dest / "README.md", FILE_MODE)
    return summary


# --- the card -------------------------------------------------------------------------------------

def layout_counts(records: Any) -> Counter[str]:
    """``"film-storyboard, 1024x1536, 3x1 grid"`` -> number of rows with that layout."""
    counts: Counter[str] = Counter()
    for rec in records:
        name = rec.preset or "automatic layout"
        counts[f"{name}, {rec.width}x{rec.height}, {rec.rows}x{rec.cols} grid"] += 1
    return counts


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


# What of the build config goes into a public card: settings that describe the data, never
# endpoints, local files or credentials.
PUBLIC_SETTINGS: dict[str, tuple[str, ...]] = {
    "compose": ("preset", "layout", "fit", "fill", "min_side", "max_pixels", "image_format", "quality"),
    "dedup": ("max_distance",),
    "caption": ("backend", "model", "revision", "temperature", "max_new_tokens", "constrained", "sidecar",
                "max_attempts"),
}


def public_model_id(model: str) -> str:
    """A hub id stays as it is; a local path (which may name a person's folders) becomes its last part."""
    backend, sep, rest = model.partition(":") if re.match(r"^[a-z]+:", model) else ("", "", model)
    rest = re.sub(r"@https?://\S+", "", rest)  # an openai captioner's server URL (caption.captioner_id)
    if rest.startswith(("/", "~", "./", "../")) or re.match(r"^[A-Za-z]:[\\/]", rest) or rest.count("/") > 1:
        rest = re.split(r"[\\/]", rest.rstrip("/\\"))[-1]
    return f"{backend}{sep}{rest}"


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of the build config that describe the data, safe to publish."""
    public: dict[str, Any] = {}
    for section, keys in PUBLIC_SETTINGS.items():
        values = config.get(section)
        if isinstance(values, dict):
            picked = {k: values[k] for k in keys if values.get(k) is not None}
            if isinstance(picked.get("model"), str):
                picked["model"] = public_model_id(picked["model"])
            if picked:
                public[section] = picked
    return public


def publish_setting(config: dict[str, Any], key: str) -> Any:
    """``publish.<key>`` of the build config, else a top-level ``<key>``."""
    section = config.get("publish")
    if isinstance(section, dict) and section.get(key):
        return section[key]
    return config.get(key)


def card_metadata(summary: DatasetSummary, license_id: str, pretty_name: str) -> str:
    """The card's YAML front matter, through the hub's own card classes (viewer conventions)."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        license=license_id,
        pretty_name=pretty_name,
        task_categories=["text-to-image"],
        tags=["in-context-lora", "ic-lora", "flux", "image-grid", "image-captioning", "iclora"],
        size_categories=[size_category(summary.rows)],
    )
    MetadataConfigs({"default": {"data_files": [{"split": SPLIT, "path": f"data/{SPLIT}-*"}]}}) \
        .to_dataset_card_data(data)
    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=summary.dataset_size, num_examples=summary.rows))
    info = DatasetInfo(features=dataset_features(), splits=splits, download_size=summary.download_size,
                       dataset_size=summary.dataset_size)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data.to_yaml()


def dataset_card(summary: DatasetSummary, build: dict[str, Any], report: dict[str, Any], *,
                 layouts: Counter[str] | None = None, name: str = "IC-LoRA dataset") -> str:
    """The ``README.md`` of the dataset: YAML metadata and prose. Deterministic for one build
    (no timestamps, no local paths, no credentials), so re-publishing it changes nothing."""
    import yaml

    config = build.get("config", {}) if isinstance(build.get("config"), dict) else {}
    license_id = str(publish_setting(config, "license") or "unknown")
    counts = report.get("counts", {})
    captioner = (public_model_id(str(build["captioner"])) if build.get("captioner")
                 else "none (built without captions)" if not summary.captioned else "unknown")
    prompt_version = build.get("prompt_version") or "n/a"
    source_name = Path(str(build.get("source", ""))).name or "(unnamed)"
    left_out = len(summary.caption_failed) + len(summary.caption_missing)

    lines = [
        "---", card_metadata(summary, license_id, name).rstrip(), "---", "",
        f"# {name}", "",
        "In-Context LoRA (IC-LoRA) training data. Each row is **one image set as one composite image**: "
        "its panels sit in an equal `rows x cols` grid (every side a multiple of 16 pixels, as FLUX "
        "needs), and one joint caption describes the whole set, then each panel after its panel tag "
        "(such as `[IMAGE1]` or `[SCENE-2]`). A FLUX.1 LoRA tuned on 20-100 such rows generates "
        "coherent multi-panel sets (IC-LoRA, arXiv:2410.23775).", "",
        "## How it was built", "",
        f"Made by iclora {build.get('iclora_version', '')}".rstrip() + ":",
        "",
        f"- **Source**: `{source_name}` ({build.get('source_kind', 'folder')}); every file in it is "
        "accounted for as used, duplicate, rejected or ignored.",
        "- **Validation**: EXIF orientation applied, CMYK/16-bit/palette/alpha images made RGB, "
        "undersized, oversized, corrupt or non-image files reject their set, naming the file.",
        "- **Deduplication**: exact (sha256) and near-duplicate (64-bit perceptual hash) search; two "
        "sets whose panels match one to one are duplicates and the one whose id sorts first is kept.",
        f"- **Captioner**: `{captioner}`, prompt version `{prompt_version}`; output constrained to "
        "`{\"summary\", \"panels\"}` JSON and checked (panel count, length) before use.",
        "- **Layouts**:",
    ]
    for layout, n in sorted((layouts or Counter()).items()):
        lines.append(f"  - {layout}: {n} row{'s' if n != 1 else ''}")
    if not layouts:
        lines.append("  - (no rows)")
    public = public_config(config)
    if public:
        lines += ["", "<details><summary>Build settings</summary>", "", "```yaml",
                  yaml.safe_dump(public, sort_keys=True, allow_unicode=True).rstrip(), "```", "", "</details>"]
    lines += [
        "", "## Counts", "",
        "| | count |", "|---|---:|",
        f"| files in the source | {counts.get('files', 0)} |",
        f"| sets | {counts.get('sets', 0)} |",
        f"| kept | {counts.get('kept', 0)} |",
        f"| duplicate | {counts.get('duplicate', 0)} |",
        f"| rejected | {counts.get('rejected', 0)} |",
        f"| kept but left out (caption failed or missing) | {left_out} |",
        f"| **rows in this dataset** | **{summary.rows}** |",
        "", f"{len(summary.shards)} parquet shard(s), {summary.download_size / 2**20:.1f} MiB, "
        "images embedded as JPEG bytes.",
        "", "## Columns", "",
        "| column | type | meaning |", "|---|---|---|",
        "| `image` | Image | the composite (JPEG) |",
        "| `caption` | string | the rendered training prompt |",
        "| `summary` | string | the caption's summary of the whole set |",
        "| `panel_captions` | list of string | one description per panel, in reading order |",
        "| `set_id` | string | the set's id in the source |",
        "| `task` | string | what the set shows |",
        "| `rows`, `cols` | int32 | the grid |",
        "| `width`, `height` | int32 | the composite's size in pixels |",
        "| `panel_boxes` | list of [x0, y0, x1, y1] | each panel's box in the composite, in panel order |",
        "| `source_files` | list of string | the panels' files in the source |",
        "| `captioner` | string | the model that wrote the caption |",
        "", "## Usage", "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{USAGE_PLACEHOLDER}", split="train")',
        "row = ds[0]",
        'row["image"]  # PIL image of the composite',
        'panels = [row["image"].crop(tuple(box)) for box in row["panel_boxes"]]',
        'print(row["caption"])',
        "```", "",
        "Trainers that read an image folder with `.txt` captions (ai-toolkit, kohya sd-scripts, "
        "SimpleTuner): `iclora export OUT --format ai-toolkit|kohya|folder`.", "",
        "## Licence", "",
        f"`{license_id}`. The images come from the source named above; check its terms before "
        "redistributing them.", "",
    ]
    return "\n".join(lines)


def counts_markdown(out: Path) -> str:
    """Markdown for the flow run's artifact: counts of the build and a link to the gallery."""
    out = Path(out)
    report = read_json(out / "report.json", "the report")
    counts = report.get("counts", {})
    lines = ["| | count |", "|---|---:|"]
    for key in ("files", "sets", "kept", "duplicate", "rejected"):
        lines.append(f"| {key} | {counts.get(key, 0)} |")
    ignored = sum(1 for f in report.get("files", []) if f.get("status") == "ignored")
    lines.append(f"| ignored files | {ignored} |")
    dataset = out / DATASET_DIR
    if dataset.is_dir():
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(dataset.glob("data/*.parquet")))
        lines.append(f"| rows in the dataset | {rows} |")
    gallery = out / "gallery.html"
    lines.append("")
    if gallery.is_file():
        lines.append(f"Gallery: [{gallery.name}]({gallery.resolve().as_uri()})")
    else:
        lines.append("No gallery was written.")
    return "\n".join(lines) + "\n"
