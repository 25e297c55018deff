"""The openai caption backend against a slow loopback server: throughput of the sliding window, and what
each fault costs in requests.

    python benchmarks/bench_caption_server.py [--sets 400] [--delay 0.2] [--concurrency 16] [--fault-sets 20]

1. throughput: every reply takes ``--delay`` seconds; ``--concurrency`` requests in flight can at best
   caption ``concurrency / delay`` sets per second (80/s at 16 and 0.2 s). Reports captions/s, its
   ratio to that ideal, and the most requests the server saw at once.
   The same with an instant server gives the client's own cost (JPEG encoding, JSON, checks).
2. faults: ``--fault-sets`` sets per fault, no delay; requests per set (chat requests, the probe apart),
   sets ok/failed, and whether the run failed as a whole (for faults of the server, not of a set).

Loopback only (127.0.0.1); every server answers a bounded number of requests.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_caption import make_sets  # noqa: E402

from iclora_data.caption import CaptionRunError, CaptionSettings, caption_sets  # noqa: E402
from iclora_data.records import CompositeRecord  # noqa: E402
from iclora_data.store import RunStore  # noqa: E402

_TEXTS = ["a red kite rises over a windy beach while children run along the wet sand below it",
          "an old fisherman mends a green net on the harbour wall beside stacked wooden crates",
          "a lighthouse glows against a violet evening sky as waves break on the dark rocks",
          "a café terrace fills with people sharing bread and coffee under striped awnings"]


def _completion(content: str) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": content}}]}


def _n_images(body: dict[str, Any]) -> int:
    return sum(p.get("type") == "image_url" for p in body["messages"][1]["content"])


def _good(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    n = _n_images(body)
    answer = {"summary": "a calm seaside town through one long summer day", "panels": [_TEXTS[i % 4] for i in range(n)]}
    return 200, _completion(json.dumps(answer)), {}


def _set_of(body: dict[str, Any]) -> str:
    text = body["messages"][1]["content"][-1]["text"]
    return text.split("describes it as: ", 1)[1].split()[0] if "describes it as: " in text else "?"


class Server:
    """A loopback OpenAI-compatible server; ``reply(body, tries_of_this_set)`` decides each chat answer."""

    def __init__(self, reply: Callable[[dict[str, Any], int], tuple[int, Any, dict[str, str]]], delay: float = 0.0,
                 models_status: int = 200):
        self.per_set: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._send(models_status, {"data": [{"id": "served"}]} if models_status == 200
                           else {"error": {"message": "invalid key"}}, {})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = _set_of(body)
                with outer.lock:
                    outer.per_set[key] += 1
                    tries = outer.per_set[key]
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(delay)
                    status, payload, headers = reply(body, tries)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                self._send(status, payload, headers)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _settings(url: str, **kw: Any) -> CaptionSettings:
    return CaptionSettings(**({"backend": "openai", "model": "served", "base_url": url, "max_attempts": 3,
                               "retry_backoff_s": 0.01, "timeout_s": 5, "concurrency": 16} | kw))


def _with_ids(recs: list[CompositeRecord]) -> list[CompositeRecord]:
    for r in recs:  # the set id travels in the instruction (as a hint), so the server can count per set
        r.source_caption = r.set_id
    return recs


def throughput(tmp: Path, sets: int, delay: float, concurrency: int) -> dict[str, Any]:
    recs = _with_ids(make_sets(tmp / "tp", sets))
    server = Server(lambda body, tries: _good(body), delay=delay)
    try:
        start = time.perf_counter()
        out = caption_sets(recs, tmp / "tp", RunStore(tmp / "tp-store"), _settings(server.url, concurrency=concurrency))
        seconds = time.perf_counter() - start
    finally:
        server.close()
    ideal = concurrency / delay if delay > 0 else None
    return {"sets": sets, "delay_s": delay, "concurrency": concurrency, "ok": sum(r.status == "ok" for r in out),
            "seconds": round(seconds, 2), "captions_per_s": round(sets / seconds, 1),
            "ideal_per_s": round(ideal, 1) if ideal else None,
            "of_ideal": round(sets / seconds / ideal, 2) if ideal else None, "max_in_flight": server.max_in_flight}


def _bad(content: str) -> Callable[[dict[str, Any], int], tuple[int, Any, dict[str, str]]]:
    return lambda body, tries: (200, _completion(content), {})


FAULTS: dict[str, Callable[[dict[str, Any], int], tuple[int, Any, dict[str, str]]]] = {
    "none": lambda body, tries: _good(body),
    "500 once": lambda body, tries: (500, {"error": {"message": "boom"}}, {}) if tries == 1 else _good(body),
    "429 once (Retry-After 0.05)": lambda body, tries: ((429, {"error": {"message": "slow down"}},
                                                         {"Retry-After": "0.05"}) if tries == 1 else _good(body)),
    "503 always": lambda body, tries: (503, {"error": {"message": "overloaded"}}, {}),
    "400 on the schema": lambda body, tries: ((400, {"error": {"message": "Unsupported JSON schema keyword"}}, {})
                                              if body.get("response_format", {}).get("type") == "json_schema"
                                              else _good(body)),
    "400 other (context length)": lambda body, tries: (400, {"error": {"message": "context length exceeded"}}, {}),
    "malformed JSON always": _bad('{"summary": "cut'),
    "refusal always": _bad(json.dumps({"summary": "I'm sorry, as an AI I cannot see images.", "panels": _TEXTS})),
    "identical panels always": lambda body, tries: (200, _completion(json.dumps(
        {"summary": "a town", "panels": [_TEXTS[0]] * _n_images(body)})), {}),
    "bad once, then good": lambda body, tries: (200, _completion("not json"), {}) if tries == 1 else _good(body),
}


def faults(tmp: Path, sets: int) -> list[dict[str, Any]]:
    rows = []
    for name, reply in FAULTS.items():
        recs = _with_ids(make_sets(tmp / "f", sets))
        server = Server(reply)
        start = time.perf_counter()
        try:
            out = caption_sets(recs, tmp / "f", RunStore(tmp / f"store-{len(rows)}"), _settings(server.url))
            ok, failed, run_error = sum(r.status == "ok" for r in out), sum(r.status == "failed" for r in out), ""
        except CaptionRunError as exc:
            ok, failed, run_error = 0, 0, str(exc)[:60]
        finally:
            server.close()
        total = sum(server.per_set.values())
        rows.append({"fault": name, "requests_per_set": round(total / sets, 2), "ok": ok, "failed": failed,
                     "run_error": run_error, "seconds": round(time.perf_counter() - start, 2)})
    for name, status in (("401 (probe)", 401),):
        server = Server(FAULTS["none"], models_status=status)
        recs = _with_ids(make_sets(tmp / "f", sets))
        start = time.perf_counter()
        try:
            caption_sets(recs, tmp / "f", RunStore(tmp / "store-401"), _settings(server.url))
            run_error = ""
        except CaptionRunError as exc:
            run_error = str(exc)[:60]
        finally:
            server.close()
        rows.append({"fault": name, "requests_per_set": round(sum(server.per_set.values()) / sets, 2), "ok": 0,
                     "failed": 0, "run_error": run_error, "seconds": round(time.perf_counter() - start, 2)})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    start = time.perf_counter()
    try:
        caption_sets(_with_ids(make_sets(tmp / "f", sets)), tmp / "f", RunStore(tmp / "store-dead"), _settings(dead))
        run_error = ""
    except CaptionRunError as exc:
        run_error = str(exc)[:60]
    rows.append({"fault": "server not running", "requests_per_set": 0.0, "ok": 0, "failed": 0,
                 "run_error": run_error, "seconds": round(time.perf_counter() - start, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=400)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault-sets", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tp = throughput(Path(tmp), args.sets, args.delay, args.concurrency)
        print(json.dumps({"throughput": tp}))
        # the same sets with an instant server: the client's own cost per set (images, JSON, checks)
        print(json.dumps({"client_only": throughput(Path(tmp) / "instant", args.sets, 0.0, args.concurrency)}))
        print(f"{'fault':<30} {'req/set':>8} {'ok':>4} {'failed':>6} {'seconds':>8}  run error")
        for row in faults(Path(tmp), args.fault_sets):
            print(f"{row['fault']:<30} {row['requests_per_set']:>8} {row['ok']:>4} {row['failed']:>6} "
                  f"{row['seconds']:>8}  {row['run_error']}")


if __name__ == "__main__":
    main()
