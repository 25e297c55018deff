"""Reading an IC-LoRA dataset for training: checks, aspect buckets, held-out validation captions.

Everything here runs before any model loads, so a dataset that cannot be trained on fails in
seconds with the reason. Images are read through ``datasets`` (never by file path).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from iclora_data.layout import round16
from iclora_train.config import TrainConfig
from iclora_train.errors import TrainDatasetError

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class TrainItem:
    row: int  # index in the dataset split
    set_id: str
    caption: str
    size: Size  # the composite as stored
    bucket: Size  # the size it trains at
    image_sha256: str
    rows: int = 1  # the composite's grid
    cols: int = 1


@dataclass
class TrainData:
    source: str
    dataset: Any  # datasets.Dataset with the image column undecoded (bytes)
    train: list[TrainItem]
    holdout: list[TrainItem]

    def buckets(self) -> dict[Size, list[TrainItem]]:
        groups: dict[Size, list[TrainItem]] = defaultdict(list)
        for item in self.train:
            groups[item.bucket].append(item)
        return dict(sorted(groups.items()))

    def image(self, item: TrainItem) -> Image.Image:
        """The composite as RGB at its bucket size."""
        image = _open(self.dataset[item.row]["image"]).convert("RGB")
        if image.size != item.bucket:
            image = image.resize(item.bucket, Image.Resampling.LANCZOS)
        return image


def _open(cell: Any) -> Image.Image:
    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict) and cell.get("bytes"):
        return Image.open(io.BytesIO(cell["bytes"]))
    raise TrainDatasetError("dataset image cell holds no embedded bytes; publish the dataset with "
                            "embedded images (iclora build writes them)")


def _image_bytes(cell: Any) -> bytes:
    if isinstance(cell, dict) and cell.get("bytes"):
        return bytes(cell["bytes"])
    raise TrainDatasetError("dataset image cell holds no embedded bytes; publish the dataset with "
                            "embedded images (iclora build writes them)")


def _load(source: str, split: str) -> Any:
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    # a hub id is ``owner/name``; anything else, or an existing folder, is local
    looks_local = (source.startswith((".", "/", "~")) or source.count("/") != 1
                   or Path(source).expanduser().exists())
    if looks_local and not Path(source).expanduser().exists():
        raise TrainDatasetError(f"dataset {source} does not exist; give the dataset folder of a build "
                                "(OUT/dataset) or a hub dataset id")
    try:
        ds = load_dataset(str(Path(source).expanduser()) if looks_local else source, split=split)
    except ValueError as exc:  # unknown split and similar
        raise TrainDatasetError(f"cannot load split {split!r} of dataset {source}: "
                                f"{str(exc).splitlines()[0]}") from None
    except Exception as exc:  # datasets raises many types (not found, offline, bad files)
        raise TrainDatasetError(f"cannot load dataset {source}: {type(exc).__name__}: "
                                f"{(str(exc).splitlines() or [''])[0]}") from None
    for column in ("image", "caption"):
        if column not in ds.column_names:
            raise TrainDatasetError(f"dataset {source} has no {column!r} column (columns: "
                                    f"{', '.join(ds.column_names)}); train on the dataset a full "
                                    "iclora build writes")
    return ds.cast_column("image", ImageFeature(decode=False))


def _bucket(size: Size, rows: int, cols: int, scale: float) -> Size:
    if scale == 1.0:
        return size
    # scale the panels and keep the grid, so panel boundaries stay on the 16-pixel lattice
    pw, ph = size[0] // cols, size[1] // rows
    return max(16, round16(pw * scale)) * cols, max(16, round16(ph * scale)) * rows


def item_buckets(size: Size, rows: int, cols: int, cfg: TrainConfig) -> list[Size]:
    """The sizes one composite trains at: ``scale`` of its size, or about r x r pixels per resolution.

    As ai-toolkit's ``resolution`` list: the area is r squared at the composite's aspect, never
    above its own size; resolutions that land on the same size train once."""
    if cfg.resolutions is None:
        return [_bucket(size, rows, cols, cfg.scale)]
    area = size[0] * size[1]
    return list(dict.fromkeys(_bucket(size, rows, cols, min(1.0, r / area ** 0.5)) for r in cfg.resolutions))


def load_train_data(source: str, cfg: TrainConfig) -> TrainData:
    """Load and check a dataset; raises TrainDatasetError before any model is touched."""
    ds = _load(source, cfg.split)
    if len(ds) == 0:
        raise TrainDatasetError(f"dataset {source} split {cfg.split!r} has no rows")
    columns = set(ds.column_names)
    uncaptioned: list[str] = []
    items: list[TrainItem] = []
    for row, record in enumerate(ds):
        set_id = str(record["set_id"]) if "set_id" in columns else f"row {row}"
        caption = record["caption"]
        if not isinstance(caption, str) or not caption.strip():
            uncaptioned.append(set_id)
            continue
        data = _image_bytes(record["image"])
        try:
            with Image.open(io.BytesIO(data)) as img:  # header only, no decode
                size: Size = img.size
        except Exception as exc:
            raise TrainDatasetError(f"set {set_id}: the composite is not a readable image ({exc})") from None
        rows = int(record["rows"]) if "rows" in columns and record["rows"] else 1
        cols = int(record["cols"]) if "cols" in columns and record["cols"] else 1
        if size[0] % 16 or size[1] % 16:
            raise TrainDatasetError(
                f"set {set_id}: composite is {size[0]}x{size[1]}, which fits no bucket (sides must be "
                "multiples of 16 for FLUX); rebuild the dataset with iclora build")
        digest = hashlib.sha256(data).hexdigest()
        for bucket in item_buckets(size, rows, cols, cfg):
            if cfg.buckets is not None and bucket not in {tuple(b) for b in cfg.buckets}:
                allowed = ", ".join(f"{w}x{h}" for w, h in cfg.buckets)
                raise TrainDatasetError(f"set {set_id}: composite size {bucket[0]}x{bucket[1]} fits no bucket "
                                        f"({allowed}); add a bucket or rebuild with one preset")
            items.append(TrainItem(row, set_id, caption.strip(), size, bucket, digest, rows, cols))
    if uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (" ..." if len(uncaptioned) > 5 else "")
        raise TrainDatasetError(f"dataset {source}: {len(uncaptioned)} of {len(ds)} rows have no caption "
                                f"({shown}); caption them (iclora build without --until compose)")
    holdout: list[TrainItem] = []
    # held-out captions become validation prompts, but never at the cost of all training data;
    # a held-out set leaves training at every resolution and is sampled at its largest size
    rows_seen = sorted({it.row for it in items})
    if (cfg.validation_every and not cfg.validation_prompts and cfg.validation_holdout
            and len(rows_seen) > cfg.validation_holdout):
        chosen = set(random.Random(cfg.seed).sample(rows_seen, cfg.validation_holdout))
        for row in sorted(chosen):
            holdout.append(max((it for it in items if it.row == row), key=lambda it: it.bucket[0] * it.bucket[1]))
        items = [it for it in items if it.row not in chosen]
    return TrainData(source=source, dataset=ds, train=items, holdout=holdout)
