"""Scale: many small two-panel sets through the CLI and through the library, memory, re-runs, Ray.

    python benchmarks/bench_scale.py --prefect-server            # full size (the lead): 10,000 / 1,000 sets
    python benchmarks/bench_scale.py --sets 40 --small-sets 20   # a smoke run

Data: N two-panel sets of small JPEGs (288x256, distinct pictures), generated once and cached.
Every figure is printed with its ratio against the baseline measured in the same run: the
library's ``run_build`` (``--until compose``, a thread pool of ``--workers``) called in a fresh
Python process, timed around the call. Then:

- the CLI, ``iclora build --until compose`` (default Prefect runner), whole process; with
  ``--prefect-server`` a ``prefect server start`` on 127.0.0.1 is started first and
  PREFECT_API_URL points at it (as a deployment would run). Aim: <= 1.15x the library.
  Per-set orchestration cost = (CLI - library) / N, and what a million sets would cost by it.
- ``--runner local`` through the CLI, whole process.
- an unchanged re-run of the library build into the same OUT. Aim: <= 5% of the first.
- peak RSS of the library build at ``--small-sets`` and at ``--sets``. Aim: <= 1.3x.
- ``--runner ray`` (a local Ray instance) through the CLI: time, and whether its ledger and
  composites equal the thread runner's byte for byte (skipped when prefect-ray is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def make_sets(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` two-panel sets of distinct small pictures, cached under ``root``."""
    source = root / f"small-sets-{count}-seed{seed}"
    done = root / f"small-sets-{count}-seed{seed}.complete"
    if done.exists():
        return source
    shutil.rmtree(source, ignore_errors=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:288]
    for i in range(count):
        folder = source / f"set-{i:06d}"
        folder.mkdir(parents=True)
        for j in (1, 2):
            # smooth random fields: real-looking enough for JPEG, and far apart in pHash
            f = rng.normal(size=(4, 3))
            arr = np.stack([127 + 60 * np.sin(xx / (20 + 30 * abs(f[0, c])) + 6 * f[1, c])
                            * np.cos(yy / (15 + 25 * abs(f[2, c])) + 6 * f[3, c]) for c in range(3)], -1)
            noise = rng.normal(0, 6, size=arr.shape)
            Image.fromarray((arr + noise).clip(0, 255).astype(np.uint8)).save(folder / f"{j}.jpg", quality=90)
    done.write_text("ok")
    return source


def env_with(**extra: str) -> dict[str, str]:
    env = {**os.environ, "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.update(extra)
    return env


LIBRARY_CHILD = """
import json, resource, sys, time
from iclora_data.build import run_build
from iclora_data.executors import ThreadExecutor
source, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
result = run_build(source, out, {"until": "compose", "workers": workers}, executor=ThreadExecutor(workers))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "counts": result.counts, "decoded": result.decoded_images,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def library_build(source: Path, out: Path, workers: int) -> dict:
    """``run_build`` in a fresh process: seconds around the call, counts and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", LIBRARY_CHILD, str(source), str(out), str(workers)],
                          capture_output=True, text=True, env=env_with(), cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"library build failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def cli_build(source: Path, out: Path, extra: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "iclora_data.cli", "build", str(source), "--out", str(out), "--until", "compose",
           *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prefect_server(home: Path, timeout: float = 180) -> tuple[subprocess.Popen[bytes], str]:
    """``prefect server start`` on loopback in its own PREFECT_HOME; returns it and its API URL."""
    port = free_port()
    env = env_with(PREFECT_HOME=str(home), PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("prefect server start exited")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s")


def same_outputs(a: Path, b: Path) -> bool:
    if json.loads((a / "report.json").read_text()) != json.loads((b / "report.json").read_text()):
        return False
    names = sorted(p.name for p in (a / "composites").iterdir())
    return names == sorted(p.name for p in (b / "composites").iterdir()) and all(
        (a / "composites" / n).read_bytes() == (b / "composites" / n).read_bytes() for n in names)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def ratio(label: str, seconds: float, base: float, note: str = "") -> None:
    print(f"  {label:<48s} {seconds:9.2f} s  {seconds / base:7.3f}x library  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description="scale: CLI vs library, re-runs, memory, Ray")
    parser.add_argument("--sets", type=int, default=10_000)
    parser.add_argument("--small-sets", type=int, default=1_000, help="the smaller build for the memory ratio")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prefect-server", action="store_true",
                        help="start `prefect server start` on 127.0.0.1 and point PREFECT_API_URL at it")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "iclora-bench-scale")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="iclora-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = make_sets(args.data, args.sets)
    small = make_sets(args.data, args.small_sets)
    n = args.sets
    print(f"data: {n} and {args.small_sets} two-panel sets of 288x256 JPEGs ({time.perf_counter() - start:.1f} s "
          f"to make or find); workers={args.workers}, cpus={os.cpu_count()}")

    server = None
    env = env_with(PREFECT_HOME=str(work / "prefect-home"))
    try:
        if args.prefect_server:
            t0 = time.perf_counter()
            server, url = start_prefect_server(work / "prefect-home")
            env["PREFECT_API_URL"] = url
            print(f"prefect server on {url} (healthy after {time.perf_counter() - t0:.1f} s)")
        else:
            env.pop("PREFECT_API_URL", None)
            print("no --prefect-server: each CLI process starts Prefect's temporary server")

        lib_out = fresh(work / "library")
        lib = library_build(source, lib_out, args.workers)
        base = lib["seconds"]
        print(f"\n{n} sets, {lib['counts']}")
        ratio("library run_build (baseline, in-process)", base, base,
              f"{1000 * base / n:.2f} ms/set, peak RSS {lib['peak_rss_mb']:.0f} MB")
        rerun = library_build(source, lib_out, args.workers)
        ratio("  unchanged re-run (library)", rerun["seconds"], base,
              f"[{'meets' if rerun['seconds'] <= 0.05 * base else 'MISSES'} the aim <= 0.05x]"
              f" decoded {rerun['decoded']}")

        workers = ["--workers", str(args.workers)]
        cli = cli_build(source, fresh(work / "cli-prefect"), workers, env)
        per_set_ms = 1000 * (cli - base) / n
        ratio("CLI iclora build (Prefect runner), whole process", cli, base,
              f"[{'meets' if cli <= 1.15 * base else 'MISSES'} the aim <= 1.15x]")
        print(f"  orchestration: {per_set_ms:.3f} ms/set over the library; a million sets: "
              f"{per_set_ms * 1e6 / 1000 / 3600:.2f} h by that figure")
        local = cli_build(source, fresh(work / "cli-local"), ["--runner", "local", *workers], env)
        ratio("CLI iclora build --runner local, whole process", local, base,
              f"{1000 * (local - base) / n:.3f} ms/set over the library")
        cli_again = cli_build(source, work / "cli-prefect", workers, env)
        ratio("  unchanged re-run (CLI, Prefect runner)", cli_again, base, f"{cli_again / cli:.3f}x the first CLI")

        small_lib = library_build(small, fresh(work / "library-small"), args.workers)
        growth = lib["peak_rss_mb"] / small_lib["peak_rss_mb"]
        print(f"\npeak RSS: {args.small_sets} sets {small_lib['peak_rss_mb']:.0f} MB, {n} sets "
              f"{lib['peak_rss_mb']:.0f} MB: {growth:.3f}x [{'meets' if growth <= 1.3 else 'MISSES'} the aim <= 1.3x]")

        if not args.skip_ray:
            try:
                import prefect_ray  # noqa: F401
            except ImportError:
                print("\nray: skipped (prefect-ray is not installed)")
            else:
                ray_out = fresh(work / "cli-ray")
                ray = cli_build(source, ray_out, ["--runner", "ray", *workers], env)
                ratio("\nCLI iclora build --runner ray (local Ray)", ray, base,
                      f"same ledger and composites as threads: {same_outputs(ray_out, work / 'cli-prefect')}")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    print(f"\noutputs under {work}")


if __name__ == "__main__":
    main()
