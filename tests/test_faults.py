"""Faults outside the data: a kill at any step of the commit, a SOURCE whose storage went away, a full
disk. Each leaves the previous outputs whole (or the new ones), and is one clear failure of the run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._flows_helpers import REPO, many_sets

# captions come from each set's own files (caption.txt and one note per panel): no model is loaded
CONFIG = {"caption": {"model": "tiny-random", "sidecar": "keep"}}


def captioned_sets(root: Path, count: int, start: int = 0) -> Path:
    many_sets(root, count, start=start)
    for i in range(start, start + count):
        folder = root / f"set-{i:04d}"
        (folder / "caption.txt").write_text(f"two views of scene {i}")
        (folder / "1.txt").write_text(f"the first view of scene {i}")
        (folder / "2.txt").write_text(f"the second view of scene {i}")
    return root


def outputs(out: Path) -> dict[str, bytes]:
    """Every user-visible file under OUT (not the run store), with its bytes."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != ".iclora"]
        for name in filenames:
            path = Path(dirpath, name)
            found[path.relative_to(out).as_posix()] = path.read_bytes()
    return found


def dataset_ids(out: Path, cache: Path) -> list[str]:
    """The set ids of OUT/dataset as `datasets` loads them (a fresh cache: never an old copy)."""
    from datasets import load_dataset

    ds = load_dataset(str(out / "dataset"), split="train", cache_dir=str(cache))
    return sorted(ds["set_id"])


RUN = ("import sys, json\n"
       "import iclora_data.publish as publish\n"
       "if sys.argv[3] == 'no-exchange':\n"
       "    publish.exchange_paths = lambda a, b: False  # a file system without RENAME_EXCHANGE\n"
       "from iclora_data.build import run_build\n"
       "from iclora_data.executors import SerialExecutor\n"
       "run_build(sys.argv[1], sys.argv[2], json.loads(sys.argv[4]), executor=SerialExecutor())\n")


def build_in_child(source: Path, out: Path, kill_at: str | None, swap: str = "exchange") -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ICLORA_KILL_AT", None)
    if kill_at:
        env["ICLORA_KILL_AT"] = kill_at
    r = subprocess.run([sys.executable, "-c", RUN, str(source), str(out), swap, json.dumps(CONFIG)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode in (0, -signal.SIGKILL), r.stderr[-3000:]
    return r.returncode


@pytest.mark.parametrize(("kill_at", "swap"), [
    ("dataset-exchanged", "exchange"),
    ("dataset-set-aside", "no-exchange"),  # between the two renames: no OUT/dataset for a moment
    pytest.param("commit-staged", "exchange", marks=pytest.mark.slow),
    pytest.param("composites-placed", "exchange", marks=pytest.mark.slow),
    pytest.param("report-replaced", "exchange", marks=pytest.mark.slow),
    pytest.param("dataset-in-place", "no-exchange", marks=pytest.mark.slow),
    pytest.param("gallery-placed", "exchange", marks=pytest.mark.slow),
])
def test_a_kill_at_any_step_of_the_commit_leaves_a_whole_dataset_and_a_rerun_finishes(tmp_path, kill_at, swap):
    from iclora_data.build import run_build

    source, out = captioned_sets(tmp_path / "SOURCE", 2), tmp_path / "OUT"
    run_build(source, out, CONFIG)
    old = dataset_ids(out, tmp_path / "c0")
    assert old == ["set-0000", "set-0001"]
    captioned_sets(source, 1, start=2)  # the next build has a third row
    new = ["set-0000", "set-0001", "set-0002"]

    assert build_in_child(source, out, kill_at, swap) == -signal.SIGKILL  # it died at that point
    # what a reader finds now: the old dataset or the new one, whole, never nothing
    assert (out / "dataset").is_dir() or (out / ".iclora" / "previous" / "dataset").is_dir()
    if (out / "dataset").is_dir():
        assert dataset_ids(out, tmp_path / "c1") in (old, new)

    assert build_in_child(source, out, None, swap) == 0  # the re-run keeps the good copy and finishes
    assert dataset_ids(out, tmp_path / "c2") == new
    assert not (out / ".iclora" / "previous").exists() or not any((out / ".iclora" / "previous").iterdir())
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["kept"] == 3


def test_kill_between_the_renames_then_any_build_puts_the_old_dataset_back_first(tmp_path):
    """The next run of any kind (even one that fails later) restores the set-aside copy before anything."""
    from iclora_data.build import run_build
    from iclora_data.errors import IcloraError

    source, out = captioned_sets(tmp_path / "SOURCE", 2), tmp_path / "OUT"
    run_build(source, out, CONFIG)
    before = outputs(out)
    captioned_sets(source, 1, start=2)
    assert build_in_child(source, out, "dataset-set-aside", "no-exchange") == -signal.SIGKILL
    assert not (out / "dataset").exists()  # the instant the fallback cannot avoid
    with pytest.raises(IcloraError):
        run_build(tmp_path / "gone", out, CONFIG)  # fails at once (no SOURCE), after the recovery
    assert {k: v for k, v in outputs(out).items() if k.startswith("dataset/")} == \
        {k: v for k, v in before.items() if k.startswith("dataset/")}


def test_sets_all_unreadable_fail_the_run_and_keep_every_output(tmp_path, monkeypatch):
    """A share that went away leaves its mount point: an empty folder, or files that answer EIO."""
    import iclora_data.compose as compose
    from iclora_data.build import run_build
    from iclora_data.errors import EnvironmentFailure

    source, out = captioned_sets(tmp_path / "SOURCE", 3), tmp_path / "OUT"
    run_build(source, out, {**CONFIG, "until": "compose"})
    before = outputs(out)
    assert "report.json" in before and any(k.startswith("composites/") for k in before)

    def dead_share(locator: str) -> bytes:
        raise OSError(errno.EIO, "Input/output error", locator)

    monkeypatch.setattr(compose, "read_source", dead_share)
    (source / "set-0003").mkdir()  # a change, so that nothing is served from the stat cache untouched
    for f in source.rglob("*.jpg"):
        os.utime(f, ns=(1, 1))
    with pytest.raises(EnvironmentFailure, match="could not be read .*Input/output error.*Nothing was changed"):
        run_build(source, out, {**CONFIG, "until": "compose"})
    assert outputs(out) == before


def test_source_emptied_after_ingest_fails_the_run(tmp_path, monkeypatch):
    import shutil

    import iclora_data.build as build_module
    from iclora_data.errors import IcloraError

    source, out = captioned_sets(tmp_path / "SOURCE", 3), tmp_path / "OUT"
    build_module.run_build(source, out, CONFIG)
    before = outputs(out)
    assert "dataset/README.md" in before
    real_ingest = build_module.ingest

    def ingest_then_unmount(*args, **kwargs):  # the mount drops right after ingest: an empty mount point
        result = real_ingest(*args, **kwargs)
        shutil.rmtree(source)
        source.mkdir()
        return result

    monkeypatch.setattr(build_module, "ingest", ingest_then_unmount)
    with pytest.raises(IcloraError, match="could not be read"):
        build_module.run_build(source, out, CONFIG)
    assert outputs(out) == before


def test_a_full_disk_is_one_error_line_at_once_not_retried(tmp_path):
    """ENOSPC from every write: the Prefect runner must not retry it, and the CLI says so in one line; the
    previous outputs stay."""
    from iclora_data.build import run_build

    source, out = captioned_sets(tmp_path / "SOURCE", 2), tmp_path / "OUT"
    run_build(source, out, {**CONFIG, "until": "compose"})
    before = outputs(out)
    captioned_sets(source, 1, start=2)  # the new set's composite must be written: the disk is full
    attempts = tmp_path / "attempts.txt"
    full_disk = (
        "import errno, os, sys\n"
        "import iclora_data.store as store\n"
        "def full(folder, name, *a, **k):\n"
        "    with open(os.environ['ATTEMPTS'], 'a') as f:\n"
        "        f.write(f'{folder}/{name}\\n')\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', str(folder))\n"
        "store.temp_file = full\n"
        "from iclora_data.cli import main\n"
        "sys.argv = ['iclora', *sys.argv[1:]]\n"
        "main()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect"),
           "ATTEMPTS": str(attempts)}
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run([sys.executable, "-c", full_disk, "build", str(source), "--out", str(out), "--until",
                        "compose"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the build failed: No space left on device"), r.stderr
    assert "free some space" in lines[0]
    assert outputs(out) == before
    tried = attempts.read_text().splitlines()
    assert tried and len(tried) == len(set(tried)), tried  # each write tried once: a retry would repeat it
