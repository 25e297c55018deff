"""``OUT/gallery.html``: self-contained pages to see whether the grids and captions look right.

``gallery.html`` shows the first PAGE_SETS sets of each section and links the further pages
(``OUT/gallery/kept-N.html``, ``rejects-N.html``). Each kept composite is shown as a small
thumbnail (``OUT/gallery/``, made while composing, linked to the full image) with its panel
boxes drawn over it on hover or for all at once, and its caption with the panel tags
highlighted. Duplicates and rejects follow with their reasons and thumbnails of
their files (a placeholder where a file does not decode), then the ignored files. No network:
CSS and the few lines of JS are inline, images are relative files. Everything that comes from
user data (ids, captions, reasons, paths) is HTML-escaped.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from iclora_data.compose import THUMB_QUALITY, THUMB_SIDE
from iclora_data.outdir import GALLERY as GALLERY_DIR
from iclora_data.outdir import GALLERY_PAGE, OutDir
from iclora_data.publish import publish_setting, read_json
from iclora_data.records import (
    CaptionRecord,
    CompositeRecord,
    file_stem,
    load_captions,
    load_composites,
)
from iclora_data.store import FILE_MODE, RunStore, atomic_path, content_key, temp_dir

MAX_SOURCE_PIXELS = 100_000_000  # the build's own limit: never decode more than this for a preview

CSS = """
:root { --ink:#1d232a; --muted:#5b6670; --line:#d7dde3; --tag:#ffe27a; --box:#ff3b6b; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, sans-serif; color: var(--ink); background: #f4f6f8; }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 4px; font-size: 20px; } h2 { margin: 24px 24px 8px; font-size: 17px; }
.counts span { margin-right: 14px; color: var(--muted); } .counts b { color: var(--ink); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; padding: 0 24px; }
figure.set { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
.frame { position: relative; display: block; line-height: 0; background: #222; }
.frame img { width: 100%; height: auto; }
.box { display: none; position: absolute; border: 2px solid var(--box); box-shadow: 0 0 0 1px #fff inset; }
.box .tag-label { position: absolute; left: 2px; top: 2px; padding: 1px 4px; font: 11px/1.3 monospace;
  background: var(--box); color: #fff; border-radius: 3px; }
.frame:hover .box, body.show-boxes .box { display: block; }
figcaption { padding: 10px 12px; }
.set-id { font-weight: 600; word-break: break-all; } .meta { color: var(--muted); font-size: 13px; }
.caption { margin: 6px 0 0; font-size: 13.5px; }
mark.tag { background: var(--tag); padding: 0 2px; border-radius: 3px; font-family: monospace; font-size: 12.5px; }
.caption.missing { color: #a33; }
.warnings { color: #8a5a00; font-size: 13px; margin: 6px 0 0; padding-left: 18px; }
.rejects { padding: 0 24px; display: grid; gap: 12px; }
article.set { background: #fff; border: 1px solid var(--line); border-left: 4px solid #c33; border-radius: 6px;
  padding: 10px 14px; }
article.set.duplicate { border-left-color: #d98b00; }
article h3 { margin: 0; font-size: 15px; word-break: break-all; }
.status { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #fff; background: #c33;
  border-radius: 3px; padding: 1px 6px; margin-left: 6px; }
.duplicate .status { background: #d98b00; }
.reason { margin: 4px 0; }
ul.files { list-style: none; padding: 0; margin: 6px 0 0; display: flex; flex-wrap: wrap; gap: 10px; }
ul.files li { width: 150px; font-size: 12px; color: var(--muted); word-break: break-all; }
ul.files img, .placeholder { width: 150px; height: 110px; object-fit: contain; background: #eee; display: flex;
  align-items: center; justify-content: center; color: #999; border: 1px dashed #ccc; }
table.ignored { margin: 0 24px 32px; border-collapse: collapse; background: #fff; font-size: 13px; }
table.ignored td, table.ignored th { border: 1px solid var(--line); padding: 4px 8px; text-align: left; }
.empty { padding: 0 24px; color: var(--muted); }
"""

JS = """
document.getElementById('show-boxes').addEventListener('change', function (e) {
  document.body.classList.toggle('show-boxes', e.target.checked);
});
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def highlight_caption(caption: str, tags: list[str]) -> str:
    """The caption, escaped, with every panel tag (and the prefix tag) in ``<mark class="tag">``."""
    tags = sorted({t for t in tags if t}, key=len, reverse=True)
    if not tags:
        return esc(caption)
    parts = re.split("(" + "|".join(map(re.escape, tags)) + ")", caption)
    return "".join(f'<mark class="tag">{esc(p)}</mark>' if p in tags else esc(p) for p in parts)


def make_thumbnail(src: Path, dst: Path, max_pixels: int = MAX_SOURCE_PIXELS) -> bool:
    """A small JPEG of ``src`` at ``dst``; False when ``src`` does not decode (or is too large).

    An existing ``dst`` is kept (callers name it by content); JPEG draft mode decodes at a reduced scale."""
    try:
        if dst.is_file():
            return True
        with Image.open(src) as im:
            if im.width * im.height > max_pixels:
                return False
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            rgb = im.convert("RGB")
        with atomic_path(dst) as tmp:
            rgb.save(tmp, "JPEG", quality=THUMB_QUALITY)
        return True
    except Exception:  # any broken or unsupported file just gets a placeholder
        return False


def source_file(source: Path | None, ledger_path: str) -> Path | None:
    """A ledger path as a file under SOURCE; None if there is no SOURCE or it would escape it."""
    if source is None:
        return None
    try:
        path = (source / ledger_path).resolve()
        path.relative_to(source.resolve())
    except (ValueError, OSError):
        return None
    return path if path.is_file() else None


def kept_figure(rec: CompositeRecord, cap: CaptionRecord | None, thumb: str | None, warnings: list[str],
                up: str = "") -> str:
    """One kept set. ``up`` leads from the page to OUT ("" for gallery.html, "../" for gallery/*.html)."""
    stem = file_stem(rec.set_id)
    boxes = []
    for tag, (x0, y0, x1, y1) in zip(rec.panel_tags, rec.panel_boxes, strict=False):
        style = (f"left:{100 * x0 / rec.width:.4f}%;top:{100 * y0 / rec.height:.4f}%;"
                 f"width:{100 * (x1 - x0) / rec.width:.4f}%;height:{100 * (y1 - y0) / rec.height:.4f}%")
        boxes.append(f'<span class="box" data-box="{x0},{y0},{x1},{y1}" style="{style}">'
                     f'<span class="tag-label">{esc(tag)}</span></span>')
    image = (f'<img class="thumb" src="{up}{esc(GALLERY_DIR)}/{esc(thumb)}" alt="composite of {esc(rec.set_id)}" '
             f'width="{rec.width}" height="{rec.height}" loading="lazy">' if thumb
             else '<span class="placeholder">no preview</span>')
    if cap is not None and cap.status == "ok":
        caption = f'<p class="caption">{highlight_caption(cap.caption, [rec.prefix, *rec.panel_tags])}</p>'
    elif cap is not None:
        caption = f'<p class="caption missing">caption failed: {esc(cap.error or "no reason given")}</p>'
    else:
        caption = '<p class="caption missing">not captioned</p>'
    warn = ("<ul class=\"warnings\">" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>") if warnings else ""
    meta = f"{rec.rows}x{rec.cols} grid · {rec.width}x{rec.height}" + (f" · {esc(rec.preset)}" if rec.preset else "")
    return (f'<figure class="set kept" id="set-{esc(stem)}" data-set-id="{esc(rec.set_id)}">'
            f'<a class="frame" href="{up}composites/{esc(rec.image)}">{image}{"".join(boxes)}</a>'
            f'<figcaption><div class="set-id">{esc(rec.set_id)}</div><div class="meta">{meta}</div>'
            f"{caption}{warn}</figcaption></figure>")


def rejected_article(entry: Mapping[str, Any], file_reasons: Mapping[str, str], thumbs: Mapping[str, str | None],
                     up: str = "", kept_link: Callable[[str], str] | None = None) -> str:
    status = entry.get("status", "rejected")
    dup = entry.get("duplicate_of")
    where = kept_link(dup) if kept_link is not None and dup else ""
    dup_html = (f'<p class="dup">duplicate of <a href="{esc(where)}#set-{esc(file_stem(dup))}">{esc(dup)}</a></p>'
                if dup else "")
    items = []
    for f in entry.get("files", []):
        thumb = thumbs.get(f)
        img = (f'<img src="{up}{esc(GALLERY_DIR)}/{esc(thumb)}" alt="{esc(f)}" loading="lazy">' if thumb
               else '<span class="placeholder">no preview</span>')
        reason = file_reasons.get(f, "")
        items.append(f'<li>{img}<div class="path">{esc(f)}</div>'
                     + (f'<div class="file-reason">{esc(reason)}</div>' if reason else "") + "</li>")
    return (f'<article class="set {esc(status)}" data-set-id="{esc(entry.get("set_id", ""))}">'
            f'<h3>{esc(entry.get("set_id", ""))}<span class="status">{esc(status)}</span></h3>'
            f'<p class="reason">{esc(entry.get("reason", ""))}</p>{dup_html}'
            f'<ul class="files">{"".join(items)}</ul></article>')


class _Fields(Mapping[str, Any]):
    """A record seen as a read-only mapping of its fields (the gallery reads dicts and records alike)."""

    __slots__ = ("_record",)

    def __init__(self, record: Any):
        self._record = record

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self._record, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Any:
        return iter(f.name for f in dataclasses.fields(self._record))

    def __len__(self) -> int:
        return len(dataclasses.fields(self._record))


def _as_mapping(entry: Any) -> Mapping[str, Any]:
    return entry if isinstance(entry, Mapping) else _Fields(entry)


PAGE_SETS = 200  # sets per page: a 10,000-set build is 50 light pages, not one 7 MB page
PAGE_IGNORED = 1000


def _pages(count: int, size: int) -> int:
    return max(1, -(-count // size))


def _page_file(section: str, page: int) -> str:
    """Page ``page`` (1-based) of a section, relative to OUT: page 1 of every section is gallery.html."""
    return GALLERY_PAGE if page == 1 else f"{GALLERY_DIR}/{section}-{page}.html"


def _page_link(section: str, page: int, up: str) -> str:
    if page == 1:
        return f"{up}{GALLERY_PAGE}"
    return f"{section}-{page}.html" if up else f"{GALLERY_DIR}/{section}-{page}.html"


def _nav(section: str, count: int, size: int, current: int, up: str) -> str:
    pages = _pages(count, size)
    if pages == 1:
        return ""
    links = [f"<b>{n}</b>" if n == current else f'<a href="{esc(_page_link(section, n, up))}">{n}</a>'
             for n in range(1, pages + 1)]
    return f'<nav class="pages" data-section="{section}">pages: {" ".join(links)}</nav>'


def stage_gallery(dest: Path, layout: OutDir, *, sets: Sequence[Any], files: Sequence[Any], counts: Mapping[str, int],
                  kept: Sequence[CompositeRecord], captions: Mapping[str, CaptionRecord], build: Mapping[str, Any],
                  composite_file: Callable[[CompositeRecord], Path]) -> None:
    """Write the gallery into the new folder ``dest`` (``gallery.html`` and ``gallery/``), for
    ``commit_gallery`` to put in place. Thumbnails come from the run store (made while composing) and
    are hard-linked; a page holds at most PAGE_SETS sets, so memory and page size stay flat."""
    store = RunStore(layout.root)
    # report entries as they are (dicts from report.json, or the build's records): no copy of the ledger
    entries = [_as_mapping(s) for s in sets]
    file_list = [_as_mapping(f) for f in files]
    source = (Path(build["source"]) if build.get("source_kind", "folder") == "folder" and build.get("source")
              else None)
    thumbs_dir = dest / GALLERY_DIR
    (thumbs_dir / "files").mkdir(parents=True, exist_ok=True)

    status = {e["set_id"]: e for e in entries}
    shown = [rec for rec in kept if status.get(rec.set_id, {}).get("status") == "kept"]
    kept_page = {rec.set_id: _page_file("kept", i // PAGE_SETS + 1) for i, rec in enumerate(shown)}
    file_reasons = {f["path"]: f.get("reason", "") for f in file_list if f.get("status") in ("rejected", "duplicate")}
    others = sorted((e for e in entries if e.get("status") in ("duplicate", "rejected")),
                    key=lambda e: (e.get("status") != "duplicate", e.get("set_id", "")))
    ignored = [f for f in file_list if f.get("status") == "ignored"]
    config = build.get("config")
    title = str((publish_setting(dict(config), "name") if isinstance(config, Mapping) else None)
                or layout.root.resolve().name)

    def thumb_of(rec: CompositeRecord) -> str | None:
        stored = store.object_path("thumbs", rec.key, ".jpg")
        if not stored.is_file() and not make_thumbnail(composite_file(rec), stored):
            return None
        name = f"{file_stem(rec.set_id)}.jpg"
        os.link(stored, thumbs_dir / name)
        return name

    def file_thumbs(entry: Mapping[str, Any]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for f in entry.get("files", []):
            src = source_file(source, f)
            found[f] = None
            if src is None:
                continue
            st = src.stat()
            stored = store.object_path("thumbs", content_key("file", str(src), st.st_size, st.st_mtime_ns), ".jpg")
            name = f"files/{content_key(f)[:20]}.jpg"
            if make_thumbnail(src, stored):
                if not (thumbs_dir / name).exists():
                    os.link(stored, thumbs_dir / name)
                found[f] = name
        return found

    def page(section: str, number: int, body: str) -> None:
        up = "" if number == 1 else "../"
        count_html = "".join(f'<span class="count-{esc(k)}">{esc(k)} <b>{esc(counts.get(k, 0))}</b></span>'
                             for k in ("files", "sets", "kept", "duplicate", "rejected"))
        head = [
            "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>iclora gallery: {esc(title)}</title><style>{CSS}</style></head><body>",
            f'<header><h1>{esc(title)}</h1><div class="counts">{count_html}</div>',
            '<label><input type="checkbox" id="show-boxes"> show all panel boxes</label> '
            '<span class="meta">(hover a composite to see its panels)</span>'
            + (f' <a href="{up}{GALLERY_PAGE}">first page</a>' if up else "") + "</header>",
        ]
        path = dest / (GALLERY_PAGE if number == 1 and section == "index" else f"{GALLERY_DIR}/{section}-{number}.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join([*head, body, f"<script>{JS}</script></body></html>"]) + "\n")
        os.chmod(path, FILE_MODE)

    def kept_html(number: int, up: str) -> str:
        chunk = shown[(number - 1) * PAGE_SETS:number * PAGE_SETS]
        figures = "".join(kept_figure(rec, captions.get(rec.set_id), thumb_of(rec),
                                      status[rec.set_id].get("warnings", []), up) for rec in chunk)
        nav = _nav("kept", len(shown), PAGE_SETS, number, up)
        return (f'<h2 id="kept">Kept sets ({len(shown)})</h2>{nav}'
                + (f'<div class="grid">{figures}</div>' if figures else '<p class="empty">No set was kept.</p>'))

    def others_html(number: int, up: str) -> str:
        chunk = others[(number - 1) * PAGE_SETS:number * PAGE_SETS]
        here = _page_file("rejects", number)

        def link(set_id: str) -> str:  # the kept set's page, relative to this one ("" when it is this one)
            target = kept_page.get(set_id, GALLERY_PAGE)
            return "" if target == here else up + target

        articles = "".join(rejected_article(e, file_reasons, file_thumbs(e), up, link) for e in chunk)
        nav = _nav("rejects", len(others), PAGE_SETS, number, up)
        return (f'<h2 id="rejects">Duplicates and rejects ({len(others)})</h2>{nav}'
                + (f'<div class="rejects">{articles}</div>' if articles else '<p class="empty">None.</p>'))

    def ignored_html(number: int) -> str:
        chunk = ignored[(number - 1) * PAGE_IGNORED:number * PAGE_IGNORED]
        nav = _nav("ignored", len(ignored), PAGE_IGNORED, number, "" if number == 1 else "../")
        rows = "".join(f'<tr><td>{esc(f["path"])}</td><td>{esc(f.get("reason", ""))}</td></tr>' for f in chunk)
        return (f'<h2 id="ignored">Ignored files ({len(ignored)})</h2>{nav}'
                + (f'<table class="ignored"><tr><th>file</th><th>why</th></tr>{rows}</table>' if rows
                   else '<p class="empty">None.</p>'))

    # gallery.html: the first page of every section; the rest on pages of their own
    page("index", 1, kept_html(1, "") + others_html(1, "") + ignored_html(1))
    for n in range(2, _pages(len(shown), PAGE_SETS) + 1):
        page("kept", n, kept_html(n, "../"))
    for n in range(2, _pages(len(others), PAGE_SETS) + 1):
        page("rejects", n, others_html(n, "../"))
    for n in range(2, _pages(len(ignored), PAGE_IGNORED) + 1):
        page("ignored", n, ignored_html(n))


def commit_gallery(staged: Path, layout: OutDir) -> None:
    """Put a staged gallery in place: the folder first (pages and thumbnails), then the page that links it."""
    from iclora_data.publish import replace_dir

    replace_dir(staged / GALLERY_DIR, layout.gallery)
    os.replace(staged / GALLERY_PAGE, layout.gallery_page)


def write_gallery(out: Path) -> Path:
    """Write ``OUT/gallery.html`` and ``OUT/gallery/`` from a finished OUT folder; returns the page's path."""
    layout = OutDir(out)
    report = read_json(layout.report, "the report")
    try:
        build = json.loads(layout.build.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        build = {}  # the gallery may be written before the manifest; it only names the source
    composites = load_composites(layout.root)
    staging = temp_dir(layout.root, "gallery")
    try:
        stage_gallery(staging, layout, sets=report.get("sets", []), files=report.get("files", []),
                      counts=report.get("counts", {}), kept=composites, captions=load_captions(layout.root),
                      build=build, composite_file=lambda rec: layout.composite_image(rec.image))
        commit_gallery(staging, layout)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return layout.gallery_page
