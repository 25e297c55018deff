"""The openai backend against a loopback HTTP server speaking ``/v1/models`` and ``/v1/chat/completions``,
misbehaving the way real servers do: down, refusing the key, not serving the model, rejecting the schema,
rate limiting, failing, slow, and answering badly."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _caption_helpers import make_composite
from _caption_server import (
    SCENES,
    Reply,
    Serve,
    answer_json,
    completion,
    dead_url,
    good,
    images_in,
    server_factory,
)
from PIL import Image

from iclora_data.caption import (
    CaptionerError,
    CaptionRunError,
    CaptionSettings,
    caption_sets,
    check_captioner,
    load_captioner,
)
from iclora_data.caption.openai_backend import OpenAICaptioner, retry_after_s
from iclora_data.records import CompositeRecord
from iclora_data.store import RunStore


@pytest.fixture
def serve() -> Iterator[Serve]:
    yield from server_factory()


def settings(base_url: str, **kw: Any) -> CaptionSettings:
    base = {"backend": "openai", "model": "served", "base_url": base_url, "max_attempts": 3,
            "retry_backoff_s": 0.01, "timeout_s": 5, "concurrency": 4}
    return CaptionSettings(**(base | kw))


@pytest.fixture
def comps(tmp_path: Path) -> tuple[Path, list[CompositeRecord]]:
    folder = tmp_path / "composites"
    return folder, [make_composite(folder, "three", 3, "film-storyboard"),
                    make_composite(folder, "two", 2, seed=1)]


# --- what a request carries -------------------------------------------------------------------------


def test_request_shape(serve: Serve, comps: tuple[Path, list[CompositeRecord]], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = serve(good)
    monkeypatch.setenv("MY_CAPTION_KEY", "sk-test-1234567890abcdef")
    folder, recs = comps
    extra = {"repetition_penalty": 1.05, "mm_processor_kwargs": {"max_pixels": 1000}}
    out = caption_sets(recs, folder, RunStore(tmp_path),
                       settings(url, api_key_env="MY_CAPTION_KEY", extra_body=extra))
    assert [r.status for r in out] == ["ok", "ok"], [r.error for r in out]
    assert out[0].caption.startswith("[MOVIE-SHOTS] A calm seaside town through one long summer day, [SCENE-1] a red")
    assert out[0].captioner == f"openai:served@{url}"
    assert fake.paths[0] == "GET /v1/models"  # the probe, before any set
    assert fake.paths[1:] == ["POST /v1/chat/completions"] * 2
    assert all(h["authorization"] == "Bearer sk-test-1234567890abcdef" for h in fake.headers)
    by_n = {len(images_in(b)): b for b in fake.requests}
    body = by_n[3]
    assert body["model"] == "served" and body["messages"][0]["role"] == "system"
    assert body["repetition_penalty"] == 1.05 and body["mm_processor_kwargs"] == {"max_pixels": 1000}
    for data_url in images_in(body):
        assert data_url.startswith("data:image/jpeg;base64,")
        panel = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
        assert panel.format == "JPEG" and panel.size == (64, 64)  # one panel of the 3x1 composite
    assert body["messages"][1]["content"][-1]["type"] == "text"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    panels = fmt["json_schema"]["schema"]["properties"]["panels"]
    assert panels["minItems"] == panels["maxItems"] == 3


def test_escaped_quotes_and_non_ascii_survive(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                              tmp_path: Path) -> None:
    folder = tmp_path / "composites"
    font = make_composite(folder, "font", 4, "font-design")
    texts = ['displays "Pop Candy" in bright pink with a polka dot background and tiny stars',
             'shows "Café Zürich" in purple, surrounded by candy illustrations and soft shadows',
             'has "Yum!" in a mix of bright colours over a pale mint background with sprinkles',
             'presents "Delicious" against a striped background, ready for fun packaging designs']
    answer = json.dumps({"summary": "a playful bubble font in a vibrant pop-art style", "panels": texts})
    assert '\\"Pop Candy\\"' in answer  # the model's JSON escapes its quotes
    fake, url = serve(lambda body, count: (200, completion(answer)))
    rec, = caption_sets([font], folder, RunStore(tmp_path), settings(url))
    assert rec.status == "ok", rec.error
    assert rec.caption == ('The four-panel image showcases a playful bubble font in a vibrant pop-art style; '
                           '[TOP-LEFT] ' + texts[0] + '; [TOP-RIGHT] ' + texts[1] + '; [BOTTOM-LEFT] ' + texts[2]
                           + '; [BOTTOM-RIGHT] ' + texts[3] + '.')


# --- failures of the run: probe, auth, model --------------------------------------------------------


def test_unreachable_server_fails_the_run_in_seconds(comps: tuple[Path, list[CompositeRecord]],
                                                     tmp_path: Path) -> None:
    folder, recs = comps
    url = dead_url()
    slow_backoff = settings(url, retry_backoff_s=30)  # a refused connection must not wait for backoff
    started = time.monotonic()
    with pytest.raises(CaptionRunError, match=f"cannot reach the caption server at {url}"):
        check_captioner(slow_backoff)
    with pytest.raises(CaptionRunError, match="cannot reach"):
        caption_sets(recs, folder, RunStore(tmp_path), slow_backoff)
    assert time.monotonic() - started < 10
    assert RunStore(tmp_path).get_json("captions", "x") is None


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_fails_the_run_and_is_scrubbed(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   status: int) -> None:
    secret = "sk-live-abcdefghijklmnop0123"
    echo = {"error": {"message": f"Incorrect API key provided: {secret}"}}
    fake, url = serve(good, models=(status, echo))
    monkeypatch.setenv("CAPTION_KEY_UNDER_TEST", secret)
    folder, recs = comps
    with pytest.raises(CaptionRunError, match=f"refused the API key \\(HTTP {status}") as info:
        caption_sets(recs, folder, RunStore(tmp_path), settings(url, api_key_env="CAPTION_KEY_UNDER_TEST"))
    assert secret not in str(info.value) and "Incorrect API key provided: ***" in str(info.value)
    assert fake.paths == ["GET /v1/models"]  # not retried, no set sent


def test_key_revoked_mid_run_fails_the_run_not_the_sets(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                                        tmp_path: Path) -> None:
    fake, url = serve(lambda body, count: (401, {"error": {"message": "key revoked"}}))
    folder, recs = comps
    with pytest.raises(CaptionRunError, match="refused the API key"):
        caption_sets(recs, folder, RunStore(tmp_path), settings(url, concurrency=1))
    assert fake.chat_requests() == 1  # the first refusal stops the run; no retries, no second set


def test_model_not_served_fails_the_run_naming_what_is(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                                       tmp_path: Path) -> None:
    fake, url = serve(good, models=(200, {"data": [{"id": "Qwen/Qwen2.5-VL-7B-Instruct"}]}))
    with pytest.raises(CaptionRunError, match="does not serve model 'served'; it serves: Qwen/Qwen2.5-VL-7B"):
        check_captioner(settings(url))
    assert fake.chat_requests() == 0


def test_404_without_model_list_fails_the_run(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                             tmp_path: Path) -> None:
    not_found = (404, {"error": {"message": "The model `served` does not exist."}})
    fake, url = serve(lambda body, count: not_found, models=(404, {"detail": "Not Found"}))
    folder, recs = comps
    with pytest.raises(CaptionRunError, match="has no model 'served'.*does not exist"):
        caption_sets(recs, folder, RunStore(tmp_path), settings(url))
    assert fake.paths == ["GET /v1/models", "POST /v1/chat/completions"]  # the one-token probe, not retried
    assert fake.requests[0]["max_tokens"] == 1


def test_missing_api_key_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_CAPTION_KEY", raising=False)
    with pytest.raises(CaptionerError, match="NO_SUCH_CAPTION_KEY"):
        load_captioner(settings("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_CAPTION_KEY"))


# --- failures of a request: retried, fallen back, or the set's --------------------------------------


def test_schema_rejected_falls_back_once_to_json_object(serve: Serve, tmp_path: Path) -> None:
    def reply(body: dict[str, Any], count: int) -> Reply:
        if body.get("response_format", {}).get("type") == "json_schema":
            return 400, {"error": {"message": "Unsupported JSON schema keyword: minItems", "type": "BadRequest"}}
        return good(body)

    fake, url = serve(reply)
    folder = tmp_path / "composites"
    recs = [make_composite(folder, f"s{i}", 2, seed=i) for i in range(5)]
    captioner = OpenAICaptioner(settings(url, concurrency=1), "openai:served")
    out = caption_sets(recs, folder, RunStore(tmp_path), settings(url, concurrency=1), captioner=captioner)
    assert all(r.status == "ok" for r in out), [r.error for r in out]
    formats = [b.get("response_format", {}).get("type") for b in fake.requests]
    assert formats == ["json_schema"] + ["json_object"] * 5  # one rejection, then every set falls back
    assert len(captioner.notes) == 1 and "fell back to json_object" in captioner.notes[0]
    assert "Unsupported JSON schema keyword" in captioner.notes[0]
    assert all(r.captioner == "openai:served (response_format json_object)" for r in out)


def test_schema_and_json_object_rejected_fall_back_to_unconstrained(serve: Serve, tmp_path: Path) -> None:
    def reply(body: dict[str, Any], count: int) -> Reply:
        if "response_format" in body:
            return 400, {"error": {"message": "response_format is not supported by this model"}}
        return 200, completion("Here it is:\n```json\n" + answer_json(2) + "\n```")

    fake, url = serve(reply)
    folder = tmp_path / "composites"
    rec, = caption_sets([make_composite(folder, "s", 2)], folder, RunStore(tmp_path), settings(url))
    assert rec.status == "ok", rec.error
    assert [b.get("response_format", {}).get("type") for b in fake.requests] == ["json_schema", "json_object", None]


def test_other_400_fails_the_set_without_retrying(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                                  tmp_path: Path) -> None:
    too_long = (400, {"error": {"message": "This model's maximum context length is 4096 tokens"}})
    fake, url = serve(lambda body, count: too_long if len(images_in(body)) == 3 else good(body))
    folder, recs = comps
    three, two = caption_sets(recs, folder, RunStore(tmp_path), settings(url, max_attempts=3))
    assert two.status == "ok" and three.status == "failed"
    assert three.error is not None and "maximum context length" in three.error
    assert sum(len(images_in(b)) == 3 for b in fake.requests) == 1  # the same request would be refused again


def test_429_waits_as_long_as_retry_after_says(serve: Serve, tmp_path: Path) -> None:
    limited = (429, {"error": {"message": "rate limited"}}, {"Retry-After": "7"})
    fake, url = serve(lambda body, count: limited if count == 1 else good(body))
    folder = tmp_path / "composites"
    waits: list[float] = []
    captioner = OpenAICaptioner(settings(url), "openai:served", sleep=waits.append)
    rec, = caption_sets([make_composite(folder, "s", 2)], folder, RunStore(tmp_path), settings(url),
                        captioner=captioner)
    assert rec.status == "ok" and rec.attempts == 1 and fake.chat_requests() == 2
    assert waits == [7.0]  # Retry-After, not the 0.01 s backoff


def test_retry_after_as_an_http_date() -> None:
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    wait = retry_after_s(future)
    assert wait is not None and 25 <= wait <= 31
    assert retry_after_s("garbage") is None and retry_after_s(None) is None and retry_after_s("0") == 0.0


def test_server_error_then_success_is_retried(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                              tmp_path: Path) -> None:
    fake, url = serve(lambda body, count: (500, {"error": {"message": "overloaded"}}) if count == 1 else good(body))
    folder, recs = comps
    out = caption_sets(recs[:1], folder, RunStore(tmp_path), settings(url))
    assert out[0].status == "ok" and out[0].attempts == 1 and fake.chat_requests() == 2


def test_persistent_server_errors_fail_the_set_with_bounded_requests(
        serve: Serve, comps: tuple[Path, list[CompositeRecord]], tmp_path: Path) -> None:
    fake, url = serve(lambda body, count: (503, {"error": {"message": "boom"}}) if len(images_in(body)) == 3
                      else good(body))
    folder, recs = comps
    three, two = caption_sets(recs, folder, RunStore(tmp_path), settings(url, max_attempts=2))
    assert two.status == "ok" and three.status == "failed"
    assert three.error == "caption failed after 1 attempt: server answered HTTP 503: boom (after 2 tries)"
    assert sum(len(images_in(b)) == 3 for b in fake.requests) == 2  # max_attempts HTTP tries, not squared


def test_timeout_is_retried_and_reported(serve: Serve, comps: tuple[Path, list[CompositeRecord]],
                                         tmp_path: Path) -> None:
    release = threading.Event()
    fake, url = serve(good)
    fake.hold = lambda body: release.wait(5)  # never answers in time until the test ends
    folder, recs = comps
    try:
        out = caption_sets(recs[1:], folder, RunStore(tmp_path), settings(url, timeout_s=0.2, max_attempts=2))
    finally:
        release.set()
    assert out[0].status == "failed" and out[0].error is not None and "did not answer within 0.2 s" in out[0].error


@pytest.mark.parametrize(("reply", "reason"), [
    (lambda n: '{"summary": "a set", "panels": ["one"', "malformed JSON"),
    (lambda n: json.dumps({"summary": "s", "panels": ["a"]}), "model returned 1 panel descriptions, expected 3"),
    (lambda n: json.dumps({"summary": "I'm sorry, but as an AI I cannot see the images you provided.",
                           "panels": SCENES[:n]}), "summary is a refusal"),
    (lambda n: json.dumps({"summary": "a seaside town", "panels": [SCENES[0]] * n}),
     "panels 1 and 2 have identical descriptions"),
    (lambda n: json.dumps({"summary": "a seaside town", "panels": [SCENES[0], SCENES[0] + " today", SCENES[2]]}),
     "panels 1 and 2 have near-identical descriptions"),
    (lambda n: json.dumps({"summary": "a seaside town", "panels": ["[SCENE-1] " + SCENES[0], *SCENES[1:n]]}),
     "panel 1 contains the leaked tag [SCENE-1]"),
    (lambda n: json.dumps({"summary": "the the the the the", "panels": SCENES[:n]}), "in a loop"),
    (lambda n: json.dumps({"summary": "**A seaside town** in summer", "panels": SCENES[:n]}), "markdown"),
])
def test_bad_answers_are_retried_with_the_reason_then_fail_the_set(
        serve: Serve, comps: tuple[Path, list[CompositeRecord]], tmp_path: Path,
        reply: Callable[[int], str], reason: str) -> None:
    # only the three-panel set gets the bad answer; the two-panel set goes on
    fake, url = serve(lambda body, count: (200, completion(reply(3))) if len(images_in(body)) == 3 else good(body))
    folder, recs = comps
    three, two = caption_sets(recs, folder, RunStore(tmp_path), settings(url))
    assert two.status == "ok" and two.attempts == 1
    assert three.status == "failed" and three.caption == "" and three.attempts == 3
    assert three.error is not None and three.error.startswith("caption failed after 3 attempts:")
    assert reason in three.error
    sent = [b for b in fake.requests if len(images_in(b)) == 3]
    assert len(sent) == 3
    # retries tell the model why, and sample (a greedy retry would repeat the same answer)
    assert "A previous answer was rejected because" in sent[1]["messages"][1]["content"][-1]["text"]
    assert sent[0]["temperature"] == 0.0 and sent[1]["temperature"] > 0


# --- the sliding window -------------------------------------------------------------------------------


def test_window_keeps_n_in_flight_and_never_more(serve: Serve, tmp_path: Path) -> None:
    fake, url = serve(good)
    width = 4

    def hold(body: dict[str, Any]) -> None:
        with fake.lock:  # answer only once the window is full (or the last few requests are in)
            fake.lock.wait_for(lambda: fake.in_flight >= width or len(fake.requests) >= 10, timeout=10)

    fake.hold = hold
    folder = tmp_path / "composites"
    recs = [make_composite(folder, f"s{i}", 2, seed=i) for i in range(10)]
    out = caption_sets(recs, folder, RunStore(tmp_path), settings(url, concurrency=width))
    assert all(r.status == "ok" for r in out) and fake.chat_requests() == 10
    assert fake.max_in_flight == width


def test_a_slow_set_does_not_hold_up_the_others(serve: Serve, tmp_path: Path) -> None:
    """A sliding window: while one request hangs, the other slots go through every other set. Chunks that
    wait for their slowest member would send only the slow set's chunk-mates."""
    fake, url = serve(good)
    others_done = threading.Event()
    answered: list[str] = []

    def hold(body: dict[str, Any]) -> None:
        text = body["messages"][1]["content"][-1]["text"]
        if "SLOW-SET" in text:
            others_done.wait(10)

    fake.hold = hold
    folder = tmp_path / "composites"
    recs = [make_composite(folder, "slow", 2, source_caption="SLOW-SET")]
    recs += [make_composite(folder, f"s{i}", 2, seed=i + 1) for i in range(7)]

    def on_result(rec: Any) -> None:
        answered.append(rec.set_id)
        if len(answered) == 7:
            others_done.set()

    out = caption_sets(recs, folder, RunStore(tmp_path), settings(url, concurrency=2), on_result=on_result)
    assert all(r.status == "ok" for r in out)
    assert answered[-1] == "slow" and others_done.is_set()  # all seven others finished while it hung
