"""Helpers for the flow tests: sources of many small sets, CLI subprocesses, OUT snapshots."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests._images import image_set

REPO = Path(__file__).resolve().parents[1]
# the temporary names store.atomic_write_* and atomic_path give a file before renaming it into place
# (the marker prefix; and the names of older versions)
PARTIAL_NAME = re.compile(r"^(\.iclora-tmp-.*|\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?)$")


def many_sets(root: Path, count: int, start: int = 0, seed: int = 5000) -> Path:
    """``count`` distinct two-panel sets (288x256 panels, above the default 256 px minimum)."""
    for i in range(start, start + count):
        image_set(root / f"set-{i:04d}", [seed + 2 * i, seed + 2 * i + 1], size=(288, 256))
    return root


def api_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that talks to the Prefect server of this test session."""
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    url = get_current_settings().api.url
    if url:
        env["PREFECT_API_URL"] = str(url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def iclora(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "iclora_data.cli", *args], cwd=REPO, env=env or api_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def count_objects(out: Path, kind: str, pattern: str) -> int:
    folder = out / ".iclora" / kind
    return sum(1 for _ in folder.rglob(pattern)) if folder.exists() else 0


def kill_when(proc: subprocess.Popen[bytes], out: Path, kind: str, pattern: str, at_least: int,
              timeout: float = 300) -> int:
    """SIGKILL ``proc`` as soon as the run store holds ``at_least`` finished ``kind`` objects.
    Returns how many there were; fails if the run ended first (the kill must land mid-stage)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {at_least} {kind}: "
                                 f"{proc.stdout.read().decode()[-2000:] if proc.stdout else ''}")
        if count_objects(out, kind, pattern) >= at_least:
            proc.kill()
            proc.wait()
            return count_objects(out, kind, pattern)
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {at_least} {kind} within {timeout} s")


def finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> str:
    output, _ = proc.communicate(timeout=timeout)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def snapshot(out: Path, kind: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each store object of ``kind``: an object written again gets a new inode."""
    folder = out / ".iclora" / kind
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not PARTIAL_NAME.match(p.name)}


def partial_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file() and PARTIAL_NAME.match(p.name)]


def dataset_rows(out: Path) -> list[dict]:
    shards = sorted((out / "dataset" / "data").glob("*.parquet"))
    assert shards, f"no dataset in {out}"
    rows: list[dict] = []
    for shard in shards:
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
