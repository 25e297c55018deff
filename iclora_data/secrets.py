"""Secrets (hub tokens, API keys) never leave memory.

Whoever receives a secret registers it; every text bound for a message, a log line, a file or a
Prefect artifact passes :func:`scrub` (or :func:`scrub_obj` for JSON-like data). Scrubbing by value
also catches a server that echoes the secret back inside an error body."""

from __future__ import annotations

import re
import threading
from typing import Any

REDACTED = "***"
_MIN_LEN = 8  # shorter strings are not credentials, and replacing them would mangle ordinary text
_lock = threading.Lock()
_secrets: set[str] = set()
# shapes of credentials even when nobody registered them (a token typed into a URL, an echoed header)
_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?bearer\s+)[^\s\"',}]+"),
]


def register_secret(value: str | None) -> None:
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped string replaced."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


def scrub_obj(obj: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, strings) with :func:`scrub` applied to every string."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_obj(k): scrub_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_obj(v) for v in obj]
    return obj
