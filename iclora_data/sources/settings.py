"""Settings of the sources: dataset column names, download limits, archive limits.

The ``source:`` section of the build config (``config.BuildConfig.source``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iclora_data import __version__
from iclora_data.layout import parse_grid

USER_AGENT = f"iclora/{__version__} (IC-LoRA training-data builder; fetches the image URLs its user listed)"


class DownloadSettings(BaseModel):
    """How image URLs are fetched (the img2dataset way: a pool, timeouts, caps, bounded retries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    concurrency: int = Field(16, ge=1, le=256)
    timeout_s: float = Field(20.0, gt=0)  # per download, connect to last byte
    retries: int = Field(2, ge=0, le=10)  # extra attempts after a transient failure (timeout, 5xx, 429)
    retry_backoff_s: float = Field(1.0, ge=0)  # doubles per attempt
    max_bytes: int = Field(50_000_000, ge=1)  # declared (Content-Length) and streamed
    max_redirects: int = Field(5, ge=0, le=30)
    allow_private_addresses: bool = False  # loopback, private, link-local hosts (tests, intranets)
    user_agent: str = USER_AGENT


class ArchiveSettings(BaseModel):
    """Bounds that stop a zip bomb before it fills memory or disk."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_member_bytes: int = Field(200_000_000, ge=1)  # one entry, uncompressed
    max_total_bytes: int = Field(50_000_000_000, ge=1)  # all entries, uncompressed
    max_ratio: float = Field(100.0, gt=1)  # uncompressed / compressed size of one entry


class SourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Hugging Face datasets: one row per set
    images_column: str | None = None  # None: "images", else the one column of images / image lists
    set_id_column: str = "set_id"
    task_column: str = "task"
    preset_column: str = "preset"
    caption_column: str = "caption"
    layout_column: str = "layout"  # grid of a ready composite, e.g. "1x3"
    split: str | None = None  # only data files of this split (hub layout: data/<split>-*.parquet)
    # ready composites (IC-LoRA's jpg+txt pairs, a single-image column): their grid, when not given per set
    composite_grid: str | None = None
    download: DownloadSettings = DownloadSettings()
    archive: ArchiveSettings = ArchiveSettings()

    @field_validator("composite_grid")
    @classmethod
    def _grid(cls, v: str | None) -> str | None:
        if v is not None:
            rows, cols = parse_grid(v)
            return f"{rows}x{cols}"
        return v
