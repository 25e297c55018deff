"""Compose: validate, hash and paste one set's panels into its composite grid.

``prepare_shard`` is the unit of work the executors map over shards; ``compose_set`` handles one
set. A panel file is read at most once and decoded at most once: the decoded panel gives both
the perceptual hash (from a small proxy) and the pixels of the composite, and the composite in
memory gives the gallery's thumbnail. Everything lands in the run store by content, and the
stat cache remembers each local file's sha256 and facts, so a second build over unchanged files
reads, hashes and decodes nothing. The build's commit step (``build.py``) then puts the kept
sets' composites into ``OUT/composites/`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from iclora_data.config import ComposeSettings
from iclora_data.dedup import perceptual_hash
from iclora_data.images import ImageRejected, check_size, decode_rgb, read_header
from iclora_data.layout import Layout, LayoutError, choose_layout, fit_panel
from iclora_data.outdir import OutDir
from iclora_data.records import (
    CompositeRecord,
    PanelRecord,
    PreparedSet,
    PreparedShard,
    Shard,
    SourceSet,
)
from iclora_data.sources import read_source
from iclora_data.sources.composite import compose_ready
from iclora_data.sources.download import DOWNLOADS_DIR, fetch_urls
from iclora_data.sources.settings import SourceSettings
from iclora_data.store import RunStore, StatCache, atomic_path, content_key, sync_shard

COMPOSITE_VERSION = "composite/v1"  # bump when the way pixels are produced changes
MIN_PANELS = 2
UNREADABLE = "cannot read the file"  # the reason of a panel whose bytes could not be read (an OSError)


def composite_key(shas: Sequence[str], layout: Layout, settings: ComposeSettings) -> str:
    return content_key(COMPOSITE_VERSION, list(shas), [layout.rows, layout.cols, layout.width, layout.height],
                       settings.fit, list(settings.fill), settings.image_format, settings.quality)


def prepare_shard(shard: Shard, settings: ComposeSettings, out: str,
                  sources: SourceSettings | None = None) -> PreparedShard:
    """The prepare stage over one shard: fetch its image URLs, then validate, hash and compose each
    set into the run store.

    Runs in a worker (thread, process or Ray task): takes and returns plain records. Files are made
    durable once for the whole shard (docs/ARCHITECTURE.md, "Durability")."""
    store = RunStore(Path(out))
    cache = StatCache(OutDir(out).stat_cache)
    sets, unfetched = fetch_urls(shard.sets, OutDir(out).store / DOWNLOADS_DIR, (sources or SourceSettings()).download)
    url_reasons: dict[str, dict[str, str]] = {}
    for entry in unfetched:  # a URL that could not be fetched: its own reason in the ledger
        url_reasons.setdefault(entry.set_id or "", {})[entry.path] = entry.reason
    try:
        result = PreparedShard(shard.index, [])
        for src in sets:
            try:
                prepared = compose_set(src, settings, store, cache=cache, stat_rows=result.stat_rows)
            except (OSError, MemoryError):
                raise  # the disk, the share or the machine: the run's failure (retried when transient)
            except Exception as exc:  # noqa: BLE001 - one set's surprise must not take its shard-mates down
                prepared = PreparedSet(src.set_id, list(src.files), rejection=(
                    f"internal error while preparing this set ({type(exc).__name__}: {exc}); please report it"))
            prepared.file_reasons.update(url_reasons.get(src.set_id, {}))
            result.sets.append(prepared)
    finally:
        cache.close()
    if any(p.decoded for p in result.sets):
        sync_shard(store.root)
    return result


class _Panel:
    """One panel file while its set is prepared: its bytes are read only when needed."""

    def __init__(self, ledger: str, locator: str):
        self.ledger, self.locator = ledger, locator
        self.data: bytes | None = None
        self.sha: str | None = None
        self.fact: dict[str, Any] | None = None
        self.stat: os.stat_result | None = None

    def read(self) -> bytes:
        if self.data is None:
            self.data = read_source(self.locator)
        return self.data


def _is_local(locator: str) -> bool:
    return os.path.isabs(locator) and "://" not in locator


def compose_set(src: SourceSet, settings: ComposeSettings, store: RunStore, *, cache: StatCache | None = None,
                stat_rows: list[tuple[Any, ...]] | None = None) -> PreparedSet:
    """Validate one set and make its composite (or find it in the store)."""
    if src.composite_grid is not None:  # one image that already holds the panels (sources/composite.py)
        return compose_ready(src, settings, store)
    prepared = PreparedSet(src.set_id, list(src.files))
    if src.rejection:
        prepared.rejection = src.rejection
        return prepared
    if len(src.files) < MIN_PANELS:
        prepared.rejection = f"a set needs at least {MIN_PANELS} usable panels, found {len(src.files)}"
        return prepared

    panels = [_Panel(ledger, path) for ledger, path in zip(src.files, src.paths, strict=True)]
    sizes: list[tuple[int, int]] = []
    for panel in panels:
        try:
            _identify(panel, store, cache)
        except OSError as exc:
            prepared.file_reasons[panel.ledger] = f"{UNREADABLE}: {exc.strerror or exc}"
            continue
        fact = panel.fact
        try:
            if fact is None:
                header = read_header(panel.read(), min_side=settings.min_side, max_pixels=settings.max_pixels)
                sizes.append((header.width, header.height))
                fact = {"width": header.width, "height": header.height}
            elif fact.get("error"):
                raise ImageRejected(fact["error"])
            else:
                check_size(fact["width"], fact["height"], min_side=settings.min_side,
                           max_pixels=settings.max_pixels)
                sizes.append((fact["width"], fact["height"]))
        except ImageRejected as exc:
            prepared.file_reasons[panel.ledger] = str(exc)
        if panel.fact is None and fact is not None:
            panel.fact = {"width": fact["width"], "height": fact["height"]}  # no phash yet: not cached
    if prepared.file_reasons:
        prepared.rejection = _unusable(prepared.file_reasons)
        _remember(panels, cache, stat_rows)
        return prepared

    try:
        layout = choose_layout(len(src.files), sizes, preset=src.preset or settings.preset, grid=settings.layout)
    except LayoutError as exc:
        prepared.rejection = str(exc)
        _remember(panels, cache, stat_rows)
        return prepared
    shas = [p.sha or "" for p in panels]
    key = composite_key(shas, layout, settings)
    stored = store.object_path("composites", key, f".{settings.image_format}")

    if all(p.fact and "phash" in p.fact for p in panels) and _whole(stored):
        prepared.panels = [_panel(p) for p in panels]
    else:
        canvas = Image.new("RGB", (layout.width, layout.height), settings.fill)
        for i, (panel, box) in enumerate(zip(panels, layout.panel_boxes(), strict=True)):
            try:
                image = decode_rgb(panel.read(), target=layout.panel_size, fit=settings.fit,
                                   min_side=settings.min_side, max_pixels=settings.max_pixels)
            except ImageRejected as exc:
                prepared.file_reasons[panel.ledger] = str(exc)
                panel.fact = {"error": str(exc)}
                store.put_json("panels", shas[i], panel.fact)  # a re-run need not decode it again
                continue
            except OSError as exc:
                prepared.file_reasons[panel.ledger] = f"{UNREADABLE}: {exc.strerror or exc}"
                continue
            prepared.decoded += 1
            # the header's size, not the draft-decoded one: limits and layout are judged on the original
            panel.fact = {"width": sizes[i][0], "height": sizes[i][1], "phash": perceptual_hash(image)}
            store.put_json("panels", shas[i], panel.fact)
            prepared.panels.append(_panel(panel))
            canvas.paste(fit_panel(image, layout.panel_size, settings.fit, settings.fill), box[:2])
            del image
        if prepared.file_reasons:
            prepared.rejection = _unusable(prepared.file_reasons)
            prepared.panels = []
            _remember(panels, cache, stat_rows)
            return prepared
        save_image(canvas, stored, settings)
        save_thumbnail(canvas, store.object_path("thumbs", key, ".jpg"))
    _remember(panels, cache, stat_rows)

    prepared.composite = CompositeRecord.of_set(src, key, layout, settings.image_format)
    return prepared


def _identify(panel: _Panel, store: RunStore, cache: StatCache | None) -> None:
    """The panel's sha256 and known facts: from the stat cache when the file is unchanged (nothing
    read), else by reading and hashing its bytes and asking the store."""
    if cache is not None and _is_local(panel.locator):
        panel.stat = os.stat(panel.locator)
        hit = cache.lookup(panel.locator, panel.stat)
        if hit is not None:
            panel.sha, panel.fact = hit
            if panel.fact is not None and ("phash" in panel.fact or "error" in panel.fact):
                return
    data = panel.read()
    panel.sha = hashlib.sha256(data).hexdigest()
    panel.fact = store.get_json("panels", panel.sha)


def _remember(panels: Sequence[_Panel], cache: StatCache | None, stat_rows: list[tuple[Any, ...]] | None) -> None:
    """Stat-cache rows for panels that were read (their facts complete or an error): the driver writes them."""
    if cache is None or stat_rows is None:
        return
    now = time.time()
    for p in panels:
        if p.stat is None or p.sha is None or p.data is None:
            continue  # served from the cache (already there) or never read
        if p.fact is not None and ("phash" in p.fact or "error" in p.fact):
            row = StatCache.row(p.locator, p.stat, p.sha, p.fact, now)
            if row is not None:
                stat_rows.append(row)


def _whole(path: Path) -> bool:
    """A store object that was written whole (a power loss before the shard's sync can leave an empty one)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _panel(p: _Panel) -> PanelRecord:
    fact = p.fact or {}
    return PanelRecord(p.ledger, p.sha or "", int(fact["phash"]), int(fact["width"]), int(fact["height"]))


def _unusable(file_reasons: Mapping[str, str]) -> str:
    return "; ".join(f"{path}: {reason}" for path, reason in file_reasons.items())


THUMB_SIDE = 512  # longest side of a gallery thumbnail
THUMB_QUALITY = 80


def save_thumbnail(canvas: Image.Image, path: Path) -> None:
    """The gallery's thumbnail, made from the composite while it is still in memory (no second decode):
    one box reduce by the smallest integer factor that fits THUMB_SIDE, the cheapest good-looking way down."""
    factor = -(-max(canvas.size) // THUMB_SIDE)
    thumb = canvas.reduce(factor) if factor > 1 else canvas
    with atomic_path(path) as tmp:
        thumb.save(tmp, "JPEG", quality=THUMB_QUALITY)


def save_image(image: Image.Image, path: Path, settings: ComposeSettings) -> None:
    with atomic_path(path) as tmp:
        if settings.image_format == "jpg":
            # 4:4:4: no chroma subsampling, so thin lettering and edges keep their colour
            image.save(tmp, "JPEG", quality=settings.quality, subsampling=0)
        elif settings.image_format == "webp":
            image.save(tmp, "WEBP", quality=settings.quality, method=4)
        else:
            image.save(tmp, "PNG", compress_level=4)
