"""A loopback image host that misbehaves the way real ones do (for the download tests and bench).

Routes: ``/img/<seed>.jpg`` a JPEG; ``/png/<seed>.png`` a PNG sent as application/octet-stream;
``/missing`` 404; ``/gone`` 410; ``/flaky/<key>`` 503 for the first ``flaky_failures`` requests of
that key, then a JPEG; ``/always503``; ``/slow`` answers only when the server stops (a host that
hangs); ``/loop`` redirects to itself; ``/to-img`` redirects to ``/img/7.jpg``; ``/to-file``
redirects to a ``file://`` URL; ``/page`` an HTML page; ``/fake`` HTML sent as image/jpeg;
``/huge`` declares a 200 MB body and never sends it; ``/stream-big`` sends more than a cap with no
Content-Length; ``/noai`` a JPEG with ``X-Robots-Tag: noai``; ``/barrier/<n>`` waits until n
requests are in flight at once (proves a pool is concurrent); ``/delay/<seed>.jpg`` a JPEG after
``delay_s`` (the benchmark's fixed per-request latency).

``serve_hub`` is a loopback Hugging Face hub: the tree API and ``resolve/`` for the files put in it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

from _images import picture


def jpeg_bytes(seed: int, size: tuple[int, int] = (320, 288)) -> bytes:
    buf = io.BytesIO()
    picture(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    picture(seed).save(buf, "PNG")
    return buf.getvalue()


class ImageHost:
    def __init__(self, flaky_failures: int = 2, delay_s: float = 0.0) -> None:
        self.flaky_failures, self.delay_s = flaky_failures, delay_s
        self.requests: Counter[str] = Counter()
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.barriers: dict[int, threading.Barrier] = {}
        self.url = ""

    def count(self, path: str) -> int:
        with self.lock:
            return self.requests[path]

    def total(self) -> int:
        with self.lock:
            return sum(self.requests.values())


def _handler(host: ImageHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body in two writes wait on delayed ACKs (40 ms)

        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: bytes = b"", ctype: str = "image/jpeg",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path
            with host.lock:
                host.requests[path] += 1
                seen = host.requests[path]
                host.user_agents.add(self.headers.get("User-Agent", ""))
            parts = path.strip("/").split("/")
            if parts[0] == "img":
                return self.reply(200, jpeg_bytes(int(parts[1].split(".")[0])))
            if parts[0] == "png":
                return self.reply(200, png_bytes(int(parts[1].split(".")[0])), "application/octet-stream")
            if parts[0] == "delay":
                time.sleep(host.delay_s)  # the benchmark's fixed latency of a remote host
                return self.reply(200, jpeg_bytes(int(parts[1].split(".")[0]), (256, 256)))
            if path == "/missing":
                return self.reply(404, b"not found", "text/plain")
            if path == "/gone":
                return self.reply(410, b"gone", "text/plain")
            if parts[0] == "flaky":
                if seen <= host.flaky_failures:
                    return self.reply(503, b"busy", "text/plain")
                return self.reply(200, jpeg_bytes(50))
            if path == "/always503":
                return self.reply(503, b"busy", "text/plain")
            if path == "/slow":
                host.stopping.wait(30)  # hangs until the test ends (bounded)
                return self.reply(200, jpeg_bytes(1))
            if path == "/loop":
                return self.reply(302, headers={"Location": "/loop"}, ctype="text/plain")
            if path == "/to-img":
                return self.reply(302, headers={"Location": "/img/7.jpg"}, ctype="text/plain")
            if path == "/to-file":
                return self.reply(302, headers={"Location": "file:///etc/passwd"}, ctype="text/plain")
            if path == "/page":
                return self.reply(200, b"<html><body>a gallery page</body></html>", "text/html; charset=utf-8")
            if path == "/fake":
                return self.reply(200, b"<html><body>an error page</body></html>", "image/jpeg")
            if path == "/noai":
                return self.reply(200, jpeg_bytes(3), headers={"X-Robots-Tag": "noai, noimageai"})
            if path == "/huge":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(200_000_000))
                self.end_headers()
                self.wfile.flush()
                host.stopping.wait(30)  # the body never comes; the client must not wait for it
                return None
            if path == "/stream-big":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\xff" * 65536
                try:
                    for _ in range(64):  # 4 MB at most, then the server gives up
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client hung up once over its cap: what it should do
                return None
            if parts[0] == "barrier":
                n = int(parts[1])
                with host.lock:
                    barrier = host.barriers.setdefault(n, threading.Barrier(n, timeout=10))
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    return self.reply(500, b"not concurrent", "text/plain")
                return self.reply(200, jpeg_bytes(60 + int(parts[2])))
            return self.reply(404, b"no route", "text/plain")

    return Handler


class LoopbackHub:
    """Repo files per revision, served the way the hub serves them: the tree API and resolve/."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, revision) -> path -> bytes
        self.requests: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.url = ""


def _hub_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def answer(self, method: str) -> None:
            path = unquote(urlparse(self.path).path)
            with hub.lock:
                hub.requests[(method, path)] += 1
            parts = path.strip("/").split("/")
            # /api/datasets/ORG/NAME/tree/REV[/sub]
            if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] == "tree":
                repo, rev = "/".join(parts[2:4]), parts[5]
                files = hub.files.get((repo, rev))
                if files is None:
                    return self.send(404, b'{"error": "Revision Not Found"}', {"Content-Type": "application/json",
                                                                               "X-Error-Code": "RevisionNotFound"})
                tree = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for p, b in files.items()]
                return self.send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
            # /datasets/ORG/NAME/resolve/REV/PATH
            if parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve":
                repo, rev, name = "/".join(parts[1:3]), parts[4], "/".join(parts[5:])
                data = hub.files.get((repo, rev), {}).get(name)
                if data is None:
                    return self.send(404, b"", {"X-Error-Code": "EntryNotFound"}, head=method == "HEAD")
                commit = hashlib.sha1(f"{repo}@{rev}".encode()).hexdigest()
                return self.send(200, data, {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit,
                                             "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                                 head=method == "HEAD")
            return self.send(404, b'{"error": "Repository not found"}',
                             {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"})

        def do_GET(self) -> None:  # noqa: N802
            self.answer("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self.answer("HEAD")

    return Handler


@contextmanager
def serve_hub() -> Iterator[LoopbackHub]:
    """A loopback hub: the tree API and resolve/ for the repos and revisions put in ``.files``."""
    hub = LoopbackHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _hub_handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def serve_images(**kwargs: Any) -> Iterator[ImageHost]:
    host = ImageHost(**kwargs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(host))
    server.daemon_threads = True
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        host.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
