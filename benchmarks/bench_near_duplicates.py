"""All near-duplicate pairs among N random 64-bit hashes: ``find_near_duplicates`` vs brute force.

Plants near-duplicates at every distance 0..max_distance (and a few just outside it), times the
search on all N hashes with the process's peak RSS (``resource.getrusage``: faiss or numpy
allocations alike), then checks recall and precision against a chunked numpy ``bitwise_count``
brute force on a subset, and the speed ratio on that same subset.

    python benchmarks/bench_near_duplicates.py            # N = 1,000,000, subset 100,000
    python benchmarks/bench_near_duplicates.py --n 200000 --subset 20000
    python benchmarks/bench_near_duplicates.py --faiss    # also time faiss IndexBinaryMultiHash
    python benchmarks/bench_near_duplicates.py --n 0 --sets 100000  # only set-level dedup_sets
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from iclora_data.dedup import _brute_force_codes, _choose_plan, deduplicate_sets, find_near_duplicates
from iclora_data.records import PanelRecord, PreparedSet


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def planted_hashes(n: int, max_distance: int, seed: int = 0) -> np.ndarray:
    """Random hashes; 1% of them are copies of another one with 0..max_distance+2 bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    n_planted = n // 100
    sources = rng.integers(0, n, n_planted)
    targets = rng.integers(0, n, n_planted)
    for src, dst in zip(sources, targets, strict=True):
        flips = rng.choice(64, size=int(rng.integers(0, max_distance + 3)), replace=False)
        hashes[dst] = hashes[src] ^ np.uint64(sum(1 << int(b) for b in flips))
    return hashes


def brute_force(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    codes = np.unique(_brute_force_codes(hashes, max_distance))
    n = len(hashes)
    return np.stack([codes // n, codes % n], axis=1)


def faiss_pairs(hashes: np.ndarray, max_distance: int) -> int:
    """Self range-search with faiss' multi-index binary hash (radius 8: 3 x 20-bit chunks, 2 flips)."""
    import faiss

    codes = hashes.view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryMultiHash(64, 3, 20)
    index.nflip = max_distance // 3
    index.add(codes)
    pairs = 0
    for start in range(0, len(codes), 50_000):
        lims, _, labels = index.range_search(codes[start : start + 50_000], max_distance + 1)  # radius is strict
        pairs += int(len(labels))
    return (pairs - len(codes)) // 2


def bench_sets(n_sets: int) -> None:
    """``deduplicate_sets`` on 3-panel sets: 5% shuffled near-copies, 2% sharing one panel,
    1% with a near-duplicate panel of their own."""
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**64, (n_sets, 3), dtype=np.uint64)
    for k in range(0, n_sets, 20):
        noise = np.uint64(1) << rng.integers(0, 64, 3).astype(np.uint64)
        hashes[k] = rng.permutation(hashes[rng.integers(0, n_sets)]) ^ noise
    for k in range(7, n_sets, 50):
        hashes[k, 0] = hashes[rng.integers(0, n_sets), 1]
    for k in range(11, n_sets, 100):
        hashes[k, 2] = hashes[k, 0] ^ np.uint64(1)
    sets = [
        PreparedSet(
            f"s{k:07d}",
            [f"s{k}/{i}.jpg" for i in range(3)],
            [PanelRecord(f"s{k}/{i}.jpg", f"{k}-{i}", int(h), 512, 512) for i, h in enumerate(row)],
        )
        for k, row in enumerate(hashes.tolist())
    ]
    t0 = time.perf_counter()
    decisions = deduplicate_sets(sets)
    elapsed = time.perf_counter() - t0
    statuses = {s: sum(d.status == s for d in decisions.values()) for s in ("kept", "duplicate", "rejected")}
    warned = sum(bool(d.warnings) for d in decisions.values())
    print(
        f"deduplicate_sets: {n_sets:,} sets x 3 panels in {elapsed:.2f} s "
        f"({n_sets / elapsed:,.0f} sets/s); {statuses}, {warned:,} with warnings"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=100_000, help="size checked against brute force")
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--faiss", action="store_true", help="also time faiss on all N")
    parser.add_argument("--sets", type=int, default=0, help="also time deduplicate_sets on this many sets")
    args = parser.parse_args()
    r = args.max_distance
    if args.sets:
        bench_sets(args.sets)
    if args.n < 2:
        return

    hashes = planted_hashes(args.n, r)
    print(f"N = {args.n:,} hashes, max_distance {r}, plan {_choose_plan(args.n, r)}")
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    pairs = find_near_duplicates(hashes, r)
    full_s = time.perf_counter() - t0
    print(
        f"find_near_duplicates on N: {full_s:.2f} s, {len(pairs):,} pairs, "
        f"peak RSS {peak_rss_mb():.0f} MB (before the call {rss_before:.0f} MB)"
    )

    subset = hashes[: args.subset]
    t0 = time.perf_counter()
    sub_pairs = find_near_duplicates(subset, r)
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    expected = brute_force(subset, r)
    brute_s = time.perf_counter() - t0
    found = {tuple(p) for p in sub_pairs.tolist()}
    truth = {tuple(p) for p in expected.tolist()}
    recall = len(found & truth) / len(truth) if truth else 1.0
    precision = len(found & truth) / len(found) if found else 1.0
    print(
        f"subset {len(subset):,}: index {index_s:.2f} s, brute force {brute_s:.2f} s, "
        f"speed-up x{brute_s / index_s:.1f}; {len(truth):,} true pairs, recall {recall:.4%}, "
        f"precision {precision:.4%}, identical output {np.array_equal(sub_pairs, expected)}"
    )
    print(
        f"brute force extrapolated to N: {brute_s * (args.n / len(subset)) ** 2:.0f} s "
        f"(x{brute_s * (args.n / len(subset)) ** 2 / full_s:.0f} the index)"
    )

    if args.faiss:
        t0 = time.perf_counter()
        n_faiss = faiss_pairs(hashes, r)
        faiss_s = time.perf_counter() - t0
        print(
            f"faiss IndexBinaryMultiHash(64, 3, 20) nflip {r // 3} on N: {faiss_s:.2f} s, "
            f"{n_faiss:,} pairs (x{faiss_s / full_s:.2f} the time of find_near_duplicates)"
        )
    print("(2 shared cores, other jobs running: timings are noisy)")


if __name__ == "__main__":
    main()
