"""Benchmark: writing the dataset for N composites of about one megapixel.

    python benchmarks/bench_publish.py            # N = 1000 and N/4
    python benchmarks/bench_publish.py --n 200    # quicker

Makes a finished OUT folder with N kept, captioned composites (JPEG, ~1 MP; a handful of
distinct pictures hard-linked under N names, so setup is quick while every row still reads
its own file), then times ``write_dataset`` and a naive baseline on the same OUT, each in a
fresh process so its peak RSS is its own:

- ours: ``iclora_data.publish.write_dataset`` (streamed shards, one row group in memory);
- naive: ``datasets.Dataset.from_dict`` with every image's bytes in memory, then ``to_parquet``.

Run at two sizes, the figures show whether peak memory grows with the number of rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iclora_data.layout import auto_layout  # noqa: E402
from iclora_data.records import CaptionRecord, CompositeRecord, file_stem, save_caption  # noqa: E402
from iclora_data.store import atomic_write_json  # noqa: E402

DISTINCT = 8


def picture(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    arr = np.stack([(np.sin(xx / (17 + 5 * c + seed)) + np.cos(yy / (23 + 3 * c))) * 60 + 128
                    + rng.normal(0, 12, (height, width)) for c in range(3)], -1)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_out(root: Path, n: int) -> Path:
    out = root / f"out-{n}"
    layout = auto_layout(1, 2, panel_aspect=0.75)  # ~1 MP, side by side
    comp = out / "composites"
    comp.mkdir(parents=True)
    bases = []
    for k in range(DISTINCT):
        path = root / f"base-{k}.jpg"
        if not path.exists():
            picture(k, layout.width, layout.height).save(path, quality=90)
        bases.append(path)
    sets: list[dict[str, Any]] = []
    for i in range(n):
        set_id = f"set-{i:06d}"
        stem = file_stem(set_id)
        os.link(bases[i % DISTINCT], comp / f"{stem}.jpg")
        CompositeRecord(set_id=set_id, key=f"k{i}", image=f"{stem}.jpg", rows=layout.rows, cols=layout.cols,
                        width=layout.width, height=layout.height, panel_boxes=[list(b) for b in layout.panel_boxes()],
                        panel_tags=list(layout.panel_tags), prefix="", preset=None, task=None,
                        source_files=[f"{set_id}/1.jpg", f"{set_id}/2.jpg"]).save(comp / f"{stem}.json")
        panels = [f"panel {j} of {set_id}: a person in a red coat on a rainy street" for j in (1, 2)]
        save_caption(out, CaptionRecord(set_id=set_id, key=f"c{i}", composite_key=f"k{i}", status="ok",
                                        summary=f"two views of {set_id}", panels=panels,
                                        caption=f"This two-panel image shows two views of {set_id}; "
                                                f"[IMAGE1] {panels[0]} [IMAGE2] {panels[1]}",
                                        captioner="bench", attempts=1))
        sets.append({"set_id": set_id, "status": "kept", "reason": "", "duplicate_of": None,
                     "files": [f"{set_id}/1.jpg", f"{set_id}/2.jpg"], "warnings": []})
    counts = {"files": 2 * n, "sets": n, "kept": n, "duplicate": 0, "rejected": 0}
    atomic_write_json(out / "report.json", {"version": 1, "counts": counts, "sets": sets, "files": [
        {"path": f, "set_id": s["set_id"], "status": "used", "reason": ""} for s in sets for f in s["files"]]})
    atomic_write_json(out / "build.json", {"version": 1, "source": "bench", "source_kind": "folder", "config": {},
                                           "captioner": "bench", "prompt_version": "v1", "counts": counts})
    return out


def worker(kind: str, out: Path) -> None:
    """Runs in its own process: one write, then its time and peak RSS as JSON."""
    import datasets  # noqa: F401  (imports are not what is measured: both writers need them)
    import huggingface_hub  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    if kind == "ours":
        from iclora_data.publish import write_dataset

        start = time.perf_counter()
        summary = write_dataset(out, max_shard_bytes=100 * 2**20)
        rows, shards = summary.rows, len(summary.shards)
    else:
        from datasets import Dataset

        from iclora_data.publish import dataset_features, load_finished_build, make_row

        start = time.perf_counter()
        build = load_finished_build(out)
        rows_list = [make_row(out, rec, build.captions[rec.set_id]) for rec in build.kept]
        columns = {k: [r[k] for r in rows_list] for k in rows_list[0]}
        ds = Dataset.from_dict(columns, features=dataset_features())
        (out / "naive").mkdir(exist_ok=True)
        ds.to_parquet(str(out / "naive" / "train.parquet"))
        rows, shards = len(ds), 1
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "rows": rows, "shards": shards}))


def run_worker(kind: str, out: Path) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out / "hf-cache")}
    res = subprocess.run([sys.executable, __file__, "--worker", kind, str(out)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="composites at the larger size (the smaller is n/4)")
    parser.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("out", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.out))
        return
    sizes = [max(1, args.n // 4), args.n]
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        for n in sizes:
            start = time.perf_counter()
            out = make_out(Path(tmp), n)
            mb = sum(p.stat().st_size for p in (out / "composites").glob("*.jpg")) / 2**20
            print(f"setup: {n} composites of ~1 MP ({mb:.0f} MiB of JPEG) in {time.perf_counter() - start:.1f}s",
                  flush=True)
            for kind in ("ours", "naive"):
                results[(kind, n)] = run_worker(kind, out)
                r = results[(kind, n)]
                print(f"  {kind:5s} n={n:5d}: {r['seconds']:6.2f} s  peak RSS {r['peak_rss_mib']:7.1f} MiB  "
                      f"({r['shards']} shard(s))", flush=True)
    print()
    print(f"{'':8s}" + "".join(f"{f'n={n}':>26s}" for n in sizes) + f"{'RSS growth':>14s}")
    for kind in ("ours", "naive"):
        cells = "".join(f"{results[(kind, n)]['seconds']:9.2f} s {results[(kind, n)]['peak_rss_mib']:8.1f} MiB"
                        for n in sizes)
        growth = results[(kind, sizes[1])]["peak_rss_mib"] / results[(kind, sizes[0])]["peak_rss_mib"]
        print(f"{kind:8s}{cells}{growth:13.2f}x")
    naive, ours = results[("naive", sizes[1])], results[("ours", sizes[1])]
    print(f"\nat n={sizes[1]}: naive/ours time {naive['seconds'] / ours['seconds']:.2f}x, "
          f"naive/ours peak RSS {naive['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x")
    print("(shared 2-core machine: timings are noisy; compare within one run)")


if __name__ == "__main__":
    main()
