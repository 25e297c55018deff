"""Compose throughput: the whole ``iclora build --until compose`` CLI process against a naive loop.

    python benchmarks/bench_compose.py                      # both scenarios, full size (the lead)
    python benchmarks/bench_compose.py --scenario web --sets 6   # a smoke run

Scenarios (real photographs from ``benchmarks/_photos.py``, cached):

- ``web``: 400 sets of 2-3 panels of 1.5 MP JPEGs (what web-gathered sets are);
- ``large``: 100 sets of 3-4 panels of 4.5 MP JPEGs.

Timings on the same sets and geometry, in one run, each printed with its ratio to the baseline:

1. baseline -- the naive Pillow loop, one panel at a time in one thread: full decode,
   ``ImageOps.exif_transpose``, ``convert("RGB")``, Lanczos crop-to-fill (``ImageOps.fit``), paste
   into the grid (geometry from ``iclora_data.layout``), save as JPEG q95.
2. ``iclora build --until compose --runner local``: the whole CLI process, cold (new process,
   empty OUT), no Prefect. Aim: at most 0.5x the baseline.
3. the same with the default Prefect runner (temporary server, unless ``PREFECT_API_URL`` is set),
   and its fixed start-up cost: a 1-set build with Prefect minus the same with ``--runner local``.
4. a second ``--runner local`` build on the unchanged SOURCE into the same OUT.

Composite PSNR against the baseline's composites is printed as a quality check. Wall-clock on a
shared machine: run it alone, twice if the figures matter.
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
from pathlib import Path

import numpy as np
from natsort import natsorted
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _photos import PhotoSpec, photo_sets, source_stats  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

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

SCENARIOS = {
    "web": PhotoSpec(sets=400, panels=(2, 3), megapixels=1.5),
    "large": PhotoSpec(sets=100, panels=(3, 4), megapixels=4.5),
}


@dataclass
class BuildTiming:
    wall_s: float  # the whole process: interpreter, imports, Prefect start-up if any, the build
    counts: dict
    output_tail: str


def iclora_command() -> list[str]:
    exe = shutil.which("iclora") or str(Path(sys.executable).with_name("iclora"))
    if Path(exe).exists():
        return [exe]
    return [sys.executable, "-m", "iclora_data.cli"]


def cli_build(source: Path, out: Path, extra: list[str]) -> BuildTiming:
    """``iclora build SOURCE --out OUT --until compose EXTRA`` as a subprocess, timed."""
    cmd = [*iclora_command(), "build", str(source), "--out", str(out), "--until", "compose", *extra]
    env = {**os.environ, "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    tail = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    counts = json.loads((out / "report.json").read_text())["counts"]
    return BuildTiming(wall, counts, tail)


def psnr(a: Path, b: Path) -> float | None:
    """PSNR of two composites of the same size (None when sizes differ)."""
    with Image.open(a) as x, Image.open(b) as y:
        if x.size != y.size:
            return None
        d = np.asarray(x.convert("RGB"), dtype=np.float64) - np.asarray(y.convert("RGB"), dtype=np.float64)
    mse = float((d * d).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def line(label: str, seconds: float, n_sets: int, baseline_s: float) -> str:
    return (f"  {label:<44s} {seconds:8.2f} s  {n_sets / seconds:7.2f} sets/s  "
            f"{seconds / baseline_s:6.3f}x baseline")


def run_scenario(name: str, spec: PhotoSpec, work: Path, workers: int | None, skip_prefect: bool) -> None:
    start = time.perf_counter()
    source = photo_sets(spec)
    n_sets, n_panels, n_bytes = source_stats(source)
    print(f"\n== {name}: {source}  ({time.perf_counter() - start:.1f} s to make or find)")
    print(f"  {n_sets} sets, {n_panels} panels, {n_bytes / 1e6:.0f} MB of JPEG, {spec.megapixels:g} MP per panel, "
          f"cpus={os.cpu_count()}")
    extra = ["--workers", str(workers)] if workers else []

    baseline_out = fresh(work / f"{name}-baseline")
    baseline_s = run_baseline(source, baseline_out)
    print(line("baseline (naive loop, 1 thread)", baseline_s, n_sets, baseline_s)
          + f"  {1000 * baseline_s / n_panels:.1f} ms/panel")

    local_out = fresh(work / f"{name}-local")
    local = cli_build(source, local_out, ["--runner", "local", *extra])
    print(line("iclora build --runner local (cold process)", local.wall_s, n_sets, baseline_s)
          + f"  [{'meets' if local.wall_s <= 0.5 * baseline_s else 'MISSES'} the aim <= 0.5x]")
    if local.counts.get("kept") != n_sets:
        print(f"  WARNING: expected {n_sets} kept sets, got {local.counts}")
    again = cli_build(source, local_out, ["--runner", "local", *extra])
    print(line("  second build, unchanged SOURCE", again.wall_s, n_sets, baseline_s)
          + f"  {again.wall_s / local.wall_s:.3f}x the first")

    if not skip_prefect:
        prefect = cli_build(source, fresh(work / f"{name}-prefect"), extra)
        print(line("iclora build (default Prefect runner)", prefect.wall_s, n_sets, baseline_s)
              + f"  {prefect.wall_s / local.wall_s:.3f}x local")
        one = fresh(work / "one-set-source")
        shutil.copytree(next(p for p in sorted(source.iterdir()) if p.is_dir()), one / "set-0000")
        tiny_local = cli_build(one, fresh(work / "one-local"), ["--runner", "local"])
        tiny_prefect = cli_build(one, fresh(work / "one-prefect"), [])
        startup = tiny_prefect.wall_s - tiny_local.wall_s
        where = "a running server (PREFECT_API_URL)" if os.environ.get("PREFECT_API_URL") else "temporary server"
        print(f"  Prefect's fixed start-up, {where}: {startup:.2f} s (1-set build: {tiny_prefect.wall_s:.2f} s "
              f"with Prefect, {tiny_local.wall_s:.2f} s local)  = {startup / baseline_s:.3f}x baseline")

    composites = sorted((local_out / "composites").glob("*.jpg"))
    scores = [s for c in composites[:20] if (s := psnr(c, baseline_out / c.name)) is not None]
    if scores:
        print(f"  composite PSNR vs baseline ({len(scores)} sets): min {min(scores):.1f} dB, "
              f"mean {sum(scores) / len(scores):.1f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description="compose throughput: the iclora CLI vs a naive Pillow loop")
    parser.add_argument("--scenario", choices=["web", "large", "both"], default="both")
    parser.add_argument("--sets", type=int, default=None, help="override the scenario's set count (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="--workers for iclora build (default: its own)")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temp folder)")
    parser.add_argument("--skip-prefect", action="store_true", help="only the local runner")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="iclora-bench-compose-"))
    work.mkdir(parents=True, exist_ok=True)
    names = ["web", "large"] if args.scenario == "both" else [args.scenario]
    for name in names:
        spec = SCENARIOS[name]
        spec = PhotoSpec(sets=args.sets or spec.sets, panels=spec.panels, megapixels=spec.megapixels,
                         seed=args.seed)
        run_scenario(name, spec, work, args.workers, args.skip_prefect)
    print(f"\noutputs under {work}")


if __name__ == "__main__":
    main()
