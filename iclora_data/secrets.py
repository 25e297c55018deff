"""Secrets (hub tokens, API keys) never leave memory.

Whoever receives a secret registers it; every text bound for a message, a log line, a file or a
Prefect artifact passes :func:`scrub` (or :func:`scrub_obj` for JSON-like data). Scrubbing by value
also catches a server that echoes the secret back inside an error body."""

from __future__ import annotations

import logging
import re
import threading
import traceback
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
        scrub_log_records()


_log_factory_installed = False


def scrub_log_records() -> None:
    """Scrub every log record this process creates from now on, whoever logs it and wherever it goes
    (Prefect's handlers send records to its database, where the UI shows them). Installed once, by the
    first registered secret; a record's text is formatted and scrubbed when it is created."""
    global _log_factory_installed
    with _lock:
        if _log_factory_installed:
            return
        _log_factory_installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logger's problem; the handler reports it
            return record
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:  # formatters use exc_text when it is set
            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)


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
