"""Flow overhead and incremental runs (``python benchmarks/bench_flows.py [--sets 200] [--grow 1000] [--ray]``).

1. Orchestration overhead: the ``build_dataset`` flow (``--until compose``) against calling the same
   library functions directly (ingest, compose_set on a 2-thread pool, dedup, place, report, gallery) on
   the same sets; cold (fresh OUT: everything decoded) and warm (second run: everything in the store).
2. Incremental: a full build of ``--grow`` sets, then 5% new sets added: time of the incremental run as a
   fraction of the full build.
3. ``--ray``: the same cold build with the Ray task runner (a local instance, started by the run) vs threads.

Sets are two 288x256 JPEG panels (small images: decode is cheap, so the per-set fixed costs weigh more
than they would on camera-size photos); composites are the default ~1 MP grid. Figures are from one
noisy machine shared with other jobs; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _flows_helpers import many_sets  # noqa: E402

CONFIG = {"until": "compose"}


def library_build(source: Path, out: Path, workers: int = 2) -> int:
    """The flow's stages as plain library calls: what the flow orchestrates."""
    from iclora_data.compose import compose_set, place_composites
    from iclora_data.config import BuildConfig
    from iclora_data.dedup import DEFAULT_MAX_DISTANCE, deduplicate_sets
    from iclora_data.gallery import write_gallery
    from iclora_data.ingest import ingest
    from iclora_data.report import build_report, write_report
    from iclora_data.store import RunStore

    cfg = BuildConfig.model_validate(CONFIG)
    store = RunStore(out)
    with store.lock():
        ingested = ingest(source)
        with ThreadPoolExecutor(workers) as pool:
            prepared = list(pool.map(lambda s: compose_set(s, cfg.compose, store), ingested.sets))
        decisions = deduplicate_sets([p for p in prepared if not p.rejection], DEFAULT_MAX_DISTANCE)
        place_composites(out, store, prepared, decisions, cfg.compose)
        write_report(out, build_report(ingested, prepared, decisions))
        write_gallery(out)
    return sum(p.decoded for p in prepared)


def flow_build(source: Path, out: Path, runner: str = "threads") -> int:
    from flows.build_dataset import build_dataset
    from flows.runners import make_task_runner

    flow = build_dataset.with_options(task_runner=make_task_runner(runner, workers=2))
    return int(flow(str(source), str(out), CONFIG)["decoded_images"])


def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    decoded = fn(*args)
    return time.perf_counter() - t0, decoded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--grow", type=int, default=1000, help="sets in the incremental benchmark (0: skip)")
    parser.add_argument("--ray", action="store_true", help="also time the Ray task runner")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    try:
        source = many_sets(root / "SOURCE", args.sets)
        flow_build(many_sets(root / "WARMUP", 2), root / "warmup")  # starts the local Prefect server once
        lib_cold, lib_decoded = timed(library_build, source, root / "lib")
        lib_warm, _ = timed(library_build, source, root / "lib")
        flow_cold, flow_decoded = timed(flow_build, source, root / "flow")
        flow_warm, warm_decoded = timed(flow_build, source, root / "flow")
        assert lib_decoded == flow_decoded == 2 * args.sets and warm_decoded == 0
        print(f"orchestration overhead, {args.sets} sets of 2 panels (until compose):")
        for label, lib, fl in (("cold", lib_cold, flow_cold), ("warm", lib_warm, flow_warm)):
            per_set = (fl - lib) / args.sets * 1000
            print(f"  {label}: library {lib:6.2f} s, flow {fl:6.2f} s, flow/library {fl / lib:5.2f}x, "
                  f"overhead {100 * (fl - lib) / lib:+5.1f}% ({per_set:+.1f} ms per set)")

        if args.ray:
            ray_cold, ray_decoded = timed(flow_build, source, root / "ray", "ray")
            assert ray_decoded == 2 * args.sets
            print(f"ray runner (local instance, started in the run): {ray_cold:6.2f} s, "
                  f"ray/threads {ray_cold / flow_cold:5.2f}x")

        if args.grow:
            grow = many_sets(root / "GROW", args.grow, seed=90_000)
            full, decoded = timed(flow_build, grow, root / "grow")
            added = max(1, args.grow // 20)
            many_sets(grow, added, start=args.grow, seed=90_000)
            incremental, new_decoded = timed(flow_build, grow, root / "grow")
            assert decoded == 2 * args.grow and new_decoded == 2 * added
            print(f"incremental: full build of {args.grow} sets {full:6.2f} s; +{added} sets (5%) "
                  f"{incremental:6.2f} s = {100 * incremental / full:4.1f}% of the full build")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
