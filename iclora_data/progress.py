"""Progress of long stages, reported to whoever listens (the CLI's rich display).

Stages call ``progress().start/advance``; the default listener does nothing, so library
code and flows run the same with or without a terminal."""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...


class _Silent:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass


_listener: ProgressListener = _Silent()


def progress() -> ProgressListener:
    return _listener


def set_progress(listener: ProgressListener | None) -> None:
    global _listener
    _listener = listener or _Silent()
