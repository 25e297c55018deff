"""Captioning through any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama), over ``httpx``.

Each set is one ``/chat/completions`` request: the instruction and the panels as JPEG data URLs, with
``response_format`` set to the caption's JSON schema. ``httpx`` directly rather than the ``openai``
client: every rule below is a few visible lines, and the loopback tests drive each one.

Errors at the right layer:

- the server cannot be reached, refuses the key (401/403), or does not know the model or path (404):
  ``CaptionRunError``, a failure of the run. ``probe()`` finds these before any work, in seconds.
- 408/409/425/429/5xx, timeouts and dropped connections: retried, waiting ``Retry-After`` when the
  server sends one, else ``retry_backoff_s`` doubled per try; when the tries run out, that set fails.
- a 400 that names the schema or ``response_format``: the server cannot decode under this schema.
  Fall back once, visibly (a warning and a note in the ledger), to ``json_object``, then to
  unconstrained output; the answer is checked as always. Any other 400/413/422: that set fails, not
  retried (the same request would be refused again).

``extra_body`` is merged into every request (vLLM's ``structured_outputs``, ``repetition_penalty``,
``mm_processor_kwargs``). The API key is registered with ``iclora_data.secrets`` and every message
that leaves here passes ``scrub``.
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from iclora_data.caption.base import RETRY_TEMPERATURE, CaptionerError, CaptionRequest, CaptionRunError
from iclora_data.caption.prompts import SYSTEM_PROMPT
from iclora_data.caption.schema import CaptionValidationError
from iclora_data.caption.settings import CaptionSettings
from iclora_data.secrets import register_secret, scrub

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer is treated as this (a run must end)
FORMATS = ("json_schema", "json_object", "none")  # response_format modes, in fallback order
_SCHEMA_WORDS = ("response_format", "json_schema", "schema", "guided", "structured", "grammar", "json_object")


def prepare_panel(image: Any, max_pixels: int) -> Any:
    """A panel as it is sent: RGB, scaled down to at most ``max_pixels`` (the server would anyway)."""
    from PIL import Image

    im = image.convert("RGB")
    area = im.width * im.height
    if area > max_pixels:
        scale = (max_pixels / area) ** 0.5
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.Resampling.LANCZOS)
    return im


def image_data_url(image: Any, max_pixels: int, quality: int = 90) -> str:
    buf = io.BytesIO()
    prepare_panel(image, max_pixels).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _server_message(response: Any) -> str:
    """The error text of a JSON error body (OpenAI's ``{"error": {"message": ...}}``, vLLM's, FastAPI's)."""
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message", data)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return " ".join(str(err).split())[:200]
    return " ".join(str(data).split())[:200]


class _Rejected(Exception):
    """The server refused this request (a 4xx that is neither auth nor not-found)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class OpenAICaptioner:
    def __init__(self, settings: CaptionSettings, captioner_id: str,
                 sleep: Callable[[float], None] = time.sleep):
        import httpx

        self.id = captioner_id
        self.settings = settings.resolved()
        self.batch_size = 1  # one set per request; the server batches requests itself
        self.concurrency = self.settings.concurrency
        self.notes: list[str] = []
        self.base_url = (settings.base_url or "").rstrip("/")
        key = "EMPTY"  # local servers accept any key
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env, "")
            if not key:
                raise CaptionerError(f"environment variable {settings.api_key_env} (api_key_env) is not set or "
                                     "empty; export the server's API key in it")
            register_secret(key)
        timeout = httpx.Timeout(self.settings.timeout_s, connect=min(10.0, self.settings.timeout_s))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self.client = httpx.Client(base_url=self.base_url + "/", timeout=timeout, limits=limits,
                                   headers={"Authorization": f"Bearer {key}"})
        self.sleep = sleep
        self._lock = threading.Lock()
        self._format = 0 if self.settings.constrained else FORMATS.index("none")
        self.requests_sent = 0

    @property
    def response_format(self) -> str:
        return FORMATS[self._format]

    # -- transport -----------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def _unreachable(self, exc: Exception) -> CaptionRunError:
        cause = " ".join(str(exc).split())[:160] or type(exc).__name__
        return CaptionRunError(scrub(f"cannot reach the caption server at {self.base_url}: {cause}; "
                                     "is it running, and is --base-url right?"))

    def _refused(self, status: int, path: str, message: str) -> CaptionRunError:
        if status in (401, 403):
            hint = ("set api_key_env to the variable holding the key" if not self.settings.api_key_env
                    else f"check the key in ${self.settings.api_key_env}")
            return CaptionRunError(scrub(f"the caption server refused the API key (HTTP {status} at "
                                         f"{self._url(path)}: {message}); {hint}"))
        return CaptionRunError(scrub(f"the caption server has no model {self.settings.model!r} or no "
                                     f"{path} endpoint (HTTP {status} at {self._url(path)}: {message}); "
                                     "check --model and that --base-url ends in /v1"))

    def _wait(self, tried: int, response: Any | None) -> None:
        asked = retry_after_s(response.headers.get("retry-after")) if response is not None else None
        wait = asked if asked is not None else self.settings.retry_backoff_s * 2 ** (tried - 1)
        self.sleep(min(wait, MAX_RETRY_AFTER_S))

    def _send(self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None = None,
              tries: int | None = None) -> Any:
        """One HTTP exchange with the retry rules (module docstring); returns a 2xx response, raises
        CaptionRunError or _Rejected, or returns the last retryable failure as a RuntimeError."""
        import httpx

        tries = tries or self.settings.max_attempts
        error = ""
        for tried in range(1, tries + 1):
            response = None
            try:
                with self._lock:
                    self.requests_sent += 1
                response = self.client.request(method, path, json=body,
                                               timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
            except httpx.ConnectError as exc:
                if tried == tries:
                    raise self._unreachable(exc) from None
                error = f"cannot connect: {exc}"
            except httpx.TimeoutException:
                error = f"server did not answer within {timeout or self.settings.timeout_s:g} s"
            except httpx.TransportError as exc:
                error = f"connection failed: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 300:
                    return response
                message = _server_message(response)
                if status in (401, 403, 404):
                    raise self._refused(status, path, message)
                if status not in RETRY_STATUS:
                    raise _Rejected(status, message)
                error = f"server answered HTTP {status}: {message}"
            if tried < tries:
                log.info("caption request: %s; retrying (%d/%d)", scrub(error), tried, tries)
                self._wait(tried, response)
        return RuntimeError(scrub(f"{error} (after {tries} tries)"))

    # -- probe ---------------------------------------------------------------------------------------
    def probe(self) -> None:
        """Before any work: the server answers, accepts the key and serves the model. GET /models lists
        the served models (vLLM, SGLang, llama.cpp, Ollama); a server without that endpoint gets a
        one-token chat request instead."""
        timeout = self.settings.probe_timeout_s
        tries = min(2, self.settings.max_attempts)  # a refused connection is final at once; a 503 gets one more
        try:
            response = self._send("GET", "models", None, timeout=timeout, tries=1)
            if isinstance(response, Exception) and tries > 1:
                response = self._send("GET", "models", None, timeout=timeout, tries=tries - 1)
        except _Rejected:
            response = None
        except CaptionRunError as exc:
            if "refused the API key" in str(exc) or "cannot reach" in str(exc):
                raise
            response = None  # 404 on /models: a server without the listing; try a tiny completion
        if isinstance(response, Exception):
            raise CaptionRunError(scrub(f"the caption server at {self.base_url} is not answering: {response}"))
        if response is not None:
            try:
                served = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
            except (ValueError, AttributeError):
                served = []
            if not served or self.settings.model in served:
                return
            raise CaptionRunError(scrub(f"the caption server at {self.base_url} does not serve model "
                                        f"{self.settings.model!r}; it serves: {', '.join(map(str, served[:10]))}"))
        body = {"model": self.settings.model, "max_tokens": 1,
                "messages": [{"role": "user", "content": "Reply with OK."}]}
        try:
            result = self._send("POST", "chat/completions", body, timeout=timeout, tries=tries)
        except _Rejected as exc:
            raise CaptionRunError(scrub(f"the caption server at {self.base_url} rejected a one-token test "
                                        f"request ({exc})")) from None
        if isinstance(result, Exception):
            raise CaptionRunError(scrub(f"the caption server at {self.base_url} is not answering: {result}"))

    # -- one set ---------------------------------------------------------------------------------------
    def request_body(self, request: CaptionRequest, response_format: str = "json_schema",
                     attempt: int = 1) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(p, self.settings.pixels[1])}}
            for p in request.panels]
        content.append({"type": "text", "text": request.instruction})
        temperature = self.settings.temperature or (RETRY_TEMPERATURE if attempt > 1 else 0.0)
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            "max_tokens": self.settings.new_tokens,
            "temperature": temperature,
        }
        if response_format == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "iclora_caption", "schema": request.schema, "strict": True}}
        elif response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        body.update(self.settings.extra_body)
        return body

    def _fall_back(self, tried: str, rejection: _Rejected) -> None:
        with self._lock:
            if FORMATS[self._format] != tried:
                return  # another request already fell back
            self._format += 1
            note = (f"the server rejected response_format {tried} (HTTP {rejection.status}: "
                    f"{rejection.message[:120]}); fell back to "
                    f"{'unconstrained output' if FORMATS[self._format] == 'none' else FORMATS[self._format]}, "
                    "answers checked after")
            self.notes.append(scrub(note))
        log.warning("caption: %s", scrub(note))

    def _one(self, request: CaptionRequest, attempt: int) -> str | Exception:
        while True:
            fmt = self.response_format
            try:
                response = self._send("POST", "chat/completions", self.request_body(request, fmt, attempt))
            except _Rejected as exc:
                schema_trouble = exc.status in (400, 422) and any(w in exc.message.lower() for w in _SCHEMA_WORDS)
                if schema_trouble and fmt != "none":
                    self._fall_back(fmt, exc)
                    continue
                return RuntimeError(scrub(f"the server rejected this set's request ({exc})"))
            if isinstance(response, Exception):
                return response
            try:
                choice = response.json()["choices"][0]
                content = choice["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                snippet = " ".join(response.text.split())[:120]
                return RuntimeError(scrub(f"bad response from {self.base_url}: {snippet}"))
            if choice.get("finish_reason") == "length":
                return CaptionValidationError(f"answer was cut off at max_new_tokens={self.settings.new_tokens}")
            return scrub(content or "")

    def generate(self, requests: Sequence[CaptionRequest], attempt: int) -> list[str | Exception]:
        return [self._one(r, attempt) for r in requests]

    def close(self) -> None:
        self.client.close()
