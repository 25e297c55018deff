"""The build engine as library code (docs/ARCHITECTURE.md): no Prefect, shards on any executor, the
commit step that leaves previous outputs untouched when a run fails, the stat cache, re-runs that
rewrite nothing, streamed and paginated outputs, file modes and the temporary-file marker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._flows_helpers import REPO, many_sets
from tests._images import image_set

SAMPLE = REPO / "sample_data"


def outputs(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every user-visible file under OUT (not the run store) with its inode, mtime and bytes."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != ".iclora"]
        for name in filenames:
            path = Path(dirpath, name)
            st = path.stat()
            found[path.relative_to(out).as_posix()] = (st.st_ino, st.st_mtime_ns, path.read_bytes())
    return found


class Recorder:
    """A progress listener that remembers what it heard (from the driver thread only)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def start(self, stage: str, total: int) -> None:
        self.totals[stage] = total
        self.done.setdefault(stage, 0)

    def advance(self, stage: str, n: int = 1) -> None:
        self.done[stage] = self.done.get(stage, 0) + n


def test_library_builds_sample_data_without_importing_prefect(tmp_path):
    code = (
        "import sys\n"
        "from iclora_data.build import run_build\n"
        f"r = run_build({str(SAMPLE)!r}, {str(tmp_path / 'out')!r}, {{'until': 'compose'}})\n"
        "assert r.counts['sets'] == 8, r.counts\n"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert (tmp_path / "out" / "report.json").is_file()


def test_cli_runner_local_imports_no_prefect(tmp_path):
    # the CLI's own process: run the typer app in-process with a guard that fails any Prefect import
    code = (
        "import sys\n"
        "class Guard:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'prefect' or name.startswith('prefect.') or name == 'prefect_ray':\n"
        "            raise ImportError('prefect imported by --runner local: ' + name)\n"
        "sys.meta_path.insert(0, Guard())\n"
        "from iclora_data.cli import app\n"
        f"app(['build', {str(SAMPLE)!r}, '--out', {str(tmp_path / 'out')!r}, '--until', 'compose', "
        "'--runner', 'local'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["sets"] == 8


def test_process_pool_and_serial_build_the_same_and_progress_counts_every_set(tmp_path):
    from iclora_data.build import run_build
    from iclora_data.executors import ProcessExecutor, SerialExecutor

    source = many_sets(tmp_path / "SOURCE", 5)
    (source / "set-0004" / "2.jpg").write_bytes(b"not a picture")
    serial, pooled = tmp_path / "serial", tmp_path / "pooled"
    run_build(source, serial, {"until": "compose"}, executor=SerialExecutor())
    heard = Recorder()
    result = run_build(source, pooled, {"until": "compose"}, executor=ProcessExecutor(2), progress=heard,
                       shard_size=2)
    assert json.loads((serial / "report.json").read_text()) == json.loads((pooled / "report.json").read_text())
    assert {k: v[2] for k, v in outputs(serial / "composites").items()} == \
        {k: v[2] for k, v in outputs(pooled / "composites").items()}
    # progress is reported from the driver as shard results arrive, whatever runs the shards
    assert heard.totals["prepare"] == heard.done["prepare"] == 5
    assert result.counts == {"files": 10, "sets": 5, "kept": 4, "duplicate": 0, "rejected": 1}


def test_shards_are_named_by_the_sets_they_hold():
    from iclora_data.build import make_shards, shard_size_for
    from iclora_data.records import Shard, SourceSet

    sets = [SourceSet(f"s{i:03d}", [], []) for i in range(100)]
    assert shard_size_for(100, workers=2) == 13  # a few shards per worker
    assert shard_size_for(1_000_000, workers=2) == 256  # at most a few hundred sets each
    shards = [Shard(i, part) for i, part in enumerate(make_shards(sets, 40))]
    assert [len(s.sets) for s in shards] == [40, 40, 20]
    assert [x.set_id for s in shards for x in s.sets] == [s.set_id for s in sets]
    assert shards[2].name("prepare") == "prepare shard 2 (s080 … s099, 20 sets)"
    assert Shard(0, sets[:1]).name("caption") == "caption shard 0 (s000, 1 set)"


def test_a_caption_backend_failure_leaves_every_previous_output_untouched(tmp_path, monkeypatch):
    import iclora_data.build as build_module
    from iclora_data.build import run_build
    from iclora_data.errors import EnvironmentFailure

    source = many_sets(tmp_path / "SOURCE", 3)
    out = tmp_path / "OUT"
    run_build(source, out, {"caption": {"model": "tiny-random"}})
    before = outputs(out)
    assert "dataset/README.md" in before and "gallery.html" in before and "captions/set-0000.json" in before

    many_sets(source, 1, start=3)  # a new set: the next build would change every output

    def server_down(composites, out, settings):
        raise ConnectionError("the caption server went away")

    monkeypatch.setattr(build_module, "caption_shard", server_down)
    # an OSError that reaches the build is the run's failure: one IcloraError for the CLI's error line
    with pytest.raises(EnvironmentFailure, match="the caption server went away") as err:
        run_build(source, out, {"caption": {"model": "tiny-random"}})
    assert isinstance(err.value.__cause__, ConnectionError)
    assert outputs(out) == before
    assert not [p for p in out.rglob(".iclora-tmp-*")]  # staging is cleaned up


def test_a_source_that_vanishes_mid_build_changes_nothing(tmp_path):
    from iclora_data.build import SourceVanishedError, run_build
    from iclora_data.executors import SerialExecutor

    source = many_sets(tmp_path / "SOURCE", 3)
    out = tmp_path / "OUT"
    run_build(source, out, {"until": "compose"})
    before = outputs(out)

    class Unmounting(SerialExecutor):
        """The share goes away after the first shard: every later panel is unreadable."""

        def map(self, fn, items, names):  # type: ignore[no-untyped-def]
            for i, result in super().map(fn, items, names):
                if i == 0:
                    shutil.rmtree(source)
                yield i, result

    with pytest.raises(SourceVanishedError, match="disappeared during the build"):
        run_build(source, out, {"until": "compose"}, executor=Unmounting(), shard_size=1)
    assert outputs(out) == before


def test_unchanged_source_is_not_read_again_and_outputs_are_not_rewritten(tmp_path, monkeypatch):
    import iclora_data.compose as compose_module
    from iclora_data.build import run_build

    source = many_sets(tmp_path / "SOURCE", 3)
    out = tmp_path / "OUT"
    # the stat cache does not trust files modified within its racy window: age them
    for path in source.rglob("*.jpg"):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))
    first = run_build(source, out, {"until": "compose"})
    assert first.decoded_images == 6
    before = outputs(out)

    reads: list[str] = []
    real_read = compose_module.read_source

    def counting_read(locator: str) -> bytes:
        reads.append(locator)
        return real_read(locator)

    monkeypatch.setattr(compose_module, "read_source", counting_read)
    second = run_build(source, out, {"until": "compose"})
    assert reads == []  # neither read nor hashed: the stat cache knew every file
    assert second.decoded_images == 0 and second.rewritten == []
    after = outputs(out)
    # build.json records this run (its times, decoded_images 0); nothing else is even rewritten with the
    # same bytes: same inode and mtime
    assert json.loads(after.pop("build.json")[2])["decoded_images"] == 0
    before.pop("build.json")
    assert after == before

    # a changed file is read again and its set recomposed (both its panels decoded, each read once);
    # no other set's file is read
    changed = source / "set-0001" / "1.jpg"
    other = source / "set-0002" / "1.jpg"
    data = other.read_bytes()
    changed.write_bytes(data)
    third = run_build(source, out, {"until": "compose"})
    assert sorted(reads) == [str(changed), str(source / "set-0001" / "2.jpg")]
    assert third.decoded_images == 2  # a new composite for set-0001
    report = json.loads((out / "report.json").read_text())
    assert {s["set_id"]: s["status"] for s in report["sets"]}["set-0001"] == "kept"
    assert "set-0002" in next(s for s in report["sets"] if s["set_id"] == "set-0001")["warnings"][0]


def test_cached_captions_need_no_caption_model_code(tmp_path):
    from iclora_data.build import run_build

    out = tmp_path / "OUT"
    source = many_sets(tmp_path / "SOURCE", 2)
    run_build(source, out, {"caption": {"model": "tiny-random"}})
    code = (
        "import sys\n"
        "from iclora_data.build import run_build\n"
        f"r = run_build({str(source)!r}, {str(out)!r}, {{'caption': {{'model': 'tiny-random'}}}})\n"
        "assert r.counts['kept'] == 2 and r.rewritten == [], (r.counts, r.rewritten)\n"
        "heavy = [m for m in ('torch', 'transformers', 'openai', 'iclora_data.caption.transformers_backend',\n"
        "         'iclora_data.caption.openai_backend') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_a_cached_cli_rebuild_loads_no_caption_model_code(tmp_path):
    """The CLI checks the captioner before a build without importing the model's code (the build checks
    fully when a caption is needed), so an unchanged re-run through `iclora build` stays cheap."""
    out = tmp_path / "OUT"
    source = many_sets(tmp_path / "SOURCE", 2)
    argv = ["iclora", "build", str(source), "--out", str(out), "--model", "tiny-random", "--runner", "local"]
    code = (
        "import sys\n"
        "from iclora_data.cli import main\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "'transformers'" in first.stdout.strip().splitlines()[-1]  # the first build captions: it needs them
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == "[]"


def test_files_get_the_users_umask_not_mkstemps_private_mode(tmp_path):
    out = tmp_path / "OUT"
    source = many_sets(tmp_path / "SOURCE", 2)
    code = (
        "import os\n"
        "os.umask(0o027)\n"
        "from iclora_data.build import run_build\n"
        f"run_build({str(source)!r}, {str(out)!r}, {{'until': 'compose'}})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    for name in ("report.json", "build.json", "gallery.html", "composites/set-0000.jpg", "composites/set-0000.json",
                 "gallery/set-0000.jpg"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name  # what open() gives under umask 027
    assert (out / "gallery").stat().st_mode & 0o777 == 0o750


def test_partial_files_and_folders_with_the_marker_are_swept(tmp_path):
    from iclora_data.outdir import TEMP_PREFIX
    from iclora_data.store import atomic_write_json, remove_partial_files, temp_dir

    out = tmp_path / "OUT"
    atomic_write_json(out / "report.json", {"whole": True})
    partial_file = out / "composites" / f"{TEMP_PREFIX}set-a.jpg.x1y2z3.tmp"
    partial_file.parent.mkdir(parents=True)
    partial_file.write_bytes(b"half")
    staged = temp_dir(out / ".iclora", "commit")
    (staged / "report.json").write_text("half")
    keep = out / "composites" / ".hidden-user-file"
    keep.write_text("not ours")
    assert staged.name.startswith(TEMP_PREFIX)
    assert remove_partial_files(out) == 2
    assert not partial_file.exists() and not staged.exists()
    assert keep.exists() and json.loads((out / "report.json").read_text()) == {"whole": True}


def test_gallery_is_paginated_and_every_set_is_on_exactly_one_page(tmp_path, monkeypatch):
    import re

    import iclora_data.gallery as gallery
    from iclora_data.build import run_build

    monkeypatch.setattr(gallery, "PAGE_SETS", 2)
    source = many_sets(tmp_path / "SOURCE", 5)
    for i in range(3):  # three rejected sets: two pages of rejects
        image_set(source / f"bad-{i}", [9000 + i])
    out = tmp_path / "OUT"
    run_build(source, out, {"until": "compose"})
    report = json.loads((out / "report.json").read_text())
    pages = [out / "gallery.html", *sorted((out / "gallery").glob("*.html"))]
    assert sorted(p.name for p in pages[1:]) == ["kept-2.html", "kept-3.html", "rejects-2.html"]
    kept_seen, others_seen = [], []
    for page in pages:
        text = page.read_text()
        kept_seen += re.findall(r'<figure class="set kept" id="[^"]*" data-set-id="([^"]*)"', text)
        others_seen += re.findall(r'<article class="set [a-z]+" data-set-id="([^"]*)"', text)
        for link in re.findall(r'(?:href|src)="([^"#]+)', text):  # every relative link resolves
            assert (page.parent / link).exists(), (page.name, link)
    assert sorted(kept_seen) == sorted(s["set_id"] for s in report["sets"] if s["status"] == "kept")
    assert sorted(others_seen) == sorted(s["set_id"] for s in report["sets"] if s["status"] != "kept")


def test_report_is_streamed_as_valid_json_equal_to_the_ledger(tmp_path):
    from iclora_data.build import run_build
    from iclora_data.ingest import ingest
    from iclora_data.report import REPORT_VERSION

    source = many_sets(tmp_path / "SOURCE", 3)
    (source / "loose.txt").write_text("x")
    out = tmp_path / "OUT"
    run_build(source, out, {"until": "compose"})
    report = json.loads((out / "report.json").read_text())
    assert report["version"] == REPORT_VERSION
    walked = {(Path(d) / f).relative_to(source).as_posix() for d, _, fs in os.walk(source) for f in fs}
    assert {f["path"] for f in report["files"]} == walked
    assert [s["set_id"] for s in report["sets"]] == [s.set_id for s in ingest(source).sets]


def test_iclora_caption_local_recaptions_from_the_store_without_decoding(tmp_path):
    from iclora_data.build import run_build

    source = many_sets(tmp_path / "SOURCE", 2)
    out = tmp_path / "OUT"
    run_build(source, out, {"caption": {"model": "tiny-random"}})
    before = outputs(out)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe these $n panels ($tags) of $task as JSON with summary and panels. $hints\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "iclora_data.cli", "caption", str(out), "--model", "tiny-random",
           "--prompt-file", str(prompt), "--runner", "local"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    after = outputs(out)
    build = json.loads((out / "build.json").read_text())
    assert build["decoded_images"] == 0  # composites came from the run store
    assert build["config"]["caption"]["prompt_file"] == str(prompt)
    # the composites are the same files; the captions and the dataset are new
    assert {k: v for k, v in after.items() if k.startswith("composites/")} == \
        {k: v for k, v in before.items() if k.startswith("composites/")}
    assert after["captions/set-0000.json"][2] != before["captions/set-0000.json"][2]
    assert after["dataset/README.md"][0] != before["dataset/README.md"][0]


def test_a_build_after_a_killed_one_sweeps_its_temporary_files(tmp_path):
    from iclora_data.build import run_build
    from iclora_data.outdir import TEMP_PREFIX, OutDir

    source = many_sets(tmp_path / "SOURCE", 2)
    out = tmp_path / "OUT"
    run_build(source, out, {"until": "compose"})
    assert not OutDir(out).running.exists()  # a finished build leaves no marker
    # what a SIGKILL mid-write leaves: the marker and a temporary file deep in the store
    leftover = out / ".iclora" / "composites" / "ab" / f"{TEMP_PREFIX}x.jpg.k2j9xq1z.jpg"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    OutDir(out).running.touch()
    run_build(source, out, {"until": "compose"})
    assert not leftover.exists() and not OutDir(out).running.exists()
