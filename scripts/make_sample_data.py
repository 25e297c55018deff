"""Generate ``sample_data/``: the small, licence-clean demo input of ``iclora build``.

Deterministic and re-runnable: ``python scripts/make_sample_data.py [--out DIR]``. It rewrites the
set folders and junk it owns and leaves the hand-written ``README.md`` and ``LICENSES.md`` alone.
Photographs come from ``skimage.data`` (public domain / CC0, see ``sample_data/LICENSES.md``);
everything else is drawn here with Pillow and its bundled font.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "sample_data"
DOCS = ("README.md", "LICENSES.md")  # hand-written, never touched by this script
JPEG_QUALITY = 85
# EXIF orientation 6: "rotate 90 degrees clockwise to display", as a phone held upright writes it
EXIF_ORIENTATION = 0x0112


def photo(name: str) -> Image.Image:
    """A photograph shipped inside scikit-image (no download)."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def save_jpeg(image: Image.Image, path: Path, quality: int = JPEG_QUALITY, exif: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality, exif=exif)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- photograph sets

def launch_storyboard(folder: Path) -> None:
    """film-storyboard, 3 wide shots: pad, nose close-up, deep space."""
    rocket = photo("rocket")  # 640x427
    save_jpeg(rocket.crop((0, 107, 640, 427)), folder / "1.jpg")  # 640x320
    nose = rocket.crop((192, 110, 448, 238)).resize((768, 384), Image.Resampling.LANCZOS)
    save_jpeg(nose, folder / "2.jpg")
    save_jpeg(photo("hubble_deep_field").crop((0, 186, 1000, 686)), folder / "3.jpg")  # 1000x500
    write_json(folder / "set.json", {
        "preset": "film-storyboard",
        "task": "three consecutive shots of a night rocket launch: the launch pad, "
                "a close-up of the rocket's nose, and the deep space it heads for",
    })


def portrait_pair(folder: Path) -> None:
    """couple-profile 1x2: an RGB portrait and a greyscale one stored sideways with an EXIF
    orientation tag, as a phone camera writes it."""
    save_jpeg(photo("astronaut"), folder / "1.jpg")  # 512x512 RGB
    camera = photo("camera").crop((64, 0, 448, 512))  # 384x512, mode L, upright
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    # orientation 6 means the viewer turns the stored pixels 90 degrees clockwise
    save_jpeg(camera.transpose(Image.Transpose.ROTATE_90), folder / "2.jpg", exif=exif.tobytes())
    write_json(folder / "set.json", {
        "preset": "couple-profile",
        "task": "two portrait photographs shown side by side",
    })


def third_crop(image: Image.Image) -> Image.Image:
    """Centre crop to a 3:2 landscape."""
    w, h = image.size
    if w / h > 1.5:
        cw, ch = round(h * 1.5), h
    else:
        cw, ch = w, round(w / 1.5)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return image.crop((x0, y0, x0 + cw, y0 + ch))


# panel file name -> skimage photo; 10.jpg sorts after 3.jpg only in natural order
MOODBOARD = {"1.jpg": "coffee", "2.jpg": "chelsea", "3.jpg": "grass", "10.jpg": "gravel"}
# the re-upload: same photos, other names, other order
REUPLOAD = {"a.jpg": "10.jpg", "b.jpg": "3.jpg", "c.jpg": "1.jpg", "d.jpg": "2.jpg"}


def cafe_moodboard(folder: Path) -> None:
    """4 photographs, no set.json: the layout follows the panel count (2x2)."""
    for name, source in MOODBOARD.items():
        save_jpeg(third_crop(photo(source)), folder / name)


def cafe_moodboard_reupload(folder: Path, original: Path) -> None:
    """The same photos as ``original``, decoded, enlarged 1.5x and re-encoded at another
    quality under other names in another order: a near-duplicate set."""
    for name, source_name in REUPLOAD.items():
        with Image.open(original / source_name) as im:
            im.load()
            bigger = im.resize((round(im.width * 1.5), round(im.height * 1.5)), Image.Resampling.BICUBIC)
        save_jpeg(bigger, folder / name, quality=60)


def upload_broken(folder: Path) -> None:
    """Two good photographs and one JPEG cut off half-way (an interrupted upload)."""
    save_jpeg(photo("retina").resize((704, 704), Image.Resampling.LANCZOS), folder / "1.jpg")
    save_jpeg(photo("immunohistochemistry"), folder / "2.jpg")
    buf = io.BytesIO()
    photo("brick").save(buf, "JPEG", quality=JPEG_QUALITY)
    data = buf.getvalue()
    (folder / "3.jpg").write_bytes(data[: len(data) // 2])  # header intact, scan data cut


# ---------------------------------------------------------------- rendered sets

FONT_PANEL = (896, 608)  # one quarter of the font-design preset (1792x1216)
LETTERS = "AGR"


def _letters(draw: ImageDraw.ImageDraw, size: tuple[int, int], fill, **kw) -> None:
    w, h = size
    draw.text((w // 2, h // 2 - 40), LETTERS, font=font(300), fill=fill, anchor="mm", **kw)
    draw.text((w // 2, h - 70), "agr 0123456789", font=font(64), fill=fill, anchor="mm", **kw)


def font_sheet(folder: Path) -> None:
    """font-design 2x2: the same letters in four styles, in four storage formats
    (palette PNG, RGBA PNG, RGB JPEG, greyscale JPEG)."""
    w, h = FONT_PANEL
    folder.mkdir(parents=True, exist_ok=True)

    solid = Image.new("RGB", FONT_PANEL, "white")  # 1: solid black on white
    _letters(ImageDraw.Draw(solid), FONT_PANEL, "black")
    solid.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "1.png")

    # 2: outlined, on transparency, over an opaque coral disc
    outline = Image.new("RGBA", FONT_PANEL, (0, 0, 0, 0))
    draw = ImageDraw.Draw(outline)
    draw.ellipse((w - 520, h - 440, w + 120, h + 200), fill=(250, 128, 100, 255))
    _letters(draw, FONT_PANEL, (255, 255, 255, 0), stroke_width=8, stroke_fill=(120, 20, 20, 255))
    outline.save(folder / "2.png")

    inverse = Image.new("RGB", FONT_PANEL, (18, 24, 64))  # 3: light on dark, with a drop shadow
    draw = ImageDraw.Draw(inverse)
    w2, h2 = w // 2, h // 2
    draw.text((w2 + 14, h2 - 26), LETTERS, font=font(300), fill=(0, 0, 0), anchor="mm")
    draw.text((w2, h2 - 40), LETTERS, font=font(300), fill=(250, 220, 120), anchor="mm")
    draw.text((w2, h - 70), "agr 0123456789", font=font(64), fill=(250, 220, 120), anchor="mm")
    save_jpeg(inverse, folder / "3.jpg")

    # 4: slanted, greyscale, white letters with a black rim on a light-to-dark diagonal ramp
    ramp = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w)) / 2
    italic = Image.fromarray((230 - 200 * ramp).round().astype(np.uint8), "L")
    _letters(ImageDraw.Draw(italic), FONT_PANEL, 255, stroke_width=4, stroke_fill=0)
    shear = 0.25  # x' = x + shear * y: a faux italic
    italic = italic.transform(FONT_PANEL, Image.Transform.AFFINE, (1, shear, -shear * h / 2, 0, 1, 0),
                              resample=Image.Resampling.BICUBIC, fillcolor=100)
    save_jpeg(italic, folder / "4.jpg")
    write_json(folder / "set.json", {
        "preset": "font-design",
        "task": "the letters A, G and R of one sans-serif typeface in four lettering styles",
    })


def _gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.broadcast_to(rows, (h, w, 3)).round().astype(np.uint8), "RGB")


POSTER = (512, 768)


def cafe_series(folder: Path) -> None:
    """Three flat-shape posters (shapes and gradients), unicode set and file names, no preset:
    three tall panels become a 1x3 strip."""
    w, h = POSTER
    sun = _gradient(POSTER, (255, 190, 120), (120, 40, 110))  # sunset: sun and hills
    draw = ImageDraw.Draw(sun)
    for i, r in enumerate(range(220, 40, -45)):
        draw.ellipse((w // 2 - r, 300 - r, w // 2 + r, 300 + r), fill=(255, 230 - 30 * i, 90 + 20 * i))
    draw.polygon([(0, h), (0, 560), (180, 470), (340, 590), (w, 500), (w, h)], fill=(60, 30, 70))

    cups = _gradient(POSTER, (240, 236, 225), (205, 190, 170))  # cups on a shelf, top-down light
    draw = ImageDraw.Draw(cups)
    for row, y in enumerate((140, 380, 620)):
        draw.rectangle((30, y + 70, w - 30, y + 86), fill=(110, 70, 40))
        for col in range(3 - row % 2):
            x = 80 + col * 150 + (row % 2) * 75
            draw.rounded_rectangle((x, y, x + 100, y + 70), radius=18, fill=(180 - 40 * col, 60, 50))
            draw.arc((x + 85, y + 12, x + 125, y + 52), -90, 90, fill=(180 - 40 * col, 60, 50), width=9)

    steam = Image.new("RGB", POSTER, (30, 40, 45))  # steam: stacked sine ribbons over a dark cup
    draw = ImageDraw.Draw(steam)
    for k in range(5):
        pts = [(x, 200 + 70 * k + 35 * math.sin(x / 40 + k)) for x in range(0, w + 1, 8)]
        draw.line(pts, fill=(200 - 25 * k, 210 - 15 * k, 220), width=14)
    draw.pieslice((106, 520, 406, 820), 180, 360, fill=(230, 120, 60))
    steam = steam.filter(ImageFilter.GaussianBlur(1.5))

    for i, poster in enumerate((sun, cups, steam), start=1):
        save_jpeg(poster, folder / f"étude-{i}.jpg")


SLIDE = (992, 576)  # one quarter of the ppt-templates preset (1984x1152)
ACCENT = (0, 102, 153)


def _slide(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """One page of the template: white page, accent band on the left, footer rule."""
    page = Image.new("RGB", SLIDE, "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 36, SLIDE[1]), fill=ACCENT)
    draw.line((72, SLIDE[1] - 40, SLIDE[0] - 40, SLIDE[1] - 40), fill=(190, 190, 190), width=2)
    if title:
        draw.text((72, 48), title, font=font(44), fill=ACCENT)
    return page, draw


def slide_deck(folder: Path) -> None:
    """ppt-templates 2x2, with its own caption (caption.txt) and per-panel hints (set.json)."""
    w, h = SLIDE
    title, draw = _slide("")
    draw.rectangle((36, 0, w, h // 2 + 40), fill=ACCENT)
    draw.text((96, h // 2 - 60), "Quarterly Review", font=font(72), fill="white")
    draw.text((96, h // 2 + 90), "Sample Company  ·  2026", font=font(36), fill=(90, 90, 90))

    agenda, draw = _slide("Agenda")
    for i, item in enumerate(("Results", "Customers", "Next steps")):
        y = 170 + 110 * i
        draw.ellipse((84, y, 134, y + 50), fill=ACCENT)
        draw.text((109, y + 25), str(i + 1), font=font(30), fill="white", anchor="mm")
        draw.text((170, y + 4), item, font=font(40), fill=(40, 40, 40))

    chart, draw = _slide("Revenue by quarter")
    base = h - 80
    for i, value in enumerate((180, 260, 230, 360)):
        x = 170 + i * 190
        draw.rectangle((x, base - value, x + 110, base), fill=ACCENT if i == 3 else (150, 185, 205))
        draw.text((x + 55, base + 18), f"Q{i + 1}", font=font(26), fill=(80, 80, 80), anchor="mm")

    closing, draw = _slide("")
    draw.ellipse((w // 2 - 210, h // 2 - 210, w // 2 + 210, h // 2 + 210), fill=ACCENT)
    draw.text((w // 2, h // 2), "Thank you", font=font(64), fill="white", anchor="mm")

    for i, page in enumerate((title, agenda, chart, closing), start=1):
        save_jpeg(page, folder / f"slide-{i}.jpg")
    write_json(folder / "set.json", {
        "preset": "ppt-templates",
        "task": "four slides of one presentation template",
        "panels": [
            "title slide: 'Quarterly Review' in white on a wide blue band",
            "agenda slide: three numbered blue circles with the items Results, Customers, Next steps",
            "bar chart slide: 'Revenue by quarter', four bars, the last one highlighted in blue",
            "closing slide: 'Thank you' in a large blue circle",
        ],
    })
    (folder / "caption.txt").write_text(
        "A clean corporate presentation template in white and deep blue, with a blue band on the "
        "left edge of every slide: a title slide, an agenda, a bar chart and a closing slide.\n",
        encoding="utf-8")


# ---------------------------------------------------------------- junk

def junk(out: Path) -> None:
    """What a zip from a Mac brings along: ignored, and reported as ignored."""
    (out / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(54))
    (out / "cafe-moodboard" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(54))
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(58)
    macosx = out / "__MACOSX" / "cafe-moodboard"
    macosx.mkdir(parents=True, exist_ok=True)
    (macosx / "._1.jpg").write_bytes(apple_double)
    (out / "portrait-pair" / "._2.jpg").write_bytes(apple_double)


SETS: dict[str, Callable[[Path], None]] = {
    "launch-storyboard": launch_storyboard,
    "font-sheet": font_sheet,
    "portrait-pair": portrait_pair,
    "cafe-moodboard": cafe_moodboard,
    "café-séries": cafe_series,
    "slide-deck": slide_deck,
    "upload-broken": upload_broken,
}
DUPLICATE = ("cafe-moodboard-reupload", "cafe-moodboard")  # (duplicate, original)


def generate(out: Path = DEFAULT_OUT) -> list[Path]:
    """(Re)write every set folder and junk file under ``out``; return the files written.

    Only the paths this script owns are replaced; anything else under ``out`` is left alone."""
    out.mkdir(parents=True, exist_ok=True)
    owned = {*SETS, DUPLICATE[0], "__MACOSX", ".DS_Store"}
    for name in owned:  # only what this script writes: never a user's files
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    strangers = sorted(p.name for p in out.iterdir() if p.name not in owned | set(DOCS))
    if strangers:
        print(f"note: {out} also holds {', '.join(strangers)}; left as it is")
    for name, make in SETS.items():
        (out / name).mkdir()
        make(out / name)
    (out / DUPLICATE[0]).mkdir()
    cafe_moodboard_reupload(out / DUPLICATE[0], out / DUPLICATE[1])
    junk(out)
    return sorted(p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] in owned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder to (re)write (default: sample_data/)")
    args = parser.parse_args()
    files = generate(args.out)
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} files, {total / 1e6:.2f} MB, under {args.out}")


if __name__ == "__main__":
    main()
