"""Deduplication: perceptual hash on real photos, exact near-duplicate search, set-level rules."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from iclora_data.dedup import (
    DEFAULT_MAX_DISTANCE,
    _choose_plan,
    _multi_index_codes,
    _plan_for,
    deduplicate_sets,
    find_near_duplicates,
    hamming,
    perceptual_hash,
)
from iclora_data.records import PanelRecord, PreparedSet, to_dict

# ---------------------------------------------------------------- find_near_duplicates


def brute_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= max_distance, 1))
    return np.stack([i, j], axis=1).astype(np.int64)


def flip(value: int, bits: list[int]) -> int:
    for b in bits:
        value ^= 1 << b
    return value


def planted(n: int, max_distance: int, seed: int) -> np.ndarray:
    """Random hashes where a third are copies of others at distance 0 .. max_distance + 2,
    so pairs lie on both sides of the threshold, including exactly on it."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    for k in range(n // 3):
        distance = k % (max_distance + 3)
        bits = rng.choice(64, size=min(distance, 64), replace=False).tolist()
        hashes[n // 3 + k] = np.uint64(flip(int(hashes[k]), bits))
    return hashes


@pytest.mark.parametrize("max_distance", [0, 1, 3, 7, 8, 9, 11])
def test_matches_brute_force_on_planted_pairs(max_distance: int) -> None:
    hashes = planted(3000, max_distance, seed=max_distance)
    assert _choose_plan(len(hashes), max_distance) is not None  # the indexed path is exercised
    expected = brute_pairs(hashes, max_distance)
    got = find_near_duplicates(hashes, max_distance)
    assert got.dtype == np.int64 and got.shape[1] == 2
    np.testing.assert_array_equal(got, expected)
    # the threshold is inclusive: some found pairs lie exactly on it, none beyond
    distances = np.bitwise_count(hashes[got[:, 0]] ^ hashes[got[:, 1]])
    assert distances.max() == max_distance


@pytest.mark.parametrize("chunks", [3, 4, 6])
def test_every_chunking_is_exact(chunks: int) -> None:
    # The plan used for a million hashes at distance 8 (3 chunks, 2 flips each) and others,
    # forced onto data small enough to check by brute force.
    hashes = planted(2000, 8, seed=chunks)
    codes = np.unique(_multi_index_codes(hashes, 8, _plan_for(chunks, 8)))
    got = np.stack([codes // len(hashes), codes % len(hashes)], axis=1)
    np.testing.assert_array_equal(got, brute_pairs(hashes, 8))


def test_large_distance_takes_brute_force_path_and_is_exact() -> None:
    hashes = planted(1500, 30, seed=3)
    assert _choose_plan(len(hashes), 30) is None
    np.testing.assert_array_equal(find_near_duplicates(hashes, 30), brute_pairs(hashes, 30))


def test_clustered_hashes_with_skewed_buckets() -> None:
    # Real perceptual hashes cluster; many items share chunk values, so buckets are uneven.
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 2**64, 20, dtype=np.uint64)
    noise = np.zeros(20_000, dtype=np.uint64)
    for _ in range(6):  # up to 6 random bit flips each
        noise |= np.uint64(1) << rng.integers(0, 64, 20_000).astype(np.uint64)
    hashes = centres[rng.integers(0, 20, 20_000)] ^ noise
    subset = hashes[:4000]
    np.testing.assert_array_equal(find_near_duplicates(subset, 8), brute_pairs(subset, 8))
    pairs = find_near_duplicates(hashes, 3)
    assert len(pairs) > 0
    assert (np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= 3).all()
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs, axis=0)) == len(pairs)


def test_output_is_unique_and_sorted() -> None:
    hashes = planted(5000, 8, seed=11)
    pairs = find_near_duplicates(hashes, 8)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(pairs)))
    assert len(np.unique(pairs, axis=0)) == len(pairs)


def test_edge_cases() -> None:
    empty = find_near_duplicates(np.array([], dtype=np.uint64), 8)
    assert empty.shape == (0, 2) and empty.dtype == np.int64
    assert find_near_duplicates(np.array([5], dtype=np.uint64), 64).shape == (0, 2)
    same = np.full(40, 0xDEADBEEF, dtype=np.uint64)
    for r in (0, 8):
        np.testing.assert_array_equal(find_near_duplicates(same, r), brute_pairs(same, r))
        assert len(find_near_duplicates(same, r)) == 40 * 39 // 2
    far = np.array([0, 2**64 - 1, 0x5555555555555555], dtype=np.uint64)
    assert len(find_near_duplicates(far, 63)) == 2  # 0 ~ 0x55.. and ff.. ~ 0x55.. are 32 apart
    assert len(find_near_duplicates(far, 64)) == 3
    assert len(find_near_duplicates(far, 1000)) == 3  # anything beyond 64 means every pair
    assert len(find_near_duplicates(far, np.int64(32))) == 2


@pytest.mark.parametrize(
    ("hashes", "max_distance", "message"),
    [
        ([1, 2, 3], 8, "numpy array"),
        (np.array([1, 2], dtype=np.int64), 8, "dtype uint64"),
        (np.zeros((2, 2), dtype=np.uint64), 8, "one-dimensional"),
        (np.zeros(3, dtype=np.uint64), -1, ">= 0"),
        (np.zeros(3, dtype=np.uint64), 1.5, "integer"),
        (np.zeros(3, dtype=np.uint64), True, "integer"),
    ],
)
def test_bad_input_is_a_clear_value_error(hashes: object, max_distance: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        find_near_duplicates(hashes, max_distance)  # type: ignore[arg-type]


# ---------------------------------------------------------------- perceptual_hash on real photos


def photo(name: str) -> Image.Image:
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)  # a "big" source


def jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode(data: bytes, scale: int = 1) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return image.convert("RGB")


def test_copies_of_a_real_photo_match_and_different_photos_do_not() -> None:
    source = jpeg(photo("astronaut"))
    full = decode(source)
    reference = perceptual_hash(full)
    assert 0 <= reference < 2**64
    assert perceptual_hash(decode(source)) == reference  # deterministic
    png = io.BytesIO()
    full.save(png, "PNG")
    copies = {
        "draft 1/2": decode(source, 2),
        "draft 1/4": decode(source, 4),
        "draft 1/8": decode(source, 8),
        "jpeg q40": decode(jpeg(full, 40)),
        "resize 1/8": decode(jpeg(full.resize((full.width // 8, full.height // 8), Image.Resampling.LANCZOS), 85)),
        "resize x1.5": decode(jpeg(full.resize((full.width * 3 // 2, full.height * 3 // 2), Image.Resampling.LANCZOS))),
        "png": Image.open(io.BytesIO(png.getvalue())).convert("RGB"),
    }
    assert decode(source, 8).width == full.width // 8  # the draft really scaled
    for label, image in copies.items():
        assert hamming(perceptual_hash(image), reference) <= DEFAULT_MAX_DISTANCE, label
    for other in ("coffee", "camera", "rocket"):
        assert hamming(perceptual_hash(decode(jpeg(photo(other)))), reference) > 2 * DEFAULT_MAX_DISTANCE, other


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "rocket", "chelsea"])
def test_phash_bits_are_imagehashs_and_the_proxy_moves_them_little(name: str) -> None:
    import imagehash

    from iclora_data.dedup import hash_proxy, phash_bits

    full = decode(jpeg(photo(name)))
    for image in (full, full.reduce(3), hash_proxy(full)):
        assert (phash_bits(image) == imagehash.phash(image).hash).all()  # the library is the oracle
    assert min(hash_proxy(full).size) <= min(full.size) // 4  # the proxy is really small
    reference = int.from_bytes(np.packbits(imagehash.phash(full).hash.ravel()).tobytes(), "big")
    assert hamming(perceptual_hash(full), reference) <= 2  # bench_phash_threshold: 0-2 bits, as a draft decode


def test_hamming() -> None:
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(12345, 12345) == 0


# ---------------------------------------------------------------- deduplicate_sets

RNG = random.Random(1234)
X, Y, Z, W, V, U = (RNG.getrandbits(64) for _ in range(6))  # far apart (about 32 bits)


def make_set(set_id: str, hashes: list[int], shas: list[str] | None = None) -> PreparedSet:
    shas = shas or [f"{set_id}-{i}-{h:x}" for i, h in enumerate(hashes)]  # distinct files unless given
    files = [f"{set_id}/{i + 1}.jpg" for i in range(len(hashes))]
    panels = [PanelRecord(f, s, h, 512, 512) for f, s, h in zip(files, shas, hashes, strict=True)]
    return PreparedSet(set_id=set_id, files=files, panels=panels)


def test_duplicate_in_shuffled_order_points_at_the_set_sorting_first() -> None:
    a = make_set("a", [X, Y, Z])
    b = make_set("b", [flip(Z, [1, 2]), X, flip(Y, [5, 9, 33, 60])])  # any order, distances 2, 0, 4
    decisions = deduplicate_sets([b, a])
    assert decisions["a"].status == "kept" and decisions["a"].duplicate_of is None
    assert decisions["b"].status == "duplicate"
    assert decisions["b"].duplicate_of == "a"
    assert decisions["b"].reason == "same 3 panels as set 'a' (near-duplicates, largest Hamming distance 4)"
    assert "'b'" in decisions["a"].reason
    assert decisions["a"].warnings == [] and decisions["b"].warnings == []


def test_duplicate_found_when_a_panel_has_several_candidates() -> None:
    # P' lies 5 bits from both P and Q (10 apart, so set a is fine), Q' 4 from Q and 9 from P':
    # only P-P', Q-Q' is one to one.
    p = X
    q = flip(X, list(range(10)))
    p_mid = flip(X, list(range(5)))
    q2 = flip(q, [20, 21, 22, 23])
    a = make_set("a", [p, q])
    b = make_set("b", [q2, p_mid])
    decisions = deduplicate_sets([a, b])
    assert decisions["a"].status == "kept"
    assert decisions["b"].status == "duplicate"
    assert decisions["b"].reason == "same 2 panels as set 'a' (near-duplicates, largest Hamming distance 5)"
    # the same middle panel twice cannot stand for two panels
    c = make_set("c", [p_mid, flip(p_mid, [40, 41])])
    assert deduplicate_sets([a, c])["c"].status == "rejected"
    d = make_set("d", [p_mid, W])
    decisions = deduplicate_sets([a, d])
    assert decisions["d"].status == "kept"
    assert decisions["d"].warnings == [
        "shares panels with set 'a': panel 1 ~ panel 1 (Hamming distance 5), panel 1 ~ panel 2 (Hamming distance 5)"
    ]


def test_exact_copy_is_named_as_such() -> None:
    a = make_set("a", [X, Y], shas=["s1", "s2"])
    copy = make_set("copy", [X, Y], shas=["s1", "s2"])
    swapped = make_set("swapped", [Y, X], shas=["s2", "s1"])
    decisions = deduplicate_sets([copy, swapped, a])
    assert decisions["copy"].reason == "exact copy of set 'a'"
    assert decisions["swapped"].reason == "exact copy of set 'a' (panels in a different order)"
    assert decisions["copy"].duplicate_of == decisions["swapped"].duplicate_of == "a"
    assert decisions["a"].status == "kept"


def test_same_file_counts_even_when_its_hash_differs() -> None:
    # sha256 decides exact matches, whatever the stored perceptual hash says
    a = make_set("a", [X, Y], shas=["s1", "s2"])
    b = make_set("b", [U, V], shas=["s1", "s2"])
    assert deduplicate_sets([a, b])["b"].reason == "exact copy of set 'a'"


def test_chain_of_three_points_at_the_cluster_kept_set() -> None:
    a = make_set("a", [X, Y])
    b = make_set("b", [flip(X, [0, 1, 2, 3, 4]), Y])
    c = make_set("c", [flip(X, [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]), Y])  # 10 bits from a: only via b
    decisions = deduplicate_sets([c, b, a])
    assert [decisions[k].status for k in "abc"] == ["kept", "duplicate", "duplicate"]
    assert decisions["b"].duplicate_of == "a" and decisions["c"].duplicate_of == "a"
    assert "set 'b'" in decisions["c"].reason and "duplicate of set 'a'" in decisions["c"].reason
    assert decisions["a"].warnings == []


def test_partial_overlap_warns_on_both_sides_and_keeps_both() -> None:
    a = make_set("a", [X, Y, Z])
    b = make_set("b", [flip(Y, [7, 8, 9]), W, V])
    decisions = deduplicate_sets([a, b])
    assert decisions["a"].status == decisions["b"].status == "kept"
    assert decisions["a"].warnings == ["shares panel 2 with set 'b' panel 1 (Hamming distance 3)"]
    assert decisions["b"].warnings == ["shares panel 1 with set 'a' panel 2 (Hamming distance 3)"]


def test_different_panel_counts_are_never_duplicates() -> None:
    a = make_set("a", [X, Y], shas=["x", "y"])
    b = make_set("b", [X, Y, Z], shas=["x", "y", "z"])  # a's two files plus one more
    decisions = deduplicate_sets([a, b])
    assert decisions["a"].status == decisions["b"].status == "kept"
    assert decisions["a"].warnings and "set 'b'" in decisions["a"].warnings[0]
    assert "identical file" in decisions["b"].warnings[0] and "set 'a'" in decisions["b"].warnings[0]


def test_set_with_near_duplicate_panels_is_rejected() -> None:
    near = make_set("near", [X, Y, flip(X, [3, 40])])
    same = make_set("same", [Z, Z], shas=["f", "f"])
    decisions = deduplicate_sets([near, same])
    assert decisions["near"].status == "rejected"
    assert decisions["near"].reason == "panels 1 and 3 are near-duplicates (Hamming distance 2)"
    assert decisions["same"].status == "rejected"
    assert decisions["same"].reason == "panels 1 and 2 are identical files"


def test_rejected_set_takes_no_part_in_cross_set_comparison() -> None:
    # Without the rejection rule, b would match a one to one: X-X, Y-Y, Y'-W.
    y2 = flip(Y, [0, 1, 2, 3])
    w = flip(y2, [20, 21, 22, 23, 24, 25])  # 6 from Y', 10 from Y
    a = make_set("a", [X, Y, y2])
    b = make_set("b", [X, Y, w])
    decisions = deduplicate_sets([a, b])
    assert decisions["a"].status == "rejected"
    assert decisions["b"].status == "kept" and decisions["b"].duplicate_of is None
    assert decisions["b"].warnings == []


def test_every_set_gets_one_decision_independent_of_input_order() -> None:
    sets = [
        make_set("s1", [X, Y]),
        make_set("s2", [flip(Y, [1]), X]),
        make_set("s3", [Z, flip(Z, [2])]),
        make_set("s4", [W, flip(X, [5, 6])]),
        make_set("s5", [V, U]),
        make_set("s0", [flip(X, [9]), flip(Y, [10])]),
    ]
    baseline = {k: to_dict(v) for k, v in deduplicate_sets(sets).items()}
    assert sorted(baseline) == sorted(s.set_id for s in sets)
    assert baseline["s0"]["status"] == "kept"
    assert baseline["s1"]["duplicate_of"] == baseline["s2"]["duplicate_of"] == "s0"
    assert baseline["s3"]["status"] == "rejected"
    assert baseline["s4"]["warnings"] and baseline["s5"]["reason"] == "kept"
    for seed in range(5):
        shuffled = sets[:]
        random.Random(seed).shuffle(shuffled)
        decisions = deduplicate_sets(shuffled)
        assert list(decisions) == sorted(baseline)
        assert {k: to_dict(v) for k, v in decisions.items()} == baseline


def test_bad_set_input_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        deduplicate_sets([make_set("a", [X, Y]), make_set("a", [Z, W])])
    rejected = make_set("r", [X, Y])
    rejected.rejection = "truncated JPEG"
    with pytest.raises(ValueError, match="passed validation"):
        deduplicate_sets([rejected])
    assert deduplicate_sets([]) == {}
