"""``OUT/gallery.html``: one self-contained page to see whether the grids and captions look right.

Each kept composite is shown as a small thumbnail (``OUT/gallery/``, linked to the full
image) with its panel boxes drawn over it on hover or for all at once, and its caption with
the panel tags highlighted. Duplicates and rejects follow with their reasons and thumbnails of
their files (a placeholder where a file does not decode), then the ignored files. No network:
CSS and the few lines of JS are inline, images are relative files. Everything that comes from
user data (ids, captions, reasons, paths) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image

from iclora_data.publish import publish_setting, read_json
from iclora_data.records import (
    CaptionRecord,
    CompositeRecord,
    composites_dir,
    file_stem,
    load_captions,
    load_composites,
)
from iclora_data.store import atomic_path, content_key

GALLERY_DIR = "gallery"
THUMB_SIDE = 512  # longest side of a thumbnail
THUMB_QUALITY = 80
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

    Up to date thumbnails are kept; JPEG draft mode decodes at a reduced scale directly."""
    try:
        if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
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


def kept_figure(rec: CompositeRecord, cap: CaptionRecord | None, thumb: str | None, warnings: list[str]) -> str:
    stem = file_stem(rec.set_id)
    boxes = []
    for tag, (x0, y0, x1, y1) in zip(rec.panel_tags, rec.panel_boxes, strict=False):
        style = (f"left:{100 * x0 / rec.width:.4f}%;top:{100 * y0 / rec.height:.4f}%;"
                 f"width:{100 * (x1 - x0) / rec.width:.4f}%;height:{100 * (y1 - y0) / rec.height:.4f}%")
        boxes.append(f'<span class="box" data-box="{x0},{y0},{x1},{y1}" style="{style}">'
                     f'<span class="tag-label">{esc(tag)}</span></span>')
    image = (f'<img class="thumb" src="{esc(GALLERY_DIR)}/{esc(thumb)}" alt="composite of {esc(rec.set_id)}" '
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
            f'<a class="frame" href="composites/{esc(rec.image)}">{image}{"".join(boxes)}</a>'
            f'<figcaption><div class="set-id">{esc(rec.set_id)}</div><div class="meta">{meta}</div>'
            f"{caption}{warn}</figcaption></figure>")


def rejected_article(entry: dict[str, Any], file_reasons: dict[str, str], thumbs: dict[str, str | None]) -> str:
    status = entry.get("status", "rejected")
    dup = entry.get("duplicate_of")
    dup_html = (f'<p class="dup">duplicate of <a href="#set-{esc(file_stem(dup))}">{esc(dup)}</a></p>'
                if dup else "")
    items = []
    for f in entry.get("files", []):
        thumb = thumbs.get(f)
        img = (f'<img src="{esc(GALLERY_DIR)}/{esc(thumb)}" alt="{esc(f)}" loading="lazy">' if thumb
               else '<span class="placeholder">no preview</span>')
        reason = file_reasons.get(f, "")
        items.append(f'<li>{img}<div class="path">{esc(f)}</div>'
                     + (f'<div class="file-reason">{esc(reason)}</div>' if reason else "") + "</li>")
    return (f'<article class="set {esc(status)}" data-set-id="{esc(entry.get("set_id", ""))}">'
            f'<h3>{esc(entry.get("set_id", ""))}<span class="status">{esc(status)}</span></h3>'
            f'<p class="reason">{esc(entry.get("reason", ""))}</p>{dup_html}'
            f'<ul class="files">{"".join(items)}</ul></article>')


def write_gallery(out: Path) -> Path:
    """Write ``OUT/gallery.html`` and its thumbnails in ``OUT/gallery/``; returns the page's path."""
    out = Path(out)
    report = read_json(out / "report.json", "the report")
    try:
        build = json.loads((out / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        build = {}  # the gallery may be written before the manifest; it only names the source
    source = Path(build["source"]) if build.get("source_kind", "folder") == "folder" and build.get("source") else None
    thumbs_dir = out / GALLERY_DIR
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    referenced: set[str] = set()

    sets = report.get("sets", [])
    composites = {rec.set_id: rec for rec in load_composites(out)}
    captions = load_captions(out)
    figures = []
    for entry in sets:
        if entry.get("status") != "kept" or entry["set_id"] not in composites:
            continue
        rec = composites[entry["set_id"]]
        name = f"{file_stem(rec.set_id)}.jpg"
        ok = make_thumbnail(composites_dir(out) / rec.image, thumbs_dir / name)
        if ok:
            referenced.add(name)
        figures.append((rec.set_id, kept_figure(rec, captions.get(rec.set_id), name if ok else None,
                                                entry.get("warnings", []))))
    figures.sort(key=lambda item: item[0])

    file_reasons = {f["path"]: f.get("reason", "") for f in report.get("files", [])}
    others = sorted((s for s in sets if s.get("status") in ("duplicate", "rejected")),
                    key=lambda s: (s.get("status") != "duplicate", s.get("set_id", "")))
    thumbs: dict[str, str | None] = {}
    for entry in others:
        for f in entry.get("files", []):
            src = source_file(source, f)
            name = f"files/{content_key(f)[:20]}.jpg"
            ok = src is not None and make_thumbnail(src, thumbs_dir / name)
            thumbs[f] = name if ok else None
            if ok:
                referenced.add(name)
    ignored = [f for f in report.get("files", []) if f.get("status") == "ignored"]

    for stale in thumbs_dir.rglob("*.jpg"):
        if stale.relative_to(thumbs_dir).as_posix() not in referenced:
            stale.unlink()

    counts = report.get("counts", {})
    config = build.get("config")
    title = str((publish_setting(config, "name") if isinstance(config, dict) else None) or out.resolve().name)
    count_html = "".join(f'<span class="count-{esc(k)}">{esc(k)} <b>{esc(counts.get(k, 0))}</b></span>'
                         for k in ("files", "sets", "kept", "duplicate", "rejected"))
    page = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>iclora gallery: {esc(title)}</title><style>{CSS}</style></head><body>",
        f'<header><h1>{esc(title)}</h1><div class="counts">{count_html}</div>',
        '<label><input type="checkbox" id="show-boxes"> show all panel boxes</label> '
        '<span class="meta">(hover a composite to see its panels)</span></header>',
        f'<h2 id="kept">Kept sets ({len(figures)})</h2>',
        ('<div class="grid">' + "".join(f for _, f in figures) + "</div>") if figures
        else '<p class="empty">No set was kept.</p>',
        f'<h2 id="rejects">Duplicates and rejects ({len(others)})</h2>',
        ('<div class="rejects">' + "".join(rejected_article(e, file_reasons, thumbs) for e in others) + "</div>")
        if others else '<p class="empty">None.</p>',
        f'<h2 id="ignored">Ignored files ({len(ignored)})</h2>',
        ('<table class="ignored"><tr><th>file</th><th>why</th></tr>'
         + "".join(f'<tr><td>{esc(f["path"])}</td><td>{esc(f.get("reason", ""))}</td></tr>' for f in ignored)
         + "</table>") if ignored else '<p class="empty">None.</p>',
        f"<script>{JS}</script></body></html>",
    ]
    path = out / "gallery.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(page) + "\n", encoding="utf-8")
    return path
