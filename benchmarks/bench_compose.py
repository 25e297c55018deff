"""Compose throughput: ``iclora build SRC --out OUT --until compose`` against a naive baseline.

    python benchmarks/bench_compose.py [--sets 120] [--megapixels 4] [--skip-pipeline]

Data: ``--sets`` large photo sets (3 or 4 real photographs of a few megapixels each, JPEG q90,
made by ``benchmarks/_photos.py`` and cached). Three timings on the same data, in one run:

1. baseline -- what a script written without care does, one panel at a time: full decode,
   ``ImageOps.exif_transpose``, ``convert("RGB")``, Lanczos crop-to-fill (``ImageOps.fit``),
   paste into the grid, save the composite as JPEG q95. One process, one thread.
2. pipeline, first build -- the real CLI as a subprocess on an empty OUT (ingest, validate,
   hash, dedup, compose, report), whole-process time (Python + Prefect start-up included)
   and the flow's own time from ``OUT/build.json``.
3. pipeline, second build on the unchanged SOURCE into the same OUT (should do no decoding).

The aim: the first build takes at most half the baseline's time. Without ``PREFECT_API_URL``
each ``iclora build`` process starts (and stops) Prefect's temporary server, a fixed cost of
10-30 s on a small machine; export ``PREFECT_API_URL`` of a running ``prefect server start`` to
see the build without it. Timings are wall-clock on a shared machine; run it twice if the
figures matter. ``build.json`` times have one-second resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from natsort import natsorted
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _photos import PhotoSpec, photo_sets, source_stats  # noqa: E402

from iclora_data.layout import choose_layout  # noqa: E402
from iclora_data.records import file_stem  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


# ---------------------------------------------------------------- baseline

def naive_compose(set_dir: Path, out_path: Path) -> tuple[int, int]:
    """Compose one set the naive way; returns the composite's size.

    Geometry comes from ``iclora_data.layout`` so that both sides make the same grid: only the
    image work differs."""
    files = natsorted((p for p in set_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                      key=lambda p: p.name)
    images = []
    for path in files:
        with Image.open(path) as file:
            file.load()  # full-size decode
            images.append(ImageOps.exif_transpose(file).convert("RGB"))
    layout = choose_layout(len(images), [im.size for im in images])
    canvas = Image.new("RGB", (layout.width, layout.height))
    for image, box in zip(images, layout.panel_boxes(), strict=True):
        size = (box[2] - box[0], box[3] - box[1])
        canvas.paste(ImageOps.fit(image, size, Image.Resampling.LANCZOS), box[:2])
    canvas.save(out_path, "JPEG", quality=95)
    return canvas.size


def run_baseline(source: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    sets = natsorted((p for p in source.iterdir() if p.is_dir()), key=lambda p: p.name)
    start = time.perf_counter()
    for set_dir in sets:
        naive_compose(set_dir, out / f"{file_stem(set_dir.name)}.jpg")
    return time.perf_counter() - start


# ---------------------------------------------------------------- pipeline

@dataclass
class BuildTiming:
    wall_s: float  # the whole process: interpreter, imports, Prefect start-up, the flow
    flow_s: float | None  # started_at -> finished_at from OUT/build.json
    counts: dict
    output_tail: str


def iclora_command() -> list[str]:
    exe = shutil.which("iclora") or str(Path(sys.executable).with_name("iclora"))
    if not Path(exe).exists():
        raise RuntimeError("the iclora console script is not installed in this environment")
    return [exe]


def run_build(source: Path, out: Path, extra: list[str]) -> BuildTiming:
    """``iclora build SOURCE --out OUT --until compose`` as a subprocess, timed."""
    cmd = [*iclora_command(), "build", str(source), "--out", str(out), "--until", "compose", *extra]
    env = {**os.environ, "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    tail = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    flow_s = None
    manifest = out / "build.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        try:
            flow_s = (datetime.fromisoformat(data["finished_at"])
                      - datetime.fromisoformat(data["started_at"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            flow_s = None
    counts = json.loads((out / "report.json").read_text())["counts"]
    return BuildTiming(wall, flow_s, counts, tail)


def psnr(a: Path, b: Path) -> float | None:
    """PSNR of two composites of the same size (None when sizes differ)."""
    with Image.open(a) as x, Image.open(b) as y:
        if x.size != y.size:
            return None
        d = np.asarray(x.convert("RGB"), dtype=np.float64) - np.asarray(y.convert("RGB"), dtype=np.float64)
    mse = float((d * d).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_pipeline(source: Path, work: Path, n_sets: int, baseline_s: float | None, baseline_out: Path | None,
                 extra: list[str]) -> None:
    """Time the first and the second build and print them against the baseline."""
    out = work / "pipeline-out"
    if out.exists():
        shutil.rmtree(out)
    first = run_build(source, out, extra)
    second = run_build(source, out, extra)
    composites = sorted((out / "composites").glob("*.jpg"))
    print(f"\npipeline: iclora build --until compose {' '.join(extra)}".rstrip())
    print(f"  counts: {first.counts}")
    if first.counts.get("kept") != n_sets or len(composites) != n_sets:
        print(f"  WARNING: expected {n_sets} kept sets and composites, got {first.counts.get('kept')} "
              f"kept and {len(composites)} composites")
    for label, t in (("first build ", first), ("second build", second)):
        flow = (f", flow {t.flow_s:7.2f} s ({n_sets / t.flow_s:6.2f} sets/s, "
                f"start-up and exit {t.wall_s - t.flow_s:5.2f} s)") if t.flow_s else ""
        print(f"  {label}: whole process {t.wall_s:7.2f} s ({n_sets / t.wall_s:6.2f} sets/s){flow}")
    print(f"  second / first build (whole process): {second.wall_s / first.wall_s:.3f}")
    if first.flow_s and second.flow_s:
        print(f"  second / first build (flow only):     {second.flow_s / first.flow_s:.3f}")
    if baseline_s:
        ratio = first.wall_s / baseline_s
        print(f"  first build / baseline (whole process): {ratio:.3f}  "
              f"({'meets' if ratio <= 0.5 else 'MISSES'} the aim of <= 0.5)")
        if first.flow_s:
            print(f"  first build / baseline (flow only):     {first.flow_s / baseline_s:.3f}")
    if baseline_out is not None:
        scores = [s for c in composites[:10] if (s := psnr(c, baseline_out / c.name)) is not None]
        if scores:
            print(f"  composite PSNR vs baseline ({len(scores)} sets): min {min(scores):.1f} dB, "
                  f"mean {sum(scores) / len(scores):.1f} dB")
        else:
            print("  composite PSNR vs baseline: no composites of the same name and size to compare")


def main() -> None:
    parser = argparse.ArgumentParser(description="compose throughput: iclora build vs a naive baseline")
    parser.add_argument("--sets", type=int, default=120)
    parser.add_argument("--megapixels", type=float, default=4.0, help="size of each source photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where outputs go (default: a temp folder)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--build-arg", action="append", default=[],
                        help="extra argument for iclora build, e.g. --build-arg=--workers=2 (repeatable)")
    args = parser.parse_args()

    spec = PhotoSpec(sets=args.sets, megapixels=args.megapixels, seed=args.seed)
    start = time.perf_counter()
    source = photo_sets(spec)
    n_sets, n_panels, n_bytes = source_stats(source)
    print(f"data: {source}  ({time.perf_counter() - start:.1f} s to make or find)")
    print(f"  {n_sets} sets, {n_panels} panels, {n_bytes / 1e6:.0f} MB of JPEG, "
          f"{spec.megapixels:g} MP per panel, cpus={os.cpu_count()}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="iclora-bench-compose-"))
    work.mkdir(parents=True, exist_ok=True)
    baseline_s = None
    baseline_out = None
    if not args.skip_baseline:
        baseline_out = work / "baseline-out"
        if baseline_out.exists():
            shutil.rmtree(baseline_out)
        baseline_s = run_baseline(source, baseline_out)
        print(f"\nbaseline (naive, 1 thread): {baseline_s:7.2f} s  {n_sets / baseline_s:6.2f} sets/s  "
              f"{1000 * baseline_s / n_panels:6.1f} ms/panel")
    if not args.skip_pipeline:
        try:
            run_pipeline(source, work, n_sets, baseline_s, baseline_out, args.build_arg)
        except RuntimeError as exc:
            print(f"\npipeline: not run: {exc}")
    print(f"\noutputs under {work}")


if __name__ == "__main__":
    main()
