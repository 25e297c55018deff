"""Captioning through any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama).

Each set is one chat request: the instruction and the panels as JPEG data URLs, with
``response_format`` set to the caption's JSON schema, so servers that support structured output
(vLLM, SGLang, llama.cpp) decode under the grammar. At most ``concurrency`` requests are in flight;
each has a timeout; transport errors, server errors and bad answers are retried by the caller
with exponential backoff (``retry_backoff_s`` doubled per attempt).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from iclora_data.caption.base import CaptionerError, CaptionRequest
from iclora_data.caption.prompts import SYSTEM_PROMPT
from iclora_data.caption.settings import CaptionSettings

log = logging.getLogger(__name__)


def image_data_url(image: Any, max_pixels: int, quality: int = 90) -> str:
    """A panel as a JPEG data URL, scaled down to at most ``max_pixels`` (the server would anyway)."""
    from PIL import Image

    im = image.convert("RGB")
    area = im.width * im.height
    if area > max_pixels:
        scale = (max_pixels / area) ** 0.5
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICaptioner:
    def __init__(self, settings: CaptionSettings, captioner_id: str):
        from openai import OpenAI

        self.id = captioner_id
        self.settings = settings.resolved()
        self.batch_size = max(settings.batch_size, settings.concurrency)
        key = "EMPTY"  # local servers accept any key
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env, "")
            if not key:
                raise CaptionerError(f"environment variable {settings.api_key_env} (api_key_env) is not set or "
                                     "empty; export the server's API key in it")
        # retries are ours (one bounded count for transport errors and bad answers alike)
        self.client = OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s, max_retries=0)
        self.requests_sent = 0

    def request_body(self, request: CaptionRequest) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(p, self.settings.pixels[1])}}
            for p in request.panels]
        content.append({"type": "text", "text": request.instruction})
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            "max_tokens": self.settings.new_tokens,
            "temperature": self.settings.temperature,
        }
        if self.settings.constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "iclora_caption", "schema": request.schema, "strict": True}}
        return body

    def _one(self, request: CaptionRequest, attempt: int) -> str | Exception:
        import openai

        try:
            self.requests_sent += 1
            response = self.client.chat.completions.create(**self.request_body(request))
        except openai.APIStatusError as exc:
            return RuntimeError(f"server answered HTTP {exc.status_code}: {str(exc.message)[:160]}")
        except openai.APITimeoutError:
            return RuntimeError(f"server did not answer within {self.settings.timeout_s:g} s")
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            return RuntimeError(f"cannot reach {self.settings.base_url}: {str(cause)[:160]}")
        except Exception as exc:  # noqa: BLE001 - e.g. a body that is not JSON; reported for this set
            return RuntimeError(f"bad response from {self.settings.base_url}: {str(exc)[:160]}")
        choices = getattr(response, "choices", None) or []
        if not choices or choices[0].message is None:
            return RuntimeError("server answered without a choice")
        choice = choices[0]
        if choice.finish_reason == "length":
            return RuntimeError(f"answer was cut off at max_new_tokens={self.settings.new_tokens}")
        return choice.message.content or ""

    def generate(self, requests: Sequence[CaptionRequest], attempt: int) -> list[str | Exception]:
        if attempt > 1 and self.settings.retry_backoff_s > 0:
            time.sleep(self.settings.retry_backoff_s * 2 ** (attempt - 2))
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="caption") as pool:
            return list(pool.map(lambda r: self._one(r, attempt), requests))
