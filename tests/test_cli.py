"""The command line as a user meets it: one-line errors for bad invocations, the presets table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests._images import image_set


def iclora(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iclora_data.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def assert_one_error_line(r: subprocess.CompletedProcess, starts: str) -> str:
    """The CLI's promise for a failure: non-zero exit, exactly one stderr line `error: ...`, no traceback."""
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), r.stderr[-2000:]
    return lines[0]


def test_missing_source_is_a_one_line_error(tmp_path):
    r = iclora("build", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert assert_one_error_line(r, "") == f"error: SOURCE {tmp_path / 'nope'} does not exist"


def test_unwritable_out_is_a_one_line_error(tmp_path):
    image_set(tmp_path / "src" / "a", [1, 2])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = iclora("build", str(tmp_path / "src"), "--out", str(blocker / "out"), "--until", "compose")
    assert_one_error_line(r, f"OUT {blocker / 'out'} is not writable")


def test_unknown_preset_is_a_one_line_error(tmp_path):
    image_set(tmp_path / "src" / "a", [1, 2])
    r = iclora("build", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--preset", "nope")
    line = assert_one_error_line(r, "")
    assert "unknown preset 'nope'" in line and "film-storyboard" in line


def test_presets_lists_the_table():
    r = iclora("presets")
    assert r.returncode == 0
    for name in ("film-storyboard", "couple-profile", "font-design", "visual-identity"):
        assert name in r.stdout
    assert "1024x1536" in r.stdout and "[MOVIE-SHOTS]" in r.stdout


def test_build_refuses_while_another_run_holds_out(tmp_path):
    from iclora_data.store import RunStore

    image_set(tmp_path / "src" / "a", [1, 2])
    out = tmp_path / "out"
    with RunStore(out).lock():
        r = iclora("build", str(tmp_path / "src"), "--out", str(out), "--until", "compose")
    assert "is in use by another iclora run" in assert_one_error_line(r, f"{out} is in use")
    assert not (out / "report.json").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_build_until_compose_prints_counts(tmp_path):
    image_set(tmp_path / "src" / "a", [1, 2])
    image_set(tmp_path / "src" / "b", [3, 4, 5])
    out = tmp_path / "out"
    r = iclora("build", str(tmp_path / "src"), "--out", str(out), "--until", "compose")
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout and (out / "report.json").exists()
    assert sorted(p.name for p in (out / "composites").glob("*.jpg")) == ["a.jpg", "b.jpg"]


def test_out_equal_to_source_is_a_one_line_error(tmp_path):
    image_set(tmp_path / "src" / "a", [1, 2])
    r = iclora("build", str(tmp_path / "src"), "--out", str(tmp_path / "src"), "--until", "compose")
    assert_one_error_line(r, f"OUT {tmp_path / 'src'} is SOURCE itself")


def test_layout_over_the_bounds_is_a_one_line_error(tmp_path):
    image_set(tmp_path / "src" / "a", [1, 2])
    r = iclora("build", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--layout", "4000x4000")
    assert "layout 4000x4000 is too large" in assert_one_error_line(r, "bad setting compose.layout")


@pytest.mark.parametrize("signum", [
    signal.SIGTERM,
    pytest.param(signal.SIGINT, marks=pytest.mark.slow),
])
def test_a_killed_build_leaves_no_process_behind(tmp_path, signum):
    """The temporary Prefect server is a child process: a build stopped by a signal must take it along."""
    import psutil

    from iclora_data.store import RunStore

    image_set(tmp_path / "src" / "a", [1, 2])
    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}  # a fresh home: its own temporary server
    env.pop("PREFECT_API_URL", None)
    with RunStore(out).lock():  # the build waits for this lock inside its flow, with the server up
        proc = subprocess.Popen([sys.executable, "-m", "iclora_data.cli", "build", str(tmp_path / "src"), "--out",
                                 str(out), "--until", "compose", "--wait", "600"], stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True, env=env)
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 240
        children: list[psutil.Process] = []
        while not children and proc.poll() is None and time.monotonic() < deadline:
            children = [c for c in parent.children(recursive=True) if "uvicorn" in " ".join(c.cmdline())]
            time.sleep(0.2)  # polling for a condition, bounded by the deadline
        assert children, "the temporary Prefect server never started"
        everything = parent.children(recursive=True)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert stderr.strip().splitlines()[-1].startswith(f"error: interrupted by {signal.Signals(signum).name}")
    _, alive = psutil.wait_procs(everything, timeout=30)
    assert alive == [], f"left behind: {[p.cmdline() for p in alive]}"
