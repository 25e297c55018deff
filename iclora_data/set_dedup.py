"""Set-level duplicate decisions (DESIGN.md, Duplicates) over the panels' hashes.

- A set with two near-duplicate panels of its own is rejected; it then takes no part below.
- Two sets whose panels match one to one (same count, any order) are duplicates: the id that
  sorts first is kept, the other names it. A chain a~b~c points everything at ``a``.
- Sets that share only some panels are both kept, each with a warning naming the other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from iclora_data.dedup import find_near_duplicates
from iclora_data.records import PreparedSet, SetDecision


def _perfect_matching(n: int, edges: dict[int, set[int]]) -> bool:
    """Whether panels 0..n-1 of one set match those of the other one to one (Kuhn's algorithm)."""
    match_of: dict[int, int] = {}

    def augment(u: int, seen: set[int]) -> bool:
        for v in edges.get(u, ()):
            if v in seen:
                continue
            seen.add(v)
            if v not in match_of or augment(match_of[v], seen):
                match_of[v] = u
                return True
        return False

    return all(augment(u, set()) for u in range(n))


def deduplicate_sets(sets: Sequence[PreparedSet], max_distance: int) -> dict[str, SetDecision]:
    """One decision per set that passed validation."""
    ordered = sorted(sets, key=lambda s: s.set_id)
    owner: list[tuple[int, int]] = [(si, pi) for si, s in enumerate(ordered) for pi in range(len(s.panels))]
    hashes = np.array([ordered[si].panels[pi].phash for si, pi in owner], dtype=np.uint64)
    pairs = find_near_duplicates(hashes, max_distance) if len(hashes) else np.empty((0, 2), dtype=np.int64)

    def distance(i: int, j: int) -> int:
        return int(np.bitwise_count(hashes[i] ^ hashes[j]))

    decisions: dict[str, SetDecision] = {}
    within: dict[int, tuple[int, int, int]] = {}
    across: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for i, j in pairs.tolist():
        (si, pi), (sj, pj) = owner[i], owner[j]
        d = distance(i, j)
        if si == sj:
            a, b = sorted((pi, pj))
            within.setdefault(si, (a, b, d))
        else:
            if si > sj:
                si, sj, pi, pj = sj, si, pj, pi
            across[(si, sj)].append((pi, pj, d))
    for si, (a, b, d) in within.items():
        s = ordered[si]
        same = s.panels[a].sha256 == s.panels[b].sha256
        why = "are identical files" if same else f"are near-duplicates (Hamming distance {d})"
        decisions[s.set_id] = SetDecision(s.set_id, "rejected", f"panels {a + 1} and {b + 1} {why}")

    parent = list(range(len(ordered)))  # union-find over duplicate sets; the root sorts first

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    detail: dict[int, str] = {}
    warnings: dict[int, list[str]] = defaultdict(list)
    for (si, sj), matches in sorted(across.items()):
        if si in within or sj in within:
            continue
        set_a, set_b = ordered[si], ordered[sj]
        edges: dict[int, set[int]] = defaultdict(set)
        for pi, pj, _ in matches:
            edges[pi].add(pj)
        if len(set_a.panels) == len(set_b.panels) and _perfect_matching(len(set_a.panels), edges):
            exact = sorted(p.sha256 for p in set_a.panels) == sorted(p.sha256 for p in set_b.panels)
            worst = max(d for _, _, d in matches)
            ra, rb = root(si), root(sj)
            parent[max(ra, rb)] = min(ra, rb)
            detail[sj] = "exact copy" if exact else \
                f"same {len(set_b.panels)} panels (near-duplicates, largest Hamming distance {worst})"
            continue
        for pi, pj, d in sorted(matches):
            how_far = f"(Hamming distance {d})"
            warnings[si].append(f"shares panel {pi + 1} with set '{set_b.set_id}' panel {pj + 1} {how_far}")
            warnings[sj].append(f"shares panel {pj + 1} with set '{set_a.set_id}' panel {pi + 1} {how_far}")

    for si, s in enumerate(ordered):
        if s.set_id in decisions:
            continue
        r = root(si)
        if r != si:
            kept = ordered[r].set_id
            how = detail.get(si, "same panels (through a chain of duplicate sets)")
            reason = f"exact copy of set '{kept}'" if how == "exact copy" else f"{how} as set '{kept}'"
            decisions[s.set_id] = SetDecision(s.set_id, "duplicate", reason, duplicate_of=kept)
        else:
            decisions[s.set_id] = SetDecision(s.set_id, "kept", "kept", warnings=warnings.get(si, []))
    return decisions
