"""Sources: download throughput with a pool, and memory while streaming a large dataset.

    python benchmarks/bench_sources.py [--urls 200] [--delay-ms 50] [--rows 10000] [--image-kb 40]

1. Downloads/s of ``sources.download.fetch_urls`` against a loopback image host that answers each
   request after a fixed delay (a remote host's latency), at concurrency 1 and 16, each into an
   empty download cache; then a re-run into the full cache (should fetch nothing).
2. Peak memory (max RSS of a child process) while ``ingest`` streams a parquet dataset of
   ``--rows`` rows with two embedded images each (``--image-kb`` each, distinct bytes), against a
   child that loads the same file whole with ``pyarrow.parquet.read_table``. Rows/s of the stream
   (which spools every image into a content-addressed folder) is printed too.

Figures are wall-clock on a shared machine; run it alone.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iclora_data.records import SourceSet  # noqa: E402
from iclora_data.sources.download import fetch_urls  # noqa: E402
from iclora_data.sources.settings import DownloadSettings  # noqa: E402


def jpeg(seed: int, kb: int) -> bytes:
    """A noisy JPEG of roughly ``kb`` kilobytes."""
    side = max(32, int((kb * 1024 / 0.9) ** 0.5 / 1.2))
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def serve(delay_s: float, body: bytes) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body in two writes wait on delayed ACKs (40 ms)

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(delay_s)  # the fixed latency of a remote host
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def bench_downloads(n: int, delay_ms: float) -> dict[str, Any]:
    server, url = serve(delay_ms / 1000, jpeg(1, 30))
    urls = [f"{url}/img/{i}.jpg" for i in range(n)]
    result: dict[str, Any] = {"urls": n, "delay_ms": delay_ms}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in (1, 16):
                settings = DownloadSettings(concurrency=concurrency, allow_private_addresses=True)
                cache = Path(tmp) / f"c{concurrency}"
                started = time.perf_counter()
                _, failed = fetch_urls([SourceSet("s", urls, urls)], cache, settings)
                took = time.perf_counter() - started
                assert not failed, failed[:3]
                result[f"downloads_per_s_c{concurrency}"] = round(n / took, 1)
                if concurrency == 16:
                    started = time.perf_counter()
                    fetch_urls([SourceSet("s", urls, urls)], cache, settings)
                    result["rerun_s"] = round(time.perf_counter() - started, 3)
        result["speedup_16_vs_1"] = round(result["downloads_per_s_c16"] / result["downloads_per_s_c1"], 1)
    finally:
        server.shutdown()
        server.server_close()
    return result


def make_dataset(path: Path, rows: int, kb: int) -> None:
    """Written batch by batch, so making it never holds the whole table either."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features({"set_id": datasets.Value("string"), "images": datasets.List(datasets.Image())})
    bases = [jpeg(s, kb) for s in range(16)]
    schema = datasets.Dataset.from_dict({"set_id": [], "images": []}, features=features).data.table.schema
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 500):
            ids = [f"set-{i:06d}" for i in range(start, min(rows, start + 500))]
            # bytes after a JPEG's end marker are ignored by decoders: distinct files, one encode each
            images = [[{"bytes": bases[(i + k) % 16] + i.to_bytes(4, "big") + bytes([k]), "path": None}
                       for k in range(2)] for i in range(start, start + len(ids))]
            table = pa.Table.from_pydict({"set_id": ids, "images": images}, schema=schema)
            writer.write_table(table, row_group_size=100)


CHILD_STREAM = """
import json, resource, sys, time
from pathlib import Path
from iclora_data.ingest import ingest
t = time.perf_counter()
r = ingest(Path(sys.argv[1]), work_dir=Path(sys.argv[2]))
print(json.dumps({"rows": len(r.sets), "s": time.perf_counter() - t,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
CHILD_WHOLE = """
import json, resource, sys, time
import pyarrow.parquet as pq
t = time.perf_counter()
rows = pq.read_table(sys.argv[1]).to_pylist()
print(json.dumps({"rows": len(rows), "s": time.perf_counter() - t,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_stream(rows: int, kb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds" / "data"
        folder.mkdir(parents=True)
        make_dataset(folder / "train-00000-of-00001.parquet", rows, kb)
        size_mb = (folder / "train-00000-of-00001.parquet").stat().st_size / 1e6
        stream = child(CHILD_STREAM, str(folder.parent), str(Path(tmp) / "work"))
        whole = child(CHILD_WHOLE, str(folder / "train-00000-of-00001.parquet"))
    assert stream["rows"] == rows == whole["rows"]
    return {"rows": rows, "parquet_mb": round(size_mb, 1),
            "stream_max_rss_mb": round(stream["max_rss_mb"]), "stream_rows_per_s": round(rows / stream["s"]),
            "whole_max_rss_mb": round(whole["max_rss_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--image-kb", type=int, default=40)
    args = parser.parse_args()
    print(json.dumps({"downloads": bench_downloads(args.urls, args.delay_ms)}), flush=True)
    print(json.dumps({"stream": bench_stream(args.rows, args.image_kb)}), flush=True)


if __name__ == "__main__":
    main()
