"""The layout of an OUT folder: every path under OUT is named here, and only here.

Two halves (docs/ARCHITECTURE.md, "The OUT folder"):

- the **run store** ``OUT/.iclora/``: content-addressed objects that stages write while they
  work (panel facts, composites, thumbnails, captions), the stat cache, the lock, and the
  digests of the last commit. Nothing in it is meant for people.
- the **user-visible outputs** (``composites/``, ``captions/``, ``report.json``, ``build.json``,
  ``dataset/``, ``gallery.html`` and ``gallery/``): changed only by the build's commit step,
  after every stage succeeded, so a failed run leaves the previous ones as they were.
"""

from __future__ import annotations

from pathlib import Path

STORE_DIR = ".iclora"
# Every temporary file or folder iclora creates starts with this, so that a sweep after a killed run
# (store.remove_partial_files) can tell them from anything else, whatever the final name looks like.
TEMP_PREFIX = ".iclora-tmp-"

COMPOSITES = "composites"
CAPTIONS = "captions"
CAPTIONS_EDITED = "captions-edited"  # captions people edited (iclora captions import); written by no build
REPORT = "report.json"
BUILD = "build.json"
DATASET = "dataset"
GALLERY_PAGE = "gallery.html"
GALLERY = "gallery"


class OutDir:
    """Paths of one OUT folder."""

    def __init__(self, out: Path | str):
        self.root = Path(out)

    # --- user-visible outputs -------------------------------------------------------------------
    @property
    def composites(self) -> Path:
        return self.root / COMPOSITES

    @property
    def captions(self) -> Path:
        return self.root / CAPTIONS

    @property
    def captions_edited(self) -> Path:
        return self.root / CAPTIONS_EDITED

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def build(self) -> Path:
        return self.root / BUILD

    @property
    def dataset(self) -> Path:
        return self.root / DATASET

    @property
    def gallery_page(self) -> Path:
        return self.root / GALLERY_PAGE

    @property
    def gallery(self) -> Path:
        return self.root / GALLERY

    def composite_image(self, image: str) -> Path:
        return self.composites / image

    def composite_sidecar(self, stem: str) -> Path:
        return self.composites / f"{stem}.json"

    def caption_file(self, stem: str) -> Path:
        return self.captions / f"{stem}.json"

    # --- the run store ----------------------------------------------------------------------------
    @property
    def store(self) -> Path:
        return self.root / STORE_DIR

    @property
    def lock(self) -> Path:
        return self.store / "lock"

    @property
    def stat_cache(self) -> Path:
        return self.store / "statcache.sqlite"

    @property
    def running(self) -> Path:
        """Present while a build runs; found at the start of a build, it says the last one was killed."""
        return self.store / "running"

    @property
    def commit_state(self) -> Path:
        """Digests of the inputs of the outputs last committed (to skip rewriting what did not change)."""
        return self.store / "commit.json"

    def object_path(self, kind: str, key: str, suffix: str) -> Path:
        return self.store / kind / key[:2] / f"{key}{suffix}"


def captions_dir(out: Path | str) -> Path:
    return OutDir(out).captions


def composites_dir(out: Path | str) -> Path:
    return OutDir(out).composites
