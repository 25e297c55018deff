"""Large "real" photo sets for benchmarks, in the folder-of-sets layout.

Each panel is a real photograph from ``skimage.data`` (public domain / CC0, see
``sample_data/LICENSES.md``), cut by a random crop, turned by one of the eight flips and
rotations, colour-jittered, enlarged to a few megapixels with a little sensor grain, and saved
as JPEG q90 -- some stored sideways with an EXIF orientation tag, as phones do. Every panel is
kept at least ``MIN_DISTANCE`` pHash bits from every other, so no set is a near-duplicate of
another and no set has two near-duplicate panels: a build keeps them all.

Deterministic for a given seed and size; the files are cached under the system temp folder
(``ICLORA_BENCH_PHOTOS`` overrides it) and reused by later runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "retina",
           "immunohistochemistry", "grass", "gravel", "brick")
MIN_DISTANCE = 14  # pHash bits between any two panels
EXIF_ORIENTATION = 0x0112
DIHEDRAL = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
            Image.Transpose.TRANSVERSE)


@dataclass(frozen=True)
class PhotoSpec:
    sets: int = 120
    panels: tuple[int, ...] = (3, 4)  # panel count of set i is panels[i % len(panels)]
    megapixels: float = 4.0
    quality: int = 90
    seed: int = 0

    def key(self) -> str:
        return (f"s{self.sets}-p{'_'.join(map(str, self.panels))}-mp{self.megapixels:g}"
                f"-q{self.quality}-seed{self.seed}")


def _sources() -> list[Image.Image]:
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SOURCES]


def _panel(rng: np.random.Generator, sources: list[Image.Image], landscape: bool) -> Image.Image:
    """A random crop of a random photo, turned and colour-jittered, at thumbnail size."""
    photo = sources[rng.integers(len(sources))]
    turn = DIHEDRAL[rng.integers(len(DIHEDRAL))]
    if turn is not None:
        photo = photo.transpose(turn)
    w, h = photo.size
    aspect = 1.5 if landscape else 1 / 1.5
    scale = rng.uniform(0.45, 1.0)
    cw = min(w, int(min(w, h * aspect) * scale))
    ch = min(h, int(cw / aspect))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = photo.crop((x0, y0, x0 + cw, y0 + ch))
    gain = rng.uniform(0.75, 1.25, size=3) * rng.uniform(0.85, 1.15)
    jittered = np.asarray(crop, dtype=np.float32) * gain
    return Image.fromarray(jittered.clip(0, 255).astype(np.uint8))


def _enlarge(thumb: Image.Image, size: tuple[int, int], grain: np.ndarray,
             rng: np.random.Generator) -> Image.Image:
    big = np.asarray(thumb.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    h, w = big.shape[:2]
    # real photos carry fine detail; a tiled, randomly shifted grain keeps the JPEG decode honest
    reps = (-(-h // grain.shape[0]), -(-w // grain.shape[1]))
    noise = np.roll(np.tile(grain, reps)[:h, :w], int(rng.integers(grain.shape[0])), axis=0)
    return Image.fromarray((big + noise[..., None]).clip(0, 255).astype(np.uint8))


def make_photo_sets(dest: Path, spec: PhotoSpec = PhotoSpec()) -> list[Path]:
    """Write ``spec.sets`` set folders (``set-0000`` ...) under ``dest``; return them in order."""
    import imagehash

    rng = np.random.default_rng(spec.seed)
    sources = _sources()
    grain = rng.normal(0.0, 4.0, size=(256, 256)).round().astype(np.int16)
    long_side = int(round((spec.megapixels * 1e6 * 1.5) ** 0.5))
    short_side = int(round(long_side / 1.5))
    seen: list[imagehash.ImageHash] = []
    folders = []
    for i in range(spec.sets):
        folder = dest / f"set-{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        landscape = bool(rng.integers(2))
        size = (long_side, short_side) if landscape else (short_side, long_side)
        for j in range(1, spec.panels[i % len(spec.panels)] + 1):
            while True:  # redraw until it is far from every panel so far
                thumb = _panel(rng, sources, landscape)
                digest = imagehash.phash(thumb)
                if all(digest - other >= MIN_DISTANCE for other in seen):
                    seen.append(digest)
                    break
            image = _enlarge(thumb, size, grain, rng)
            exif = Image.Exif()
            if rng.random() < 0.125:  # stored sideways; orientation 6 turns it back upright
                image = image.transpose(Image.Transpose.ROTATE_90)
                exif[EXIF_ORIENTATION] = 6
            image.save(folder / f"{j}.jpg", "JPEG", quality=spec.quality, exif=exif.tobytes())
        folders.append(folder)
    return folders


def photo_sets(spec: PhotoSpec = PhotoSpec(), cache: Path | None = None) -> Path:
    """The SOURCE folder for ``spec``, generated once and cached; returns its path."""
    default = Path(tempfile.gettempdir()) / "iclora-bench-photos"
    root = cache or Path(os.environ.get("ICLORA_BENCH_PHOTOS") or default)
    source = root / spec.key()
    done = root / f"{spec.key()}.complete.json"  # beside SOURCE, so that it is no file of the build
    if done.exists() and source.is_dir():
        return source
    if source.exists():
        shutil.rmtree(source)  # an interrupted earlier run
    staging = root / f".{spec.key()}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    make_photo_sets(staging, spec)
    staging.rename(source)
    done.write_text(json.dumps(asdict(spec)))
    return source


def source_stats(source: Path) -> tuple[int, int, int]:
    """(sets, panels, bytes) of a folder of sets, ignoring dot files."""
    sets = [p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")]
    files = [f for s in sets for f in s.iterdir() if f.suffix == ".jpg"]
    return len(sets), len(files), sum(f.stat().st_size for f in files)
