"""A realistic finished OUT folder for the publish, export and gallery tests.

Made the way a build makes it: panels are real JPEG files in a SOURCE folder, composites are
pasted with the project's ``Layout``/``fit_panel`` and saved as JPEG with their sidecars
(``CompositeRecord.save``), captions go through ``save_caption``, and ``report.json`` /
``build.json`` follow the README ("What a build writes"). The sets cover what a user meets: captioned kept sets with
different layouts, a kept set whose caption failed, a duplicate, a set rejected for a truncated
file, one rejected for a too-small panel, an ignored junk file, and ids and captions with
HTML in them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from iclora_data.layout import Layout, choose_layout, fit_panel
from iclora_data.records import CaptionRecord, CompositeRecord, composites_dir, file_stem, save_caption
from iclora_data.store import atomic_write_json, content_key, file_sha256

XSS_ID = 'bad <img src=x onerror="alert(1)"> & co'
CAPTIONER = "transformers:tiny-random-qwen2-vl"


def panel_image(seed: int, size: tuple[int, int] = (320, 256)) -> Image.Image:
    """A deterministic picture with structure (gradient, shapes), distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    arr = np.stack([(base[c] + xx * (c + 1) * 0.4 + yy * (3 - c) * 0.3) % 256 for c in range(3)], -1)
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        draw.ellipse((x0, y0, x0 + int(rng.integers(20, 80)), y0 + int(rng.integers(20, 80))),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


@dataclass
class SetSpec:
    set_id: str
    panels: int
    status: str  # kept | duplicate | rejected
    preset: str | None = None
    caption: str = "ok"  # ok | failed | none
    reason: str = ""
    duplicate_of: str | None = None


def compose(out: Path, spec: SetSpec, panel_paths: list[Path], files: list[str]) -> CompositeRecord:
    images = [Image.open(p).convert("RGB") for p in panel_paths]
    layout: Layout = choose_layout(len(images), [im.size for im in images], preset=spec.preset)
    canvas = Image.new("RGB", (layout.width, layout.height), "white")
    for im, box in zip(images, layout.panel_boxes(), strict=True):
        canvas.paste(fit_panel(im, (box[2] - box[0], box[3] - box[1])), box[:2])
    stem = file_stem(spec.set_id)
    composites_dir(out).mkdir(parents=True, exist_ok=True)
    canvas.save(composites_dir(out) / f"{stem}.jpg", quality=90)
    rec = CompositeRecord(
        set_id=spec.set_id, key=content_key([file_sha256(p) for p in panel_paths], layout.grid, layout.width),
        image=f"{stem}.jpg", rows=layout.rows, cols=layout.cols, width=layout.width, height=layout.height,
        panel_boxes=[list(b) for b in layout.panel_boxes()], panel_tags=list(layout.panel_tags),
        prefix=layout.prefix, preset=layout.preset, task=None, source_files=files)
    rec.save(composites_dir(out) / f"{stem}.json")
    return rec


def caption_for(rec: CompositeRecord) -> CaptionRecord:
    summary = f"a set about {rec.set_id} with <script>alert('x')</script> & friends"
    panels = [f"panel {i + 1} of {rec.set_id}, a colourful scene" for i in range(len(rec.panel_boxes))]
    head = f"{rec.prefix} {summary}" if rec.prefix else f"This {len(panels)}-panel image shows {summary};"
    caption = " ".join([head, *(f"{tag} {text}" for tag, text in zip(rec.panel_tags, panels, strict=True))])
    return CaptionRecord(set_id=rec.set_id, key=content_key(rec.key, "tiny"), composite_key=rec.key,
                         status="ok", summary=summary, panels=panels, caption=caption, captioner=CAPTIONER,
                         attempts=1)


DEFAULT_SETS = [
    SetSpec("alpha", 3, "kept", preset="film-storyboard"),
    SetSpec("beta", 2, "kept"),
    SetSpec("city/night", 4, "kept"),  # id that is not file-safe
    SetSpec("gamma", 2, "kept", caption="failed"),
    SetSpec("delta", 2, "duplicate", reason="duplicate of beta: panels match one to one (Hamming distance 0)",
            duplicate_of="beta"),
    SetSpec(XSS_ID, 2, "rejected", reason="truncated JPEG: image file is truncated"),
    SetSpec("tiny", 2, "rejected", reason="tiny/2.jpg is too small: 64x48, the shorter side must be at least 256 px"),
]


def make_finished_out(root: Path, *, captions: bool = True, extra_kept: int = 0,
                      sets: list[SetSpec] | None = None) -> Path:
    """Build SOURCE and a finished OUT under ``root``; returns OUT (SOURCE is ``root/source``)."""
    source, out = root / "source", root / "out"
    specs = list(sets if sets is not None else DEFAULT_SETS)
    specs += [SetSpec(f"extra-{i:04d}", 2, "kept") for i in range(extra_kept)]
    set_entries: list[dict[str, Any]] = []
    file_entries: list[dict[str, Any]] = []
    seed = 0
    for spec in specs:
        folder = source / spec.set_id.replace("/", "_") if "/" in spec.set_id else source / spec.set_id
        folder.mkdir(parents=True, exist_ok=True)
        paths, files = [], []
        for i in range(1, spec.panels + 1):
            seed += 1
            path = folder / f"{i}.jpg"
            if spec.status == "duplicate":  # the same pictures as the set it duplicates
                dup_index = next(k for k, s in enumerate(specs) if s.set_id == spec.duplicate_of)
                img = panel_image(1000 + dup_index * 10 + i)
            else:
                img = panel_image(1000 + specs.index(spec) * 10 + i)
            if spec.set_id == "tiny" and i == 2:
                img = img.resize((64, 48))
            img.save(path, quality=92)
            if spec.set_id == XSS_ID and spec.status == "rejected" and i == 2:  # cut the file short: not decodable
                path.write_bytes(path.read_bytes()[:300])
            paths.append(path)
            files.append(path.relative_to(source).as_posix())
        if spec.status == "kept":
            rec = compose(out, spec, paths, files)
            if captions and spec.caption == "ok":
                save_caption(out, caption_for(rec))
            elif captions and spec.caption == "failed":
                save_caption(out, CaptionRecord(set_id=spec.set_id, key="k", composite_key=rec.key, status="failed",
                                                captioner=CAPTIONER, error="wrong panel count: 1 of 2", attempts=3))
        file_status = {"kept": "used", "duplicate": "duplicate", "rejected": "rejected"}[spec.status]
        for f in files:
            reason = spec.reason if spec.status != "kept" else ""
            if spec.set_id == XSS_ID and spec.status == "rejected":
                reason = "truncated JPEG: image file is truncated" if f.endswith("2.jpg") else "set rejected"
            file_entries.append({"path": f, "set_id": spec.set_id, "status": file_status, "reason": reason})
        set_entries.append({"set_id": spec.set_id, "status": spec.status, "reason": spec.reason,
                            "duplicate_of": spec.duplicate_of, "files": files, "warnings": []})
    junk = source / ".DS_Store"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"\0junk")
    file_entries.append({"path": ".DS_Store", "set_id": None, "status": "ignored",
                         "reason": "system junk file (.DS_Store)"})
    counts = {"files": len(file_entries), "sets": len(set_entries),
              **{k: sum(1 for s in set_entries if s["status"] == k) for k in ("kept", "duplicate", "rejected")}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", {"version": 1, "counts": counts, "sets": set_entries,
                                            "files": file_entries})
    atomic_write_json(out / "build.json", {
        "version": 1, "source": str(source), "source_kind": "folder",
        # the shape of the real BuildConfig, with things that must not reach a public card
        "config": {"compose": {"preset": None, "layout": None, "fit": "crop", "quality": 95},
                   "dedup": {"max_distance": 8},
                   "caption": {"backend": "openai", "model": "/home/someone/models/qwen2-vl",
                               "base_url": "http://10.1.2.3:8000/v1", "api_key_env": "MY_SECRET_KEY_VAR",
                               "prompt_file": "/home/someone/prompt.txt", "temperature": 0.0},
                   "publish": {"name": "test-sets", "license": "cc-by-4.0"},
                   "until": "publish", "workers": 2},
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
        "until": "publish", "iclora_version": "0.1.0",
        "captioner": "openai:/home/someone/models/qwen2-vl" if captions else None,
        "prompt_version": "v1" if captions else None,
        "counts": counts})
    return out


def kept_captioned_ids(out: Path) -> list[str]:
    """Set ids that should be rows: kept, with an ok caption, in set-id order."""
    report = json.loads((out / "report.json").read_text())
    kept = {s["set_id"] for s in report["sets"] if s["status"] == "kept"}
    ok = set()
    for p in (out / "captions").glob("*.json"):
        rec = json.loads(p.read_text())
        if rec["status"] == "ok":
            ok.add(rec["set_id"])
    return sorted(kept & ok)
