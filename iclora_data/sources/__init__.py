"""Where panel bytes come from. Ingest describes each panel by a *locator* string; every stage that
needs a panel's bytes calls :func:`read_source` and nothing else, so a new kind of source (an archive
member, a Hugging Face dataset row, a downloaded URL) plugs in here without touching compose or dedup.

A locator is, today, an absolute local file path."""

from __future__ import annotations

from pathlib import Path


def read_source(locator: str) -> bytes:
    """The bytes of one panel. Raises OSError when they cannot be read (reported per file)."""
    return Path(locator).read_bytes()
