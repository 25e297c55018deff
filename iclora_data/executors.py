"""Executors: how the build maps a per-shard function over shards (docs/ARCHITECTURE.md, "Executors").

The build's stages are plain functions of one shard that return plain (picklable) records, so
they run unchanged in this process, in a thread pool, in a process pool, or as Prefect tasks on
threads or Ray (``flows/executors.py``). An executor yields each result as it completes, with
the shard's index, and the build reports progress from the driver as results arrive: nothing
in a worker needs to reach the terminal.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[A], R], items: Sequence[A], names: Sequence[str]) -> Iterator[tuple[int, R]]:
        """Run ``fn`` on every item; yield ``(index, result)`` as each finishes (any order).

        ``names`` says what each item holds (``prepare shard 3 (a … f, 100 sets)``), for logs and
        UIs. The first failure is raised from the iterator, after which no new item starts."""
        ...


class SerialExecutor:
    """Everything in this thread, in order: for debugging and for tiny builds."""

    def map(self, fn: Callable[[A], R], items: Sequence[A], names: Sequence[str]) -> Iterator[tuple[int, R]]:
        for i, item in enumerate(items):
            yield i, fn(item)


class _PoolExecutor:
    workers: int

    def _pool(self) -> cf.Executor:
        raise NotImplementedError

    def map(self, fn: Callable[[A], R], items: Sequence[A], names: Sequence[str]) -> Iterator[tuple[int, R]]:
        if not items:
            return
        with self._pool() as pool:
            # at most two items in flight per worker: results stream back while later shards wait
            pending: dict[cf.Future[R], int] = {}
            queue = iter(range(len(items)))
            try:
                for i in queue:
                    pending[pool.submit(fn, items[i])] = i
                    if len(pending) >= 2 * self.workers:
                        break
                while pending:
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        yield index, future.result()
                        nxt = next(queue, None)
                        if nxt is not None:
                            pending[pool.submit(fn, items[nxt])] = nxt
            finally:
                for future in pending:
                    future.cancel()


class ThreadExecutor(_PoolExecutor):
    """A thread pool: Pillow, hashlib and zlib release the GIL, so threads use every core for pixels."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 2

    def _pool(self) -> cf.Executor:
        return cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="iclora")


class ProcessExecutor(_PoolExecutor):
    """A process pool: for work that holds the GIL. Functions and records must pickle."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 2

    def _pool(self) -> cf.Executor:
        import multiprocessing

        # forkserver/spawn: no copy of the driver's threads and locks in the children
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context(method))


def make_executor(kind: str, workers: int) -> Any:
    """``serial``, ``threads`` or ``processes``, for the library's own callers."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "threads":
        return ThreadExecutor(workers)
    if kind == "processes":
        return ProcessExecutor(workers)
    raise ValueError(f"unknown executor {kind!r}: use serial, threads or processes")
