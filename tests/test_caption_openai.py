"""The openai backend against a loopback HTTP server speaking ``/v1/chat/completions``."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _caption_helpers import make_composite
from PIL import Image

from iclora_data.caption import CaptionerError, CaptionSettings, caption_sets, load_captioner
from iclora_data.records import CompositeRecord
from iclora_data.store import RunStore

Reply = tuple[int, Any]  # HTTP status, JSON body (or str sent as is)


class FakeServer:
    """Records requests; ``reply(body, n_request)`` decides each answer. Tracks requests in flight."""

    def __init__(self, reply: Callable[[dict[str, Any], int], Reply], delay_s: float = 0.0):
        self.reply = reply
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self.lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in handler.headers.items()})
            self.paths.append(handler.path)
            count = len(self.requests)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            status, payload = self.reply(body, count)
        finally:
            with self.lock:
                self.in_flight -= 1
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[FakeServer, str]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(reply: Callable[[dict[str, Any], int], Reply], delay_s: float = 0.0) -> tuple[FakeServer, str]:
        fake = FakeServer(reply, delay_s)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


def good(body: dict[str, Any], _: int = 0) -> Reply:
    n = len(images_in(body))
    return 200, completion(json.dumps({"summary": "a set", "panels": [f"panel {i}" for i in range(n)]}))


def settings(base_url: str, **kw: Any) -> CaptionSettings:
    base = {"backend": "openai", "model": "served", "base_url": base_url, "max_attempts": 3,
            "retry_backoff_s": 0.01, "timeout_s": 5, "concurrency": 4}
    return CaptionSettings(**(base | kw))


@pytest.fixture
def comps(tmp_path: Path) -> tuple[Path, list[CompositeRecord]]:
    folder = tmp_path / "composites"
    return folder, [make_composite(folder, "three", 3, "film-storyboard"),
                    make_composite(folder, "two", 2, seed=1)]


def test_request_shape(serve: Callable[..., tuple[FakeServer, str]], comps: tuple[Path, list[CompositeRecord]],
                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = serve(good)
    monkeypatch.setenv("MY_CAPTION_KEY", "sk-test-123")
    folder, recs = comps
    out = caption_sets(recs, folder, RunStore(tmp_path), settings(url, api_key_env="MY_CAPTION_KEY"))
    assert [r.status for r in out] == ["ok", "ok"]
    assert out[0].caption.startswith("[MOVIE-SHOTS] a set [SCENE-1] panel 0")
    assert out[0].captioner == f"openai:served@{url}"
    assert fake.paths == ["/v1/chat/completions"] * 2
    assert all(h["authorization"] == "Bearer sk-test-123" for h in fake.headers)
    by_n = {len(images_in(b)): b for b in fake.requests}
    body = by_n[3]
    assert body["model"] == "served" and body["messages"][0]["role"] == "system"
    for data_url in images_in(body):
        assert data_url.startswith("data:image/jpeg;base64,")
        panel = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
        assert panel.format == "JPEG" and panel.size == (64, 64)  # one panel of the 3x1 composite
    assert body["messages"][1]["content"][-1]["type"] == "text"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    panels = fmt["json_schema"]["schema"]["properties"]["panels"]
    assert panels["minItems"] == panels["maxItems"] == 3
    assert "sk-test-123" not in json.dumps(out[0].__dict__)


def test_server_error_then_success_is_retried(serve: Callable[..., tuple[FakeServer, str]],
                                              comps: tuple[Path, list[CompositeRecord]], tmp_path: Path) -> None:
    fake, url = serve(lambda body, count: (500, {"error": {"message": "overloaded"}}) if count == 1 else good(body))
    folder, recs = comps
    out = caption_sets(recs[:1], folder, RunStore(tmp_path), settings(url))
    assert out[0].status == "ok" and out[0].attempts == 2 and len(fake.requests) == 2


@pytest.mark.parametrize(("reply", "reason"), [
    (lambda body, count: (200, completion('{"summary": "a set", "panels": ["one"')), "malformed JSON"),
    (lambda body, count: (200, completion(json.dumps({"summary": "s", "panels": ["a"]}))),
     "model returned 1 panel descriptions, expected 3"),
    (lambda body, count: (500, {"error": {"message": "boom"}}), "server answered HTTP 500"),
    (lambda body, count: (200, "this is not json"), "bad response"),
    (lambda body, count: (200, completion('{"summary": "cut', finish_reason="length")), "cut off"),
])
def test_persistent_bad_answers_are_reported_per_set(
        serve: Callable[..., tuple[FakeServer, str]], comps: tuple[Path, list[CompositeRecord]], tmp_path: Path,
        reply: Callable[[dict[str, Any], int], Reply], reason: str) -> None:
    # only the three-panel set gets the bad answer; the two-panel set goes on
    fake, url = serve(lambda body, count: reply(body, count) if len(images_in(body)) == 3 else good(body))
    folder, recs = comps
    three, two = caption_sets(recs, folder, RunStore(tmp_path), settings(url))
    assert two.status == "ok" and two.attempts == 1
    assert three.status == "failed" and three.caption == "" and three.attempts == 3
    assert three.error is not None and three.error.startswith("caption failed after 3 attempts:")
    assert reason in three.error
    assert sum(len(images_in(b)) == 3 for b in fake.requests) == 3


def test_unreachable_server_is_reported_per_set(comps: tuple[Path, list[CompositeRecord]], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder, recs = comps
    out = caption_sets(recs, folder, RunStore(tmp_path), settings(f"http://127.0.0.1:{port}/v1", max_attempts=2))
    for rec in out:
        assert rec.status == "failed" and rec.attempts == 2
        assert rec.error is not None and f"cannot reach http://127.0.0.1:{port}/v1" in rec.error


def test_concurrency_limit_is_respected(serve: Callable[..., tuple[FakeServer, str]], tmp_path: Path) -> None:
    fake, url = serve(good, delay_s=0.15)
    folder = tmp_path / "composites"
    recs = [make_composite(folder, f"s{i}", 2, seed=i) for i in range(6)]
    out = caption_sets(recs, folder, RunStore(tmp_path), settings(url, concurrency=2, batch_size=6))
    assert all(r.status == "ok" for r in out) and len(fake.requests) == 6
    assert fake.max_in_flight == 2


def test_timeout_is_retried_and_reported(serve: Callable[..., tuple[FakeServer, str]],
                                         comps: tuple[Path, list[CompositeRecord]], tmp_path: Path) -> None:
    fake, url = serve(good, delay_s=0.6)
    folder, recs = comps
    out = caption_sets(recs[1:], folder, RunStore(tmp_path), settings(url, timeout_s=0.2, max_attempts=2))
    assert out[0].status == "failed" and out[0].error is not None and "did not answer within 0.2 s" in out[0].error


def test_missing_api_key_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_CAPTION_KEY", raising=False)
    with pytest.raises(CaptionerError, match="NO_SUCH_CAPTION_KEY"):
        load_captioner(settings("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_CAPTION_KEY"))
