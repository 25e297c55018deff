"""Where panel bytes come from. Ingest describes each panel by a *locator* string; every stage that
needs a panel's bytes calls :func:`read_source` and nothing else, so a new kind of source plugs in
here without touching compose or dedup.

Locators (all plain strings, JSON-friendly, so they cross process and Ray boundaries):

- an absolute local path: a file under a folder SOURCE, a manifest's file, an image a dataset or a
  compressed tar brought (spooled once into a content-addressed folder), a downloaded URL;
- ``zip:<archive>!<member>``: a member of a zip archive, read by random access, never extracted;
- ``tar:<archive>!<offset>:<size>``: a member of an uncompressed tar, read by seeking to its data;
- ``http(s)://...``: an image URL not downloaded yet; :func:`iclora_data.sources.download.fetch_urls`
  turns it into the local path of its download before any stage reads it.

Archive and member names are percent-encoded in the locator, so ``!`` and ``:`` in them are safe.
"""

from __future__ import annotations

from pathlib import Path

ZIP_PREFIX = "zip:"
TAR_PREFIX = "tar:"
HUB_PREFIX = "hf://datasets/"


def hub_source(source: Path | str) -> str | None:
    """``hf://datasets/...`` as given, also when it went through ``Path`` (which folds ``//`` to ``/``)."""
    text = str(source)
    if text.startswith("hf:/datasets/") and not text.startswith(HUB_PREFIX):
        text = "hf://" + text[len("hf:/"):]
    return text if text.startswith(HUB_PREFIX) else None


def source_exists(source: Path | str) -> bool:
    """Whether SOURCE is there: a hub dataset is judged when it is read (its errors are the run's)."""
    return hub_source(source) is not None or Path(source).exists()


def is_url(locator: str) -> bool:
    return locator.startswith(("http://", "https://"))


def read_source(locator: str) -> bytes:
    """The bytes of one panel. Raises OSError when they cannot be read (reported per file)."""
    if locator.startswith(ZIP_PREFIX):
        from iclora_data.sources.archive import read_zip_member

        return read_zip_member(locator)
    if locator.startswith(TAR_PREFIX):
        from iclora_data.sources.archive import read_tar_member

        return read_tar_member(locator)
    if "://" in locator:
        # a URL reaches here only when the build skipped the download step: a bug, not bad data
        raise OSError(f"image URL {locator} was not downloaded before it was read")
    return Path(locator).read_bytes()
