"""Compose: validate, hash and paste one set's panels into its composite grid.

``compose_set`` is the per-set unit of work (mapped over sets by the flow). It reads each
file once, hashes its bytes, and decodes it at most once: the decoded panel gives both the
perceptual hash and the pixels of the composite. Results live in the run store by content,
so a second build over unchanged files decodes nothing. ``place_composites`` then puts the
kept sets' composites and JSON sidecars into ``OUT/composites/``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from iclora_data.config import ComposeSettings
from iclora_data.dedup import perceptual_hash
from iclora_data.images import ImageRejected, check_size, decode_rgb, read_header
from iclora_data.layout import Layout, LayoutError, choose_layout, fit_panel
from iclora_data.records import (
    CompositeRecord,
    PanelRecord,
    PreparedSet,
    SetDecision,
    SourceSet,
    composites_dir,
    file_stem,
)
from iclora_data.sources import read_source
from iclora_data.store import RunStore, atomic_path, content_key, link_or_copy

COMPOSITE_VERSION = "composite/v1"  # bump when the way pixels are produced changes
MIN_PANELS = 2


def composite_key(shas: Sequence[str], layout: Layout, settings: ComposeSettings) -> str:
    return content_key(COMPOSITE_VERSION, list(shas), [layout.rows, layout.cols, layout.width, layout.height],
                       settings.fit, list(settings.fill), settings.image_format, settings.quality)


def compose_set(src: SourceSet, settings: ComposeSettings, store: RunStore) -> PreparedSet:
    """Validate one set and make its composite (or find it in the store)."""
    prepared = PreparedSet(src.set_id, list(src.files))
    if src.rejection:
        prepared.rejection = src.rejection
        return prepared
    if len(src.files) < MIN_PANELS:
        prepared.rejection = f"a set needs at least {MIN_PANELS} usable panels, found {len(src.files)}"
        return prepared

    datas: list[bytes] = []
    facts: list[dict | None] = []
    sizes: list[tuple[int, int]] = []
    for ledger, path in zip(src.files, src.paths, strict=True):
        try:
            data = read_source(path)
        except OSError as exc:
            prepared.file_reasons[ledger] = f"cannot read the file: {exc.strerror or exc}"
            datas.append(b"")
            facts.append(None)
            continue
        sha = hashlib.sha256(data).hexdigest()
        fact = store.get_json("panels", sha)
        try:
            if fact is None:
                header = read_header(data, min_side=settings.min_side, max_pixels=settings.max_pixels)
                sizes.append((header.width, header.height))
            elif fact.get("error"):
                raise ImageRejected(fact["error"])
            else:
                check_size(fact["width"], fact["height"], min_side=settings.min_side,
                           max_pixels=settings.max_pixels)
                sizes.append((fact["width"], fact["height"]))
        except ImageRejected as exc:
            prepared.file_reasons[ledger] = str(exc)
        datas.append(data)
        facts.append(fact | {"sha256": sha} if fact else {"sha256": sha})
    if prepared.file_reasons:
        prepared.rejection = _unusable(prepared.file_reasons)
        return prepared

    try:
        layout = choose_layout(len(src.files), sizes, preset=src.preset or settings.preset, grid=settings.layout)
    except LayoutError as exc:
        prepared.rejection = str(exc)
        return prepared
    shas = [f["sha256"] for f in facts if f]
    key = composite_key(shas, layout, settings)
    stored = store.object_path("composites", key, f".{settings.image_format}")

    if stored.exists() and all(f and "phash" in f for f in facts):
        prepared.panels = [_panel(ledger, f) for ledger, f in zip(src.files, facts, strict=True) if f]
    else:
        canvas = Image.new("RGB", (layout.width, layout.height), settings.fill)
        for i, (ledger, data, box) in enumerate(zip(src.files, datas, layout.panel_boxes(), strict=True)):
            try:
                image = decode_rgb(data, target=layout.panel_size, fit=settings.fit,
                                   min_side=settings.min_side, max_pixels=settings.max_pixels)
            except ImageRejected as exc:
                prepared.file_reasons[ledger] = str(exc)
                store.put_json("panels", shas[i], {"error": str(exc)})  # a re-run need not decode it again
                continue
            prepared.decoded += 1
            # the header's size, not the draft-decoded one: limits and layout are judged on the original
            fact = {"width": sizes[i][0], "height": sizes[i][1], "phash": perceptual_hash(image)}
            store.put_json("panels", shas[i], fact)
            prepared.panels.append(_panel(ledger, fact | {"sha256": shas[i]}))
            canvas.paste(fit_panel(image, layout.panel_size, settings.fit, settings.fill), box[:2])
        if prepared.file_reasons:
            prepared.rejection = _unusable(prepared.file_reasons)
            prepared.panels = []
            return prepared
        save_image(canvas, stored, settings)

    prepared.composite = CompositeRecord(
        set_id=src.set_id, key=key, image=f"{file_stem(src.set_id)}.{settings.image_format}",
        rows=layout.rows, cols=layout.cols, width=layout.width, height=layout.height,
        panel_boxes=[list(b) for b in layout.panel_boxes()], panel_tags=list(layout.panel_tags),
        prefix=layout.prefix, preset=layout.preset, task=src.task, source_files=list(src.files),
        panel_hints=src.panel_hints, source_caption=src.caption)
    return prepared


def _panel(ledger: str, fact: Mapping) -> PanelRecord:
    return PanelRecord(ledger, fact["sha256"], int(fact["phash"]), int(fact["width"]), int(fact["height"]))


def _unusable(file_reasons: Mapping[str, str]) -> str:
    return "; ".join(f"{path}: {reason}" for path, reason in file_reasons.items())


def save_image(image: Image.Image, path: Path, settings: ComposeSettings) -> None:
    with atomic_path(path) as tmp:
        if settings.image_format == "jpg":
            # 4:4:4: no chroma subsampling, so thin lettering and edges keep their colour
            image.save(tmp, "JPEG", quality=settings.quality, subsampling=0)
        elif settings.image_format == "webp":
            image.save(tmp, "WEBP", quality=settings.quality, method=4)
        else:
            image.save(tmp, "PNG", compress_level=4)


def place_composites(out: Path, store: RunStore, prepared: Sequence[PreparedSet],
                     decisions: Mapping[str, SetDecision], settings: ComposeSettings) -> list[CompositeRecord]:
    """Put kept sets' composites and sidecars in OUT/composites/; remove what no longer belongs."""
    folder = composites_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    placed: list[CompositeRecord] = []
    wanted: set[str] = set()
    for p in prepared:
        decision = decisions.get(p.set_id)
        if p.composite is None or decision is None or decision.status != "kept":
            continue
        rec = p.composite
        src = store.object_path("composites", rec.key, f".{settings.image_format}")
        dst = folder / rec.image
        if not (dst.exists() and os.path.samefile(src, dst)):
            link_or_copy(src, dst)
        sidecar = dst.with_suffix(".json")
        rec.save(sidecar)
        wanted.update({dst.name, sidecar.name})
        placed.append(rec)
    for stale in folder.iterdir():  # sets that left SOURCE or are no longer kept leave OUT too
        if stale.name not in wanted and stale.is_file():
            stale.unlink()
    return sorted(placed, key=lambda r: r.set_id)
