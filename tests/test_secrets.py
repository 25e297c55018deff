"""The one scrubber: registered secrets and credential shapes leave no message, object or log line."""

from __future__ import annotations

import io
import logging

import pytest

from iclora_data.secrets import REDACTED, register_secret, scrub, scrub_obj

SECRET = "plain-registered-secret-0123456789"  # no recognisable shape: only registration catches it


def test_registered_secret_is_scrubbed_from_text_and_json_like_data():
    assert scrub(f"bad key {SECRET}") == f"bad key {SECRET}"  # not registered yet: nothing to go by
    register_secret(SECRET)
    assert scrub(f"bad key {SECRET}!") == f"bad key {REDACTED}!"
    data = {"error": [f"echo {SECRET}"], SECRET: ("x", 1)}
    assert scrub_obj(data) == {"error": [f"echo {REDACTED}"], REDACTED: ["x", 1]}
    assert scrub("Authorization: Bearer abc.def") == f"Authorization: Bearer {REDACTED}"
    assert scrub("token hf_" + "a" * 30) == f"token {REDACTED}"


def test_log_records_are_scrubbed_when_created_including_tracebacks():
    register_secret(SECRET)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    log = logging.getLogger("iclora-test-secrets")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("server answered %s", f"401 key {SECRET} invalid")
        try:
            raise RuntimeError(f"echo {SECRET}")
        except RuntimeError:
            log.exception("caption failed")
    finally:
        log.removeHandler(handler)
    text = buf.getvalue()
    assert SECRET not in text
    assert f"401 key {REDACTED} invalid" in text and f"RuntimeError: echo {REDACTED}" in text


# ----- end to end: a build against a caption server that echoes the API key ----------------------

E2E_KEY = "plain-openai-key-ABCDEFGH12345678"  # no sk- shape: only the build's registration catches it


@pytest.mark.usefixtures("prefect_harness")
def test_an_echoed_api_key_reaches_no_output_artifact_or_log(tmp_path, monkeypatch):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pyarrow.parquet as pq
    from prefect import get_client

    from flows.build_dataset import build_dataset
    from tests._flows_helpers import many_sets

    def answer(body: dict, auth: str) -> tuple[int, dict]:
        key = auth.removeprefix("Bearer ")
        n = sum(part["type"] == "image_url" for part in body["messages"][1]["content"])
        text = json.dumps(body)
        if "set-0001" in text or n == 0:  # a request the server refuses, quoting the key it was sent
            return 400, {"error": {"message": f"Bad request from key {key}: image too small", "type": "invalid"}}
        scenes = ["a red kite rises over a windy beach while children run along the wet sand below it",
                  "an old fisherman mends a green net on the harbour wall beside stacked wooden crates"]
        echo = f" near the sign that reads {key}" if "set-0000" in text else ""  # a model that echoes it
        content = {"summary": f"a calm seaside town through one long summer day{echo}",
                   "panels": [scenes[i % 2] + echo for i in range(n)]}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "served",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": json.dumps(content)}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    seen: list[str] = []

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the served models, as vLLM lists them
            seen.append(self.headers.get("Authorization", ""))
            data = json.dumps({"object": "list", "data": [{"id": "served", "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(self.headers.get("Authorization", ""))
            status, payload = answer(body, self.headers.get("Authorization", ""))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("ICLORA_E2E_KEY", E2E_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    source = many_sets(tmp_path / "SOURCE", 3)
    # each request names its set (its hint): set-0000's caption echoes the key, set-0001 gets a 400 that
    # quotes it, set-0002 is captioned plainly
    for name in ("set-0000", "set-0001", "set-0002"):
        (source / name / "caption.txt").write_text(name)
    out = tmp_path / "OUT"
    config = {"caption": {"backend": "openai", "model": "served", "base_url": f"http://127.0.0.1:"
                          f"{server.server_address[1]}/v1", "api_key_env": "ICLORA_E2E_KEY", "max_attempts": 1,
                          "timeout_s": 10}}
    try:
        result = build_dataset(str(source), str(out), config)
    finally:
        server.shutdown()
        server.server_close()
    assert seen and all(a == f"Bearer {E2E_KEY}" for a in seen)  # the server really had the key to echo
    assert result["counts"]["kept"] >= 1

    leaks = [p for p in out.rglob("*") if p.is_file() and E2E_KEY.encode() in p.read_bytes()]
    assert leaks == []  # report.json, build.json, captions, composites' sidecars, gallery, the run store
    report = (out / "report.json").read_text()
    assert REDACTED in report or REDACTED in "".join(p.read_text() for p in (out / "captions").glob("*.json"))
    for shard in (out / "dataset" / "data").glob("*.parquet"):  # compressed: look at the values
        table = pq.read_table(shard, columns=["caption", "summary", "panel_captions"])
        assert E2E_KEY not in json.dumps(table.to_pylist())

    async def artifacts_and_logs() -> str:
        async with get_client() as client:
            artifacts = await client.read_artifacts()
            logs = await client.read_logs()
        return json.dumps([a.data for a in artifacts], default=str) + json.dumps([lg.message for lg in logs])

    import asyncio

    assert E2E_KEY not in asyncio.run(artifacts_and_logs())
