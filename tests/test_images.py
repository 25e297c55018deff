"""Header-first validation and the one decode: limits, speed, and draft-decoding quality."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from iclora_data.images import ImageRejected, decode_rgb, draft_request, read_header
from iclora_data.layout import fit_panel
from tests._images import png_declaring


def test_400_megapixel_png_is_rejected_from_its_header_without_allocating():
    data = png_declaring(20000, 20000)
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(ImageRejected, match="too large: 400 megapixels, over the limit of 100 megapixels"):
        decode_rgb(data)
    elapsed = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 5 * 2**20  # decoding would need 1.2 GB


def test_min_side_is_checked_on_the_displayed_size():
    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, "PNG")
    with pytest.raises(ImageRejected, match="too small: 300x200 pixels"):
        read_header(buf.getvalue())
    assert read_header(buf.getvalue(), min_side=200).width == 300


def photo(size: tuple[int, int]) -> bytes:
    """A real photograph (scikit-image's astronaut, public domain) as a large JPEG."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean((x - y) ** 2)))


def test_draft_decoding_gives_the_panel_without_visible_loss():
    data = photo((2048, 2048))
    target = (256, 256)
    full = fit_panel(decode_rgb(data), target)
    drafted_source = decode_rgb(data, target=target)
    assert drafted_source.width < 2048  # the DCT scaling really happened
    assert drafted_source.width >= 256  # never below what the panel needs
    drafted = fit_panel(drafted_source, target)
    assert psnr(full, drafted) > 38.0


def test_draft_is_not_used_when_the_panel_needs_the_pixels():
    assert draft_request((1024, 1024), False, (768, 768), "crop") is None
    assert draft_request((4000, 3000), False, (512, 512), "crop") == (683, 512)
    # EXIF-rotated: the request is made in stored orientation
    assert draft_request((3000, 4000), True, (512, 384), "crop") == (384, 512)


# ----- decode cost: scans, pages, frames, formats in disguise -----------------------------------

def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """A JPEG cut into (marker, bytes) segments, with each scan's entropy data kept with its SOS."""
    import re
    import struct

    segs, i = [], 2
    while data[i + 1] != 0xD9:
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        j = i + 2 + length
        if data[i + 1] == 0xDA:
            j = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, j).start()
        segs.append((data[i + 1], data[i:j]))
        i = j
    return segs


def many_scan_jpeg(extra_scans: int) -> bytes:
    """A valid progressive JPEG (small file) whose last scan is repeated: libjpeg decodes every one."""
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(buf, "JPEG", progressive=True)
    segs = jpeg_segments(buf.getvalue())
    last_scan = [s for m, s in segs if m == 0xDA][-1]
    return b"\xff\xd8" + b"".join(s for _, s in segs) + last_scan * extra_scans + b"\xff\xd9"


def test_scan_count_matches_what_the_encoder_wrote():
    from iclora_data.images import jpeg_scan_count

    baseline, progressive = io.BytesIO(), io.BytesIO()
    Image.effect_noise((300, 300), 50).convert("RGB").save(baseline, "JPEG")
    Image.effect_noise((300, 300), 50).convert("RGB").save(progressive, "JPEG", progressive=True)
    assert jpeg_scan_count(baseline.getvalue()) == 1  # one interleaved scan
    assert jpeg_scan_count(progressive.getvalue()) == 10  # libjpeg's simple progression script (jcparam.c)
    assert jpeg_scan_count(many_scan_jpeg(500)) == 510


def test_jpeg_with_thousands_of_scans_is_rejected_before_decoding():
    data = many_scan_jpeg(5000)  # 60 KB; a full decode costs seconds
    t = time.perf_counter()
    with pytest.raises(ImageRejected, match="JPEG with more than 100 scans"):
        decode_rgb(data)
    with pytest.raises(ImageRejected, match="more than 100 scans"):
        read_header(data)
    assert time.perf_counter() - t < 0.5
    ok = decode_rgb(many_scan_jpeg(50))  # 60 scans: within the limit, decodes as before
    assert ok.getpixel((10, 10))[0] > 190


def tiff_pages(first: Image.Image, extra_pages: int = 0, next_offset: int | None = None) -> bytes:
    """A TIFF of ``first`` followed by ``extra_pages`` copies of its IFD (each a page), or whose
    first page's next-IFD pointer is ``next_offset`` (e.g. past the end of the file)."""
    import struct

    buf = io.BytesIO()
    first.save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack("<I", data[4:8])
    (n,) = struct.unpack("<H", data[ifd:ifd + 2])
    next_at = ifd + 2 + 12 * n
    entries = bytes(data[ifd + 2:next_at])
    if next_offset is not None:
        data[next_at:next_at + 4] = struct.pack("<I", next_offset)
        return bytes(data)
    start = len(data)
    data[next_at:next_at + 4] = struct.pack("<I", start if extra_pages else 0)
    size = 2 + 12 * n + 4
    for k in range(extra_pages):
        follow = start + (k + 1) * size if k < extra_pages - 1 else 0
        data += struct.pack("<H", n) + entries + struct.pack("<I", follow)
    return bytes(data)


def test_tiff_second_page_past_the_end_does_not_matter():
    first = Image.effect_noise((300, 280), 40).convert("RGB")
    data = tiff_pages(first, next_offset=10**9)
    assert read_header(data).width == 300
    assert np.array_equal(np.asarray(decode_rgb(data)), np.asarray(first))


def test_tiff_with_60000_pages_costs_one_page():
    first = Image.effect_noise((300, 280), 40).convert("RGB")
    data = tiff_pages(first, extra_pages=60_000)
    with Image.open(io.BytesIO(data)) as im:  # the oracle: Pillow walks them all when asked
        im.seek(3)
    t = time.perf_counter()
    read_header(data)
    decoded = decode_rgb(data)
    assert time.perf_counter() - t < 1.0  # walking 60,000 pages takes ~50 s here
    assert np.array_equal(np.asarray(decoded), np.asarray(first))


def test_gif_whose_second_frame_is_garbage_gives_its_first_frame():
    frames = [Image.new("RGB", (300, 300), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    cut = data.rindex(b"\x2c")  # the second frame's image descriptor
    broken = data[:cut] + b"\x2c" + b"\xff" * 40
    assert decode_rgb(broken).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(("brand", "expected"), [
    (b"heic", "HEIC/HEIF image (brand 'heic')"),
    (b"mif1", "HEIC/HEIF image (brand 'mif1')"),
    (b"avis", "AVIF image (brand 'avis')"),
    (b"isom", "a video or media container (ISO brand 'isom')"),
])
def test_iso_media_renamed_jpg_names_its_format(brand, expected):
    # an ftyp box as HEIC, AVIF and MP4 files open with; the rest is not decodable by anyone
    data = b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00mif1" + brand + b"\x00" * 64
    with pytest.raises(ImageRejected, match=expected.replace("(", r"\(").replace(")", r"\)")):
        decode_rgb(data)
