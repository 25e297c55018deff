"""URL panels fetched from a loopback image host that misbehaves the way real hosts do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _http_helpers import jpeg_bytes, png_bytes, serve_images

from iclora_data.config import ComposeSettings
from iclora_data.ingest import ingest
from iclora_data.records import SourceSet
from iclora_data.sources import read_source
from iclora_data.sources.download import fetch_urls
from iclora_data.sources.settings import DownloadSettings
from iclora_data.store import RunStore

LOOPBACK = DownloadSettings(allow_private_addresses=True, timeout_s=1.0, retries=2, retry_backoff_s=0.0,
                            max_bytes=1_000_000, concurrency=8)


def one_set(set_id: str, *urls: str) -> SourceSet:
    return SourceSet(set_id, list(urls), list(urls))


def reasons(failed) -> dict[str, str]:
    return {f.path: f.reason for f in failed}


def test_good_urls_are_downloaded_byte_for_byte_and_cached(tmp_path: Path) -> None:
    with serve_images() as host:
        urls = [f"{host.url}/img/1.jpg", f"{host.url}/png/2.png", f"{host.url}/to-img"]
        sets, failed = fetch_urls([one_set("a", *urls)], tmp_path / "dl", LOOPBACK)
        assert failed == [] and sets[0].rejection is None
        got = [read_source(p) for p in sets[0].paths]
        # the oracle: what the server sent (an octet-stream PNG and a redirect are images too)
        assert got == [jpeg_bytes(1), png_bytes(2), jpeg_bytes(7)]
        assert all(Path(p).is_relative_to(tmp_path / "dl") for p in sets[0].paths)
        assert sets[0].files == urls  # the ledger keeps the URL
        before = host.total()
        again, failed_again = fetch_urls([one_set("a", *urls)], tmp_path / "dl", LOOPBACK)
        assert host.total() == before  # a re-run fetches nothing
        assert again[0].paths == sets[0].paths and failed_again == []
        assert host.user_agents == {LOOPBACK.user_agent} and LOOPBACK.user_agent.startswith("iclora/")


def test_each_failure_is_a_ledger_reason_and_rejects_its_set(tmp_path: Path) -> None:
    with serve_images() as host:
        u = host.url
        bad = {f"{u}/missing": "HTTP 404", f"{u}/gone": "HTTP 410", f"{u}/page": "not an image: text/html",
               f"{u}/loop": "too many redirects (more than 5)",
               f"{u}/to-file": "only http and https URLs are fetched, not file://",
               f"{u}/fake": "not an image: the downloaded bytes are no image format Pillow reads",
               f"{u}/huge": "too large: declares 200.0 MB, over the limit of 1.0 MB (source.download.max_bytes)",
               f"{u}/stream-big": "too large: more than 1.0 MB (source.download.max_bytes)",
               f"{u}/noai": "the server forbids AI use of this image (X-Robots-Tag: noai, noimageai)",
               f"{u}/always503": "HTTP 503 (3 attempts)"}
        started = time.monotonic()
        sets, failed = fetch_urls([one_set(f"s{i}", f"{u}/img/{i}.jpg", url) for i, url in enumerate(bad)],
                                  tmp_path / "dl", LOOPBACK)
        assert time.monotonic() - started < 20  # the 200 MB body and the hanging host do not hold it up
        assert reasons(failed) == bad
        for src, url in zip(sets, bad, strict=True):
            assert src.rejection == f"{url}: {bad[url]}"
            assert read_source(src.paths[0]) == jpeg_bytes(int(src.set_id[1:]))  # its good panel was fetched
        # retries only on transient failures, and bounded
        assert host.count("/missing") == 1 and host.count("/page") == 1
        assert host.count("/always503") == LOOPBACK.retries + 1
        assert host.count("/loop") == 6  # the first request and 5 redirects
        # failures for good are remembered; transient ones are tried again by the next run
        fetch_urls([one_set("x", f"{u}/missing", f"{u}/always503")], tmp_path / "dl", LOOPBACK)
        assert host.count("/missing") == 1 and host.count("/always503") == 2 * (LOOPBACK.retries + 1)


def test_transient_failures_are_retried_until_they_pass(tmp_path: Path) -> None:
    with serve_images(flaky_failures=2) as host:
        sets, failed = fetch_urls([one_set("a", f"{host.url}/flaky/1", f"{host.url}/img/4.jpg")],
                                  tmp_path / "dl", LOOPBACK)
        assert failed == [] and read_source(sets[0].paths[0]) == jpeg_bytes(50)
        assert host.count("/flaky/1") == 3
    with serve_images(flaky_failures=5) as host:
        sets, failed = fetch_urls([one_set("a", f"{host.url}/flaky/1")], tmp_path / "dl2", LOOPBACK)
        assert reasons(failed) == {f"{host.url}/flaky/1": "HTTP 503 (3 attempts)"}


def test_a_hanging_host_times_out_within_the_bound(tmp_path: Path) -> None:
    settings = LOOPBACK.model_copy(update={"timeout_s": 0.3, "retries": 1})
    with serve_images() as host:
        started = time.monotonic()
        _, failed = fetch_urls([one_set("a", f"{host.url}/slow")], tmp_path / "dl", settings)
        elapsed = time.monotonic() - started
    assert reasons(failed) == {f"{host.url}/slow": "timed out after 0.3 s (2 attempts)"}
    assert elapsed < 3


def test_private_addresses_and_other_schemes_are_never_requested(tmp_path: Path) -> None:
    strict = LOOPBACK.model_copy(update={"allow_private_addresses": False})
    with serve_images() as host:
        url = f"{host.url}/img/1.jpg"
        _, failed = fetch_urls([one_set("a", url, "file:///etc/passwd", "ftp://example.org/x.jpg")],
                               tmp_path / "dl", strict)
        assert host.total() == 0
    got = reasons(failed)
    assert got[url].startswith("host 127.0.0.1 is a private, loopback or reserved address (127.0.0.1)")
    assert got["file:///etc/passwd"] == "only http and https URLs are fetched, not file://"
    assert got["ftp://example.org/x.jpg"] == "only http and https URLs are fetched, not ftp://"


def test_downloads_run_concurrently(tmp_path: Path) -> None:
    # every request waits until 6 are in flight at once: a pool of 6 passes, a sequential loop could not
    settings = LOOPBACK.model_copy(update={"concurrency": 6, "timeout_s": 15, "retries": 0})
    with serve_images() as host:
        urls = [f"{host.url}/barrier/6/{i}" for i in range(6)]
        sets, failed = fetch_urls([one_set("a", *urls)], tmp_path / "dl", settings)
    assert failed == [] and len({read_source(p) for p in sets[0].paths}) == 6


def test_a_manifest_of_urls_is_built_into_a_composite(tmp_path: Path) -> None:
    from iclora_data.compose import compose_set

    with serve_images() as host:
        manifest = tmp_path / "sets.jsonl"
        manifest.write_text(
            json.dumps({"set_id": "web", "images": [f"{host.url}/img/11.jpg", f"{host.url}/img/12.jpg"]}) + "\n"
            + json.dumps({"set_id": "dead", "images": [f"{host.url}/img/13.jpg", f"{host.url}/missing"]}) + "\n"
            + json.dumps({"set_id": "local", "images": ["file:///etc/passwd", f"{host.url}/img/1.jpg"]}) + "\n")
        ingested = ingest(manifest)
        assert ingested.sets[0].paths == ingested.sets[0].files  # URL locators, not yet fetched
        assert ingested.sets[2].rejection == "file:///etc/passwd: only http and https URLs are fetched, not file://"
        sets, failed = fetch_urls(ingested.sets, tmp_path / "out" / ".iclora" / "downloads", LOOPBACK)
    assert reasons(failed) == {f"{host.url}/missing": "HTTP 404"}
    prepared = compose_set(sets[0], ComposeSettings(), RunStore(tmp_path / "out"))
    assert prepared.rejection is None and prepared.composite is not None
    assert prepared.composite.source_files == ingested.sets[0].files
    assert sets[1].rejection == f"{host.url}/missing: HTTP 404"


def test_reading_an_unfetched_url_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(OSError, match="was not downloaded"):
        read_source("https://example.org/a.jpg")
