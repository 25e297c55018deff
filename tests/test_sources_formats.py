"""Phone and web formats (HEIC, AVIF), multi-page TIFF, clear rejections naming a format, and the
splitting of ready composites."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iclora_data.compose import compose_set
from iclora_data.config import ComposeSettings
from iclora_data.images import ImageRejected, decode_rgb, read_header
from iclora_data.ingest import ingest
from iclora_data.layout import Layout, LayoutError
from iclora_data.sources.composite import grid_from_caption, split_boxes, split_composite
from iclora_data.store import RunStore


def marked(size: tuple[int, int] = (320, 400)) -> Image.Image:
    """Red top half, blue bottom half, a green square in the top-left corner: any rotation shows."""
    w, h = size
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, w, h // 2))
    im.paste((0, 255, 0), (0, 0, 60, 60))
    return im


def encoded(im: Image.Image, fmt: str, orientation: int = 1, **kw) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, fmt, exif=exif.tobytes(), **kw)
    return buf.getvalue()


def close(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()) < 12


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_decode_upright(fmt: str) -> None:
    upright = marked()
    # stored rotated 90 degrees counter-clockwise, with EXIF orientation 6 (rotate clockwise to display)
    data = encoded(upright.transpose(Image.Transpose.ROTATE_90), fmt, orientation=6, quality=90)
    assert read_header(data).format == fmt and (read_header(data).width, read_header(data).height) == (320, 400)
    assert close(decode_rgb(data), upright)  # the oracle: the picture before it was stored rotated
    assert close(decode_rgb(encoded(upright, fmt, quality=90)), upright)


def test_heic_files_are_panels_of_a_folder_set(tmp_path: Path) -> None:
    for i, seed in enumerate([(255, 0, 0), (0, 128, 255)], 1):
        im = marked()
        im.paste(seed, (100, 100, 200, 200))
        (tmp_path / "src" / "phone").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "phone" / f"{i}.heic").write_bytes(encoded(im, "HEIF", quality=90))
    (tmp_path / "src" / "phone" / "3.avif").write_bytes(encoded(marked().rotate(180), "AVIF", quality=90))
    result = ingest(tmp_path / "src")
    assert result.sets[0].files == ["phone/1.heic", "phone/2.heic", "phone/3.avif"] and result.files == []
    prepared = compose_set(result.sets[0], ComposeSettings(), RunStore(tmp_path / "out"))
    assert prepared.rejection is None and prepared.composite is not None


def test_multi_page_tiff_uses_its_first_page() -> None:
    first, second = marked(), Image.new("RGB", (320, 400), (0, 0, 0))
    buf = io.BytesIO()
    first.save(buf, "TIFF", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2  # the premise: two pages
    assert close(decode_rgb(buf.getvalue()), first)


@pytest.mark.parametrize(("data", "named"), [
    (b"8BPS\x00\x01" + b"\0" * 600, "a Photoshop document (PSD)"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\0" * 600, "a JPEG XL image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"/>', "SVG"),
    (b"\x00\x00\x00\x18ftypmp42" + b"\0" * 600, "'mp42'"),
    (b"%PDF-1.7\n" + b"\0" * 600, "PDF document"),
])
def test_an_unsupported_format_is_rejected_naming_it(data: bytes, named: str) -> None:
    with pytest.raises(ImageRejected, match="not an image") as exc:
        read_header(data)
    assert named in str(exc.value)


def test_split_boxes_match_the_layout_of_an_evenly_divisible_composite() -> None:
    layout = Layout(3, 1, 1024, 1536)  # film-storyboard
    assert split_boxes(1024, 1536, "3x1") == [tuple(b) for b in layout.panel_boxes()]
    boxes = split_boxes(1001, 500, "2x3")  # uneven: covers every pixel once, nothing overlaps
    cover = np.zeros((500, 1001), int)
    for x0, y0, x1, y1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all() and len(boxes) == 6
    with pytest.raises(LayoutError):
        split_boxes(2, 2, "3x1")


def test_split_composite_returns_panels_in_reading_order() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    canvas = Image.new("RGB", (200, 100))
    for i, c in enumerate(colours):
        canvas.paste(c, ((i % 2) * 100, (i // 2) * 50, (i % 2) * 100 + 100, (i // 2) * 50 + 50))
    panels = split_composite(canvas, "2x2")
    assert [p.getpixel((10, 10)) for p in panels] == colours and {p.size for p in panels} == {(100, 50)}


@pytest.mark.parametrize(("caption", "grid"), [
    ("[MOVIE-SHOTS] a day [SCENE-1] a [SCENE-2] b [SCENE-3] c", "3x1"),
    ("four slides; [TOP-LEFT] a; [TOP-RIGHT] b; [BOTTOM-LEFT] c; [BOTTOM-RIGHT] d", "2x2"),
    ("[LEFT] a photo [RIGHT] a drawing", "1x2"),
    ("[SANDSTORM-PSA] [TOP] before [BOTTOM] after", "2x1"),
    ("[IMAGE1] a logo [IMAGE2] on a cup", None),  # numbered tags: side by side or stacked, not told
    ("[IMAGE1] a [IMAGE2] b [IMAGE3] c", None),
    ("a picture with no tags", None),
    ("[SCENE-1] only one of three", None),
])
def test_grid_from_caption_tags(caption: str, grid: str | None) -> None:
    assert grid_from_caption(caption) == grid


# ----- ready composites through compose and dedup ---------------------------------------------------


def _ready(tmp_path: Path, name: str, seeds: list[int], caption: str) -> tuple[Path, list[Image.Image]]:
    from _images import picture

    panels = [picture(s, (300, 200)) for s in seeds]
    canvas = Image.new("RGB", (300, 200 * len(panels)))
    for i, p in enumerate(panels):
        canvas.paste(p, (0, 200 * i))
    folder = tmp_path / "pairs"
    folder.mkdir(exist_ok=True)
    canvas.save(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(caption)
    return folder, panels


def test_ready_composites_are_split_for_dedup_and_remade_at_flux_sizes(tmp_path: Path) -> None:
    from iclora_data.dedup import deduplicate_sets, perceptual_hash
    from iclora_data.sources.composite import compose_ready

    caption = "[MOVIE-SHOTS] a harbour [SCENE-1] pier [SCENE-2] boat [SCENE-3] wave"
    _, panels = _ready(tmp_path, "a", [1, 2, 3], caption)
    _ready(tmp_path, "b", [1, 2, 3], caption)  # the same set again
    folder, _ = _ready(tmp_path, "c", [4, 5, 5], caption)  # two equal panels in one set
    result = ingest(folder, grid=None)
    assert [(s.set_id, s.composite_grid) for s in result.sets] == [("a", "3x1"), ("b", "3x1"), ("c", "3x1")]
    store = RunStore(tmp_path / "out")
    prepared = [compose_ready(s, ComposeSettings(min_side=128), store) for s in result.sets]
    a = prepared[0]
    # the oracle: the hashes of the pictures the composite was pasted from, in reading order
    assert [p.phash for p in a.panels] == [perceptual_hash(p) for p in panels]
    rec = a.composite
    assert rec and (rec.rows, rec.cols, rec.width, rec.height) == (3, 1, 288, 576)  # panels 300x200 -> 288x192
    assert rec.preset == "film-storyboard" and rec.panel_tags == ["[SCENE-1]", "[SCENE-2]", "[SCENE-3]"]
    assert rec.source_caption == caption and rec.source_files == ["a.png"]
    decisions = deduplicate_sets(prepared)
    assert decisions["a"].status == "kept" and decisions["b"].status == "duplicate"
    assert decisions["b"].duplicate_of == "a" and decisions["c"].status == "rejected"
    again = compose_ready(result.sets[0], ComposeSettings(min_side=128), store)
    assert again.decoded == 0 and [p.phash for p in again.panels] == [p.phash for p in a.panels]
    too_small = compose_ready(result.sets[0], ComposeSettings(min_side=256), store)
    assert too_small.rejection == ("too small: a 300x600 composite of 3x1 panels has 300x200 panels, "
                                   "the shorter side must be at least 256")
