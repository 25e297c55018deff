"""Progress of a build's stages, reported to a listener the caller passes (the CLI's rich display).

The build calls the listener from the driver only, as shard results arrive (docs/ARCHITECTURE.md,
"Progress"), so it moves the same way under threads, processes, Prefect or Ray, where a worker
could not reach the terminal. There is no global listener."""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, n: int = 1) -> None: ...


class SilentProgress:
    """The listener of a build that nobody watches."""

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass
