"""Which perceptual hash, and which Hamming threshold, separates copies from different pictures?

Measured on REAL photographs (the ones ``scikit-image`` ships in its wheel, so offline). Each
photo is upscaled 3x into a large JPEG "source" (1000-4200 px), then turned into variants a user
may hold of the same picture: draft-decoded at 1/2, 1/4, 1/8 (as the pipeline decodes big JPEGs),
JPEG re-encodes, PNG<->JPEG, resizes down to 1/8 and up, brightness/contrast/saturation/gamma
tweaks and a combination. Positives: every pair of variants of one photo. Negatives: variants of
different photos, and different non-overlapping crops of one photo (quadrants, halves, thirds:
the hard case of panels cut from one scene).

Prints, per hash type, the distance distribution of each group, the error rates per threshold,
and for the hash ``iclora_data.dedup.perceptual_hash`` uses (``phash`` of a small box-reduced
proxy of the decoded panel, row ``iclora``, next to ``phash`` of the full image): its threshold
``DEFAULT_MAX_DISTANCE`` with the margin on both sides (worst positive vs closest negative), and
how many bits the proxy changes against the full-image hash.

    python benchmarks/bench_phash_threshold.py [--photos 15] [--upscale 3]
"""

from __future__ import annotations

import argparse
import io
import itertools
import time
from collections.abc import Callable

import imagehash
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from iclora_data.dedup import DEFAULT_MAX_DISTANCE, perceptual_hash

PHOTOS = [
    "astronaut", "coffee", "chelsea", "rocket", "camera", "retina", "hubble_deep_field",
    "immunohistochemistry", "moon", "coins", "clock", "cell", "brick", "grass", "gravel",
]  # fmt: skip
UPSCALE = 3


def load_photos(count: int = len(PHOTOS), upscale: int = UPSCALE) -> dict[str, Image.Image]:
    import skimage.data

    photos = {}
    for name in PHOTOS[:count]:
        try:
            array = getattr(skimage.data, name)()
        except Exception as exc:  # a photo that needs a download (pooch) is skipped
            print(f"skip {name}: {type(exc).__name__}")
            continue
        image = Image.fromarray(np.asarray(array)).convert("RGB")
        photos[name] = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.LANCZOS)
    return photos


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=quality) if fmt == "JPEG" else image.save(buf, fmt)
    return buf.getvalue()


def decode(data: bytes, scale: int = 1) -> Image.Image:
    """As the pipeline decodes a panel: EXIF-transposed, RGB, JPEG DCT-downscaled by ``scale``."""
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return ImageOps.exif_transpose(image).convert("RGB")


def resized(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def gamma(image: Image.Image, g: float) -> Image.Image:
    lut = [round(255 * (i / 255) ** g) for i in range(256)]
    return image.point(lut * 3)


def variants(source: Image.Image) -> dict[str, Image.Image]:
    """Decoded images a user may hold of the same photo."""
    jpeg = encode(source, quality=95)
    full = decode(jpeg)
    png = encode(full, "PNG")
    out = {
        "source full decode": full,
        "draft 1/2": decode(jpeg, 2),
        "draft 1/4": decode(jpeg, 4),
        "draft 1/8": decode(jpeg, 8),
        "png": decode(png),
        "png->jpeg q85": decode(encode(decode(png), quality=85)),
        "resize 2/3 up x1.5 draft 1/2": decode(encode(resized(full, 1.5), quality=90), 2),
        "resize 1/2 draft 1/4": decode(encode(resized(full, 0.5), quality=90), 4),
        "brightness 0.9": decode(encode(ImageEnhance.Brightness(full).enhance(0.9), quality=90)),
        "brightness 1.1": decode(encode(ImageEnhance.Brightness(full).enhance(1.1), quality=90)),
        "contrast 0.9": decode(encode(ImageEnhance.Contrast(full).enhance(0.9), quality=90)),
        "contrast 1.1": decode(encode(ImageEnhance.Contrast(full).enhance(1.1), quality=90)),
        "saturation 0.8": decode(encode(ImageEnhance.Color(full).enhance(0.8), quality=90)),
        "saturation 1.2": decode(encode(ImageEnhance.Color(full).enhance(1.2), quality=90)),
        "gamma 0.9": decode(encode(gamma(full, 0.9), quality=90)),
        "resize 1/4 + brightness 1.05 + q60": decode(
            encode(ImageEnhance.Brightness(resized(full, 0.25)).enhance(1.05), quality=60)
        ),
    }
    for q in (90, 70, 50, 30):
        out[f"jpeg q{q}"] = decode(encode(full, quality=q))
    for factor, label in ((0.5, "1/2"), (0.25, "1/4"), (0.125, "1/8"), (1.5, "x1.5")):
        out[f"resize {label} q85"] = decode(encode(resized(full, factor), quality=85))
    return out


def crops(source: Image.Image) -> list[list[Image.Image]]:
    """Groups of non-overlapping crops of one photo (decoded from JPEG q90)."""
    w, h = source.size

    def cut(boxes: list[tuple[int, int, int, int]]) -> list[Image.Image]:
        return [decode(encode(source.crop(box), quality=90)) for box in boxes]

    return [
        cut([(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]),
        cut([(0, 0, w // 2, h), (w // 2, 0, w, h)]),
        cut([(0, 0, w, h // 2), (0, h // 2, w, h)]),
        cut([(0, 0, w // 3, h), (w // 3, 0, 2 * w // 3, h), (2 * w // 3, 0, w, h)]),
    ]


def as_int(hasher: Callable[[Image.Image], imagehash.ImageHash]) -> Callable[[Image.Image], int]:
    def run(image: Image.Image) -> int:
        bits = hasher(image).hash.ravel()
        return int.from_bytes(np.packbits(bits).tobytes(), "big")

    return run


HASHES: dict[str, Callable[[Image.Image], int]] = {
    "iclora": perceptual_hash,  # phash of hash_proxy(image): what the build uses
    "phash": as_int(imagehash.phash),
    "dhash": as_int(imagehash.dhash),
    "ahash": as_int(imagehash.average_hash),
    "whash": as_int(imagehash.whash),
}


def summary(values: np.ndarray) -> str:
    if len(values) == 0:
        return "n=0"
    p = np.percentile(values, [1, 5, 50, 95, 99])
    return (
        f"n={len(values):6d} min {values.min():2d} p1 {p[0]:4.1f} p5 {p[1]:4.1f} p50 {p[2]:4.1f} "
        f"p95 {p[3]:4.1f} p99 {p[4]:4.1f} max {values.max():2d}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help="how many photos (smoke: 4)")
    parser.add_argument("--upscale", type=int, default=UPSCALE, help="source size factor (smoke: 1)")
    args = parser.parse_args()
    started = time.perf_counter()
    photos = load_photos(args.photos, args.upscale)
    print(f"{len(photos)} real photos: " + ", ".join(f"{k} {v.width}x{v.height}" for k, v in photos.items()))
    photo_variants = {name: variants(img) for name, img in photos.items()}
    photo_crops = {name: crops(img) for name, img in photos.items()}
    n_variants = len(next(iter(photo_variants.values())))
    print(f"{n_variants} variants per photo; decoded in {time.perf_counter() - started:.1f} s\n")

    # The module's hash is imagehash.phash (same bit order) of a proxy: how far does the proxy move it?
    moved = np.array([bin(perceptual_hash(im) ^ HASHES["phash"](im)).count("1")
                      for vs in photo_variants.values() for im in vs.values()])
    print(f"proxy vs full-image phash, bits changed per image: {summary(moved)}\n")

    results: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for hash_name, hasher in HASHES.items():
        t0 = time.perf_counter()
        hv = {p: np.array([hasher(im) for im in vs.values()], dtype=np.uint64) for p, vs in photo_variants.items()}
        hc = {
            p: [np.array([hasher(im) for im in group], dtype=np.uint64) for group in groups]
            for p, groups in photo_crops.items()
        }
        elapsed = time.perf_counter() - t0
        pos = np.concatenate(
            [np.bitwise_count(h[:, None] ^ h[None, :])[np.triu_indices(len(h), 1)] for h in hv.values()]
        )
        neg_photos = np.concatenate(
            [np.bitwise_count(hv[a][:, None] ^ hv[b][None, :]).ravel() for a, b in itertools.combinations(hv, 2)]
        )
        neg_crops = np.concatenate(
            [np.bitwise_count(g[:, None] ^ g[None, :])[np.triu_indices(len(g), 1)] for gs in hc.values() for g in gs]
        )
        results[hash_name] = (pos.astype(int), neg_photos.astype(int), neg_crops.astype(int))
        n_images = sum(len(v) for v in hv.values()) + sum(len(g) for gs in hc.values() for g in gs)
        print(f"== {hash_name}  ({elapsed / n_images * 1000:.1f} ms per decoded image)")
        print(f"   positives  (same photo, variants)  {summary(pos.astype(int))}")
        print(f"   negatives  (different photos)      {summary(neg_photos.astype(int))}")
        print(f"   negatives  (non-overlapping crops) {summary(neg_crops.astype(int))}")
        worst = {}
        for p, h in hv.items():
            d = np.bitwise_count(h[:, None] ^ h[None, :])
            i, j = np.unravel_index(np.argmax(d), d.shape)
            names = list(photo_variants[p])
            worst[p] = (int(d[i, j]), names[i], names[j])
        p, (d, a, b) = max(worst.items(), key=lambda kv: kv[1][0])
        print(f"   hardest positive: {p}: '{a}' vs '{b}' distance {d}")

    print("\nerror rates by threshold (missed positives | matched different photos | matched crops)")
    print("  t  " + "  ".join(f"{name:^27s}" for name in HASHES))
    for t in range(0, 25):
        cells = []
        for pos, neg_p, neg_c in results.values():
            cells.append(f"{(pos > t).mean():7.2%} {(neg_p <= t).mean():8.3%} {(neg_c <= t).mean():8.2%}")
        print(f" {t:2d}  " + "  ".join(cells))

    pos, neg_p, neg_c = results["iclora"]
    neg = np.concatenate([neg_p, neg_c])
    t = DEFAULT_MAX_DISTANCE
    full_pos, full_neg_p, full_neg_c = results["phash"]
    print(f"\nfull-image phash: worst positive {full_pos.max()}, closest negative "
          f"{min(full_neg_p.min(), full_neg_c.min())}")
    print(
        f"chosen: phash of the proxy (iclora), DEFAULT_MAX_DISTANCE = {t}\n"
        f"  positives: max {pos.max()}, p99 {np.percentile(pos, 99):.1f}; "
        f"margin below the threshold {t - pos.max()} bits; missed {(pos > t).sum()} of {len(pos)}\n"
        f"  negatives: min {neg.min()} (photos {neg_p.min()}, crops {neg_c.min()}); "
        f"margin above the threshold {neg.min() - t - 1} bits; matched {(neg <= t).sum()} of {len(neg)}"
    )
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
