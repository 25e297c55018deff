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
    header = read_header(buf.getvalue())
    assert header.frames == 2
    assert close(decode_rgb(buf.getvalue()), first)


@pytest.mark.parametrize(("data", "named"), [
    (b"8BPS\x00\x01" + b"\0" * 600, "a Photoshop document (PSD)"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\0" * 600, "a JPEG XL image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="300" height="300"/>', "SVG"),
    (b"\x00\x00\x00\x18ftypmp42" + b"\0" * 600, "ISO media file of brand 'mp42'"),
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
    ("[IMAGE1] a logo [IMAGE2] on a cup", "1x2"),  # visual-identity
    ("[IMAGE1] a [IMAGE2] b [IMAGE3] c", None),  # across or down: not told
    ("a picture with no tags", None),
    ("[SCENE-1] only one of three", None),
])
def test_grid_from_caption_tags(caption: str, grid: str | None) -> None:
    assert grid_from_caption(caption) == grid
