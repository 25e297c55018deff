"""Resolving ``--base``: the tiny offline pipeline, a local FLUX folder, or a hub id."""

from __future__ import annotations

import json
import os
from pathlib import Path

from iclora_data.store import content_key
from iclora_train.errors import BaseModelError
from iclora_train.tiny_flux import TINY_BASE, tiny_flux_path

FLUX_PIPELINES = ("FluxPipeline", "FluxFillPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
FLUX_FILL_IN_CHANNELS = 384  # FLUX.1-Fill: 64 latent + 64 masked-image + 256 mask channels


def _looks_like_path(base: str) -> bool:
    # a hub id is ``owner/name``: one slash, no leading dot, slash or tilde
    return (base.startswith((".", "/", "~")) or base.count("/") != 1 or os.sep != "/" and os.sep in base
            or Path(base).expanduser().exists())


def resolve_base(base: str) -> str:
    """A ``from_pretrained`` argument for ``base``; raises BaseModelError for a bad local base.

    A hub id (``owner/name``) is passed through; it is checked when it loads."""
    if base == TINY_BASE:
        return str(tiny_flux_path())
    if not _looks_like_path(base):
        return base
    path = Path(base).expanduser()
    if not path.exists():
        raise BaseModelError(f"base model path {base} does not exist; give a FLUX pipeline folder, "
                             f"a hub id such as black-forest-labs/FLUX.1-dev, or {TINY_BASE}")
    index = path / "model_index.json"
    if not index.is_file():
        raise BaseModelError(f"{base} is not a diffusers pipeline folder (no model_index.json); "
                             "give a FLUX pipeline saved with save_pretrained")
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseModelError(f"cannot read {index}: {exc}; the base folder is damaged") from None
    if class_name not in FLUX_PIPELINES or not (path / "transformer").is_dir():
        raise BaseModelError(f"{base} holds a {class_name or 'unknown'} pipeline, not FLUX; "
                             "iclora trains LoRAs on FLUX.1 bases only")
    return str(path.resolve())


def base_fingerprint(resolved: str) -> str:
    """A key that changes when the base's weights change, without hashing gigabytes.

    Config files are hashed by content, weight files by name, size and modification time (a
    weight file rewritten in place at the same size is a new base). For a hub id the
    snapshot folder name (the revision) is part of the resolved path once downloaded."""
    path = Path(resolved)
    if not path.is_dir():
        return content_key("hub", resolved)
    parts: list[object] = []
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        rel = file.relative_to(path).as_posix()
        if file.suffix == ".json" or file.suffix == ".txt":
            parts.append((rel, file.read_text(encoding="utf-8", errors="replace")))
        else:
            stat = file.stat()
            parts.append((rel, stat.st_size, stat.st_mtime_ns))
    return content_key("local", parts)


def is_fill_transformer(transformer_config: dict[str, object]) -> bool:
    return transformer_config.get("in_channels") == FLUX_FILL_IN_CHANNELS
