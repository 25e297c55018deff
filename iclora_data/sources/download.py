"""Image URLs in manifests and datasets, fetched the way img2dataset does it: a pool of concurrent
downloads per shard, a timeout per download, bounded retries on transient failures only, a size
cap (declared and streamed), the content type and the decoded header checked before a file is
kept, redirects followed by hand (bounded, each hop checked), http/https only, no private
addresses unless allowed, a user agent that says what it is, and ``X-Robots-Tag: noai`` honoured.

Downloads are cached by URL in ``OUT/.iclora/downloads/``: a file and a JSON note per URL. A
re-run fetches nothing that succeeded or failed for good (4xx, not an image, too large); transient
failures (timeouts, 5xx, 429, connection errors) are tried again by the next run.

The address check resolves the host before connecting; a host whose DNS answer changes between
that check and httpx's own lookup (DNS rebinding) is not caught. Where that matters, run builds
on a machine whose network cannot reach private services.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from iclora_data.records import FileEntry, SourceSet
from iclora_data.sources.settings import DownloadSettings
from iclora_data.sources.spool import write_replaceable

DOWNLOADS_DIR = "downloads"
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_IMAGE_TYPES_BESIDES_IMAGE = {"application/octet-stream", "binary/octet-stream"}  # hosts that do not know
_NO_AI = {"noai", "noimageai"}  # X-Robots-Tag directives that forbid use for AI training


def url_problem(url: str) -> str | None:
    """Why a URL is never fetched, judged from its text alone (scheme, host), or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"malformed URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"only http and https URLs are fetched, not {parts.scheme or 'a URL without a scheme'}://"
    if not parts.hostname:
        return "URL has no host"
    return None


class _Failure(Exception):
    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.transient = reason, transient


@dataclass
class Download:
    url: str
    path: Path | None  # the downloaded file, when it was kept
    reason: str | None  # why not, in the ledger's words
    fetched: bool  # False when the cache answered


def cache_paths(downloads: Path, url: str) -> tuple[Path, Path]:
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()
    folder = Path(downloads) / key[:2]
    return folder / key, folder / f"{key}.json"


def _check_host(url: str, allow_private: bool) -> None:
    problem = url_problem(url)
    if problem:
        raise _Failure(problem)
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Failure(f"host {host} not found: {exc.strerror}", transient=True) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise _Failure(f"host {host} is a private, loopback or reserved address ({address}); "
                           "set source.download.allow_private_addresses to fetch from it")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _fetch_once(client: httpx.Client, url: str, settings: DownloadSettings) -> tuple[bytes, str]:
    """One attempt, redirects followed by hand. Returns (bytes, content type) or raises _Failure."""
    deadline = time.monotonic() + settings.timeout_s
    current = url
    for _hop in range(settings.max_redirects + 1):
        _check_host(current, settings.allow_private_addresses)
        try:
            with client.stream("GET", current) as response:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise _Failure(f"HTTP {response.status_code} redirect without a Location")
                    current = urljoin(current, location)
                    continue
                if response.status_code != 200:
                    raise _Failure(f"HTTP {response.status_code}", response.status_code in _TRANSIENT_STATUS)
                robots = {d.strip().lower() for v in response.headers.get_list("x-robots-tag")
                          for d in v.split(":")[-1].split(",")}
                if robots & _NO_AI:
                    raise _Failure(f"the server forbids AI use of this image (X-Robots-Tag: "
                                   f"{', '.join(sorted(robots & _NO_AI))})")
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype and not ctype.startswith("image/") and ctype not in _IMAGE_TYPES_BESIDES_IMAGE:
                    raise _Failure(f"not an image: {ctype}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > settings.max_bytes:
                    raise _Failure(f"too large: declares {_mb(int(declared))}, over the limit of "
                                   f"{_mb(settings.max_bytes)} (source.download.max_bytes)")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > settings.max_bytes:
                        raise _Failure(f"too large: more than {_mb(settings.max_bytes)} "
                                       "(source.download.max_bytes)")
                    if time.monotonic() > deadline:
                        raise _Failure(f"timed out after {settings.timeout_s:g} s", transient=True)
                    chunks.append(chunk)
                return b"".join(chunks), ctype
        except httpx.TimeoutException:
            raise _Failure(f"timed out after {settings.timeout_s:g} s", transient=True) from None
        except httpx.TransportError as exc:
            raise _Failure(f"connection failed: {exc or type(exc).__name__}", transient=True) from None
    raise _Failure(f"too many redirects (more than {settings.max_redirects})")


def _check_image(data: bytes) -> None:
    """The decoded header must be an image Pillow reads; size limits are compose's job."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return  # an image: the pixel limit rejects it later, with the set
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _Failure("not an image: the downloaded bytes are no image format Pillow reads") from None


def download_one(client: httpx.Client, url: str, downloads: Path, settings: DownloadSettings) -> Download:
    """Fetch ``url`` into the cache (or find it there)."""
    target, note = cache_paths(downloads, url)
    try:
        cached = json.loads(note.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        cached = None
    if cached and cached.get("url") == url:
        if cached.get("reason"):
            return Download(url, None, cached["reason"], fetched=False)
        if target.exists():
            return Download(url, target, None, fetched=False)
    reason, transient = "", False
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(settings.retry_backoff_s * 2 ** (attempt - 1))
        try:
            data, ctype = _fetch_once(client, url, settings)
            _check_image(data)
        except _Failure as exc:
            reason, transient = exc.reason, exc.transient
            if transient:
                continue
            break
        # the file first, then the note that vouches for it: a crash between leaves a file with no note,
        # which the next run simply fetches again
        write_replaceable(target, data)
        write_replaceable(note, json.dumps({"url": url, "bytes": len(data), "content_type": ctype,
                                            "sha256": hashlib.sha256(data).hexdigest()}).encode())
        return Download(url, target, None, fetched=True)
    if transient:
        tries = settings.retries + 1
        reason = f"{reason} ({tries} attempt{'s' if tries > 1 else ''})"
    else:  # a failure for good: the next run does not ask again
        write_replaceable(note, json.dumps({"url": url, "reason": reason}).encode())
    return Download(url, None, reason, fetched=True)


def make_client(settings: DownloadSettings) -> httpx.Client:
    return httpx.Client(
        headers={"User-Agent": settings.user_agent, "Accept": "image/*"},
        timeout=httpx.Timeout(settings.timeout_s),
        follow_redirects=False,  # followed by hand, so every hop is checked
        limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency),
        trust_env=False,  # proxies from the environment would bypass the address check
    )


def download_all(urls: Sequence[str], downloads: Path, settings: DownloadSettings) -> dict[str, Download]:
    """Fetch distinct URLs with ``settings.concurrency`` downloads at a time."""
    distinct = list(dict.fromkeys(urls))
    if not distinct:
        return {}
    with make_client(settings) as client, \
            ThreadPoolExecutor(max_workers=min(settings.concurrency, len(distinct))) as pool:
        results = pool.map(lambda u: download_one(client, u, downloads, settings), distinct)
        return {d.url: d for d in results}


def _linked(locator: str) -> bool:
    """A URL of any scheme (non-http ones are refused with a reason, never read as paths)."""
    return "://" in locator


def fetch_urls(sets: Sequence[SourceSet], downloads: Path,
               settings: DownloadSettings) -> tuple[list[SourceSet], list[FileEntry]]:
    """Resolve the URL panels of one shard of sets.

    Returns the sets with each URL locator replaced by its downloaded file, and a ledger entry for
    each panel that could not be fetched; a set with such a panel is rejected, naming it."""
    urls = [p for s in sets if not s.rejection for p in s.paths if _linked(p)]
    done = download_all(urls, downloads, settings)
    out: list[SourceSet] = []
    failed: list[FileEntry] = []
    for src in sets:
        if src.rejection or not any(_linked(p) for p in src.paths):
            out.append(src)
            continue
        paths, problems = [], []
        for ledger, locator in zip(src.files, src.paths, strict=True):
            d = done.get(locator)
            if d is None:
                paths.append(locator)
            elif d.path is not None:
                paths.append(str(d.path))
            else:
                reason = d.reason or "download failed"
                paths.append("")
                where = ledger if ledger == locator else f"{ledger} ({locator})"
                problems.append(f"{where}: {reason}")
                failed.append(FileEntry(ledger, src.set_id, "rejected",
                                        reason if ledger == locator else f"{locator}: {reason}"))
        out.append(replace(src, paths=paths, rejection="; ".join(problems) or None))
    return out, failed
