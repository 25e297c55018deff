"""Validate and decode source images: header checks first, one decode, RGB out.

Every check that can be made from the header (format, declared size, EXIF orientation)
is made before any pixel is decoded, so a file that declares 400 megapixels is rejected
without allocating it. A JPEG much larger than the panel it becomes is decoded with
``Image.draft`` (libjpeg's DCT-domain scaling by 1/2, 1/4 or 1/8), never below the size
the panel needs, so the final Lanczos resize sees at least as many pixels as it writes.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from iclora_data.layout import FitMode

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is rejected, never padded with grey
# phone photos: HEIC/HEIF through pillow-heif (which applies the file's rotation itself and resets the
# EXIF orientation to 1); AVIF is Pillow's own (>= 11.3).
register_heif_opener()

DEFAULT_MIN_SIDE = 256
DEFAULT_MAX_PIXELS = 100_000_000
# Decode cost beyond the pixel count. A progressive JPEG is decoded once per scan over the whole
# image (libjpeg offers no scan limit through Pillow): 20,000 tiny scans in a 60 KB file cost 20 s.
# Encoders write 1-3 scans (baseline) or about 10 (progressive); libjpeg-turbo suggests a limit of
# a few hundred for untrusted files. The product bound keeps a 100-megapixel JPEG to ~20 scans.
MAX_JPEG_SCANS = 100
MAX_JPEG_SCAN_PIXELS = 2_000_000_000  # scans x pixels
# Multi-page files (TIFF pages, GIF/APNG/WebP frames) give their first page only, and the other
# pages are never walked: counting 60,000 TIFF pages costs 50 s, and a page that points past the
# end of the file must not reject a good first page.
EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # orientations that rotate by 90 degrees


# What Pillow's format plugins raise on a malformed file, beyond OSError: a bad file is the set's
# problem, never the run's (MemoryError is left to fail the run).
_MALFORMED = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error,
              ZeroDivisionError)


class ImageRejected(Exception):
    """A file that cannot be a panel. ``str(exc)`` is the reason shown in the ledger."""


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int  # as displayed, after EXIF orientation
    height: int
    mode: str


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    # Pillow's own bomb guard fires at open for > 2x MAX_IMAGE_PIXELS; keep it at or above our limit
    # so that our check, with its clearer message, is the one that speaks.
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image: {_sniff(data)}") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses at open beyond 2x its limit, before we see the size: take it from its message
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared.group(1)) / 1e6:.0f} megapixels" if declared else "a decompression bomb"
        raise ImageRejected(f"too large: {size}, over the limit of {max_pixels / 1e6:.0f} megapixels") from None
    except _MALFORMED as exc:
        kind = _iso_media_kind(data)
        raise ImageRejected(f"{kind}: {exc}" if kind else f"corrupt image header: {exc}") from None


# formats that are images but not ones the panels can be made from, named for the ledger
_UNSUPPORTED = ((b"8BPS", "a Photoshop document (PSD)"), (b"\xff\x0a", "a JPEG XL image"),
                (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"), (b"FUJIFILMCCD-RAW", "a Fujifilm RAW image"),
                (b"AT&TFORM", "a DjVu document"), (b"\x00\x00\x01\x00", "a Windows icon (ICO) Pillow cannot read"))


def _sniff(data: bytes) -> str:
    container = _iso_media_kind(data)
    if container:
        return container
    head = data[:512]
    if head.startswith(b"%PDF"):
        return "the file is a PDF document"
    for magic, name in _UNSUPPORTED:
        if head.startswith(magic):
            return f"the file is {name}, not a supported format"
    if b"<svg" in head.lower():
        return "the file is an SVG drawing (vector graphics are not rasterised)"
    try:
        head.decode("utf-8")
        return "the file holds text, not image data"
    except UnicodeDecodeError:
        return "unknown file format"


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _iso_media_kind(data: bytes) -> str | None:
    """What an ISO base media file (HEIC, AVIF, MP4, QuickTime) is, from its ``ftyp`` box."""
    if data[4:8] != b"ftyp":
        return None
    brand = data[8:12]
    name = brand.decode("ascii", "replace")
    if brand in _HEIF_BRANDS:
        return f"the file is a HEIC/HEIF image (brand '{name}') that could not be decoded"
    if brand in _AVIF_BRANDS:
        return f"the file is an AVIF image (brand '{name}') that could not be decoded"
    return f"the file is a video or media container (ISO brand '{name}'), not an image"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return 1


def read_header(data: bytes, *, min_side: int = DEFAULT_MIN_SIDE,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Check an image from its header only. Raises ImageRejected with the reason."""
    im = _open(data, max_pixels)
    header = _check_header(im, min_side, max_pixels)
    check_decode_cost(im, data)
    return header


def check_size(width: int, height: int, *, min_side: int, max_pixels: int) -> None:
    """The size limits, on the displayed size. Raises ImageRejected."""
    if width * height > max_pixels:
        raise ImageRejected(f"too large: {width}x{height}, {width * height / 1e6:.0f} megapixels, "
                            f"over the limit of {max_pixels / 1e6:.0f} megapixels")
    if min(width, height) < min_side:
        raise ImageRejected(f"too small: {width}x{height} pixels, the shorter side must be at least {min_side}")


def _check_header(im: Image.Image, min_side: int, max_pixels: int) -> ImageHeader:
    w, h = im.size
    if _orientation(im) in _SWAPS_SIDES:
        w, h = h, w
    check_size(w, h, min_side=min_side, max_pixels=max_pixels)
    return ImageHeader(im.format or "unknown", w, h, im.mode)


def check_decode_cost(im: Image.Image, data: bytes) -> None:
    """Reject a file whose decode would cost far more than its pixel count says (before decoding)."""
    if im.format in ("JPEG", "MPO"):
        limit = min(MAX_JPEG_SCANS, max(1, MAX_JPEG_SCAN_PIXELS // max(1, im.width * im.height)))
        scans = jpeg_scan_count(data, stop_after=limit)
        if scans > limit:
            raise ImageRejected(f"JPEG with more than {limit} scans ({im.width}x{im.height}): decoding it would cost "
                                f"{limit}+ passes over the image; re-save it as a baseline JPEG")


_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")  # a marker, skipping fill bytes and RSTn


def jpeg_scan_count(data: bytes, stop_after: int | None = None) -> int:
    """The number of scans (SOS segments) of the first image in a JPEG, read from its markers.

    The header segments (which carry lengths) are walked up to the first scan. Past it, a marker cannot
    hide in entropy-coded data (a 0xFF there is always followed by 0x00 or a restart marker), so the
    remaining scans and the end of the image are found by a vectorised search for 0xFF: ~0.8 ms for a
    1.2 MB photo, with the GIL released (a regex over every 0xFF cost ~17 ms and held it). ``stop_after``
    caps the count; a malformed stream counts what it has (the decoder reports the damage)."""
    pos = 2
    while pos + 4 <= len(data):
        m = _JPEG_MARKER.match(data, pos)
        if m is None:
            return 0
        marker, pos = m.group(1)[0], m.end()
        if marker == 0xD9:  # end of image before any scan
            return 0
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        (length,) = struct.unpack(">H", data[pos:pos + 2]) if pos + 2 <= len(data) else (0,)
        pos += length
        if marker == 0xDA:
            scans = 1 + _later_scans(data, pos)
            return scans if stop_after is None else min(scans, stop_after + 1)
    return 0


def _later_scans(data: bytes, pos: int) -> int:
    """SOS markers after ``pos`` (inside the first scan's data) up to the image's EOI marker; what follows
    EOI (an MPO's second image, trailing bytes) is not counted."""
    tail = np.frombuffer(data, np.uint8, offset=min(pos, len(data)))
    if tail.size < 2:
        return 0
    ff = np.flatnonzero(tail[:-1] == 0xFF)
    following = tail[ff + 1]
    eoi = np.flatnonzero(following == 0xD9)
    last = eoi[0] if eoi.size else following.size
    return int(np.count_nonzero(following[:last] == 0xDA))


def draft_request(size: tuple[int, int], swapped: bool, target: tuple[int, int],
                  mode: FitMode) -> tuple[int, int] | None:
    """The smallest stored size that still gives ``target`` full resolution, or None.

    ``size`` is the stored (un-rotated) size; ``target`` is the panel in display orientation."""
    sw, sh = size
    dw, dh = (target[1], target[0]) if swapped else target
    scale = max(dw / sw, dh / sh) if mode == "crop" else min(dw / sw, dh / sh)
    if scale > 0.5:  # DCT scaling only halves; nothing to gain
        return None
    return math.ceil(sw * scale), math.ceil(sh * scale)


def decode_rgb(data: bytes, *, target: tuple[int, int] | None = None, fit: FitMode = "crop",
               min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode once into an upright RGB image, header checks first.

    EXIF orientation is applied; CMYK, 16-bit, palette, LA and alpha images become RGB (alpha
    over white); an animation gives its first frame. With ``target`` (the panel size it will
    be fitted to), a large JPEG is decoded at a reduced DCT scale that keeps >= target pixels.
    """
    im = _open(data, max_pixels)
    _check_header(im, min_side, max_pixels)
    check_decode_cost(im, data)
    orientation = _orientation(im)
    fmt = im.format or "image"
    try:
        if target is not None and im.format == "JPEG":
            request = draft_request(im.size, orientation in _SWAPS_SIDES, target, fit)
            if request is not None:
                im.draft("RGB" if im.mode in ("RGB", "YCbCr") else im.mode, request)
        im.seek(0)
        im.load()
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise ImageRejected(f"truncated {fmt}: {msg}") from None
        raise ImageRejected(f"corrupt {fmt}: {msg}") from None
    except _MALFORMED as exc:
        raise ImageRejected(f"corrupt {fmt}: {exc or type(exc).__name__}") from None
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # high bit depth: scale to 8 bits instead of clipping (Pillow's convert clips at 255)
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if im.mode == "I" and arr.max() <= 65535:
            top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info) \
        or (im.mode in ("L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
