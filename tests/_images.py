"""Small image factories for tests: distinct, deterministic pictures and the bad files users meet."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def picture(seed: int, size: tuple[int, int] = (320, 288)) -> Image.Image:
    """A smooth random picture: different seeds give perceptually different images."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def image_set(folder: Path, seeds: list[int], size: tuple[int, int] = (320, 288), fmt: str = "jpg") -> list[Path]:
    return [save(picture(s, size), folder / f"{i}.{fmt}", quality=92) if fmt == "jpg"
            else save(picture(s, size), folder / f"{i}.{fmt}") for i, s in enumerate(seeds, 1)]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` but holds one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def truncated_jpeg(seed: int = 99) -> bytes:
    buf = io.BytesIO()
    picture(seed).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def exif_rotated_jpeg(path: Path, size: tuple[int, int] = (320, 400)) -> Path:
    """An upright picture (red top, blue bottom) stored rotated, with EXIF Orientation=6.

    Orientation 6 means: rotate 90 degrees clockwise to display. So we store the upright
    picture rotated 90 degrees counter-clockwise."""
    w, h = size
    upright = Image.new("RGB", (w, h), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, w, h // 2))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(stored, path, quality=95, exif=exif.tobytes())
