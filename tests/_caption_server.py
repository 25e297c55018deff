"""A loopback OpenAI-compatible server for the caption tests: ``/v1/models`` and
``/v1/chat/completions``, answering as each test scripts it, counting requests and requests in flight."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# HTTP status, JSON body (or str sent as is), optional extra headers
Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


class FakeServer:
    """Records requests; ``reply(body, n_request)`` decides each chat answer, ``models`` the model list.
    Tracks requests in flight; ``hold`` (optional) runs before a chat answer, in the handler thread."""

    def __init__(self, reply: Callable[[dict[str, Any], int], Reply], delay_s: float = 0.0,
                 models: Reply | None = None):
        self.reply = reply
        self.delay_s = delay_s
        self.models: Reply = models or (200, {"object": "list", "data": [{"id": "served", "object": "model"}]})
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Condition()
        self.hold: Callable[[dict[str, Any]], None] | None = None

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length)) if length else {}
        with self.lock:
            self.paths.append(f"{method} {handler.path}")
            self.headers.append({k.lower(): v for k, v in handler.headers.items()})
            if method == "GET":
                answer: Reply = self.models
            else:
                self.requests.append(body)
                count = len(self.requests)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.lock.notify_all()
        if method == "POST":
            try:
                if self.hold is not None:
                    self.hold(body)
                time.sleep(self.delay_s)
                answer = self.reply(body, count)
            finally:
                with self.lock:
                    self.in_flight -= 1
                    self.lock.notify_all()
        status, payload, *extra = answer
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (extra[0] if extra else {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def chat_requests(self) -> int:
        return sum(p.startswith("POST") for p in self.paths)


Serve = Callable[..., tuple[FakeServer, str]]


def server_factory() -> Iterator[Serve]:
    """Yields ``start(reply, delay_s=0, models=None) -> (FakeServer, base_url)``; shuts them all down after."""
    servers: list[ThreadingHTTPServer] = []

    def start(reply: Callable[[dict[str, Any], int], Reply], delay_s: float = 0.0,
              models: Reply | None = None) -> tuple[FakeServer, str]:
        fake = FakeServer(reply, delay_s, models)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake.handle(self, "POST")

            def do_GET(self) -> None:  # noqa: N802
                fake.handle(self, "GET")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return fake, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def completion(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "served",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def images_in(body: dict[str, Any]) -> list[str]:
    return [part["image_url"]["url"] for part in body["messages"][1]["content"] if part["type"] == "image_url"]


SCENES = ["a red kite rises over a windy beach while children run along the wet sand below it",
           "an old fisherman mends a green net on the harbour wall beside stacked wooden crates",
           "a lighthouse glows against a violet evening sky as waves break on the dark rocks",
           "a café terrace fills with people sharing bread and coffee under striped awnings"]


def answer_json(n: int, summary: str = "a calm seaside town through one long summer day") -> str:
    return json.dumps({"summary": summary, "panels": [SCENES[i % 4] for i in range(n)]})


def good(body: dict[str, Any], _: int = 0) -> Reply:
    return 200, completion(answer_json(len(images_in(body))))




def dead_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
