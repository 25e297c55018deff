"""Build configuration: a YAML file validated by pydantic; CLI flags override it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iclora_data.caption.settings import CaptionSettings
from iclora_data.errors import IcloraError
from iclora_data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from iclora_data.layout import parse_grid
from iclora_data.presets import get_preset
from iclora_data.sources.settings import SourceSettings

Stage = Literal["compose", "caption", "publish"]


class ConfigError(IcloraError):
    pass


class ComposeSettings(BaseModel):
    """Everything that decides what a composite looks like (part of its content key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    preset: str | None = None  # a set's own set.json/manifest preset wins over this
    layout: str | None = None  # ROWSxCOLS without a preset
    fit: Literal["crop", "pad"] = "crop"
    fill: tuple[int, int, int] = (255, 255, 255)  # pad colour
    min_side: int = Field(DEFAULT_MIN_SIDE, ge=16)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    image_format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = Field(95, ge=1, le=100)  # jpg/webp

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None:
            get_preset(v)
        return v

    @field_validator("layout")
    @classmethod
    def _grid(cls, v: str | None) -> str | None:
        if v is not None:
            rows, cols = parse_grid(v)
            return f"{rows}x{cols}"
        return v

    @field_validator("fill", mode="before")
    @classmethod
    def _colour(cls, v: Any) -> Any:
        if isinstance(v, str):
            from PIL import ImageColor

            return ImageColor.getrgb(v)[:3]
        return v


class DedupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_distance: int | None = Field(None, ge=0, le=32)  # None: dedup.DEFAULT_MAX_DISTANCE


class PublishSettings(BaseModel):
    """What the dataset card says about the data that the build cannot know."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    license: str = "unknown"  # a hub licence id such as cc-by-4.0; the sources' licence, not iclora's
    name: str | None = None  # the dataset's pretty name (default: OUT's folder name)


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    compose: ComposeSettings = ComposeSettings()
    dedup: DedupSettings = DedupSettings()
    caption: CaptionSettings = CaptionSettings()
    publish: PublishSettings = PublishSettings()
    source: SourceSettings = SourceSettings()  # dataset columns, download and archive limits
    until: Stage = "publish"
    workers: int = Field(2, ge=1, le=256)  # threads for decode/hash/compose


def read_yaml_mapping(path: Path, error: type[IcloraError] = ConfigError) -> dict[str, Any]:
    """A YAML config file as a mapping; any problem is one ``error`` line naming the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"config file {path} is a folder; pass the YAML file inside it") from None
    except OSError as exc:
        raise error(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at offset "
                    f"{exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise error(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise error(f"config file {path} is nested too deeply") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise error(f"config file {path} must hold a mapping of settings")
    return loaded or {}


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> BuildConfig:
    """Read the YAML config (if any), apply ``overrides`` (``"section.key": value``), validate."""
    data = read_yaml_mapping(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key, {}), dict):
                raise ConfigError(f"bad setting {key} in {path}: must be a mapping of settings, "
                                  f"got {type(node[key]).__name__}")
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        source = f" in {path}" if path else ""
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown setting {where}{source}") from None
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"bad setting {where}{source}: {msg}") from None
