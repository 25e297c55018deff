"""The build's executor as Prefect tasks: one task run per shard, named after the sets it holds, with
retries on transient errors (``flows/runners.py``). The flow's task runner decides where the tasks
run (a thread pool here, or Ray through prefect-ray's RayTaskRunner). See docs/ARCHITECTURE.md."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.runners import RETRY_DELAYS, TASK_RETRIES, retry_transient
from iclora_data.progress import ProgressListener

A = TypeVar("A")
R = TypeVar("R")


# The run store caches by content; Prefect's input hashing and result persistence would only cost time.
@task(name="shard", cache_policy=NO_CACHE, persist_result=False, retries=TASK_RETRIES,
      retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient)
def run_shard(fn: Callable[[Any], Any], shard: Any) -> Any:
    # a retry redoes the shard; every set it finished before the failure is found in the run store
    return fn(shard)


class PrefectExecutor:
    """Maps a per-shard function as Prefect tasks of the current flow run."""

    def __init__(self, workers: int = 2):
        self.workers = workers

    def map(self, fn: Callable[[A], R], items: Sequence[A], names: Sequence[str]) -> Iterator[tuple[int, R]]:
        futures = {}
        for i, (item, name) in enumerate(zip(items, names, strict=True)):
            stage = name.split(" ", 1)[0]  # "prepare", "caption": the task's name in the UI
            future = run_shard.with_options(name=stage, task_run_name=name).submit(fn, item)
            futures[future] = i
        for future in as_completed(list(futures)):
            yield futures[future], future.result()


# The CLI's live display, for the flow body, which runs in the CLI's own process (the driver). It is not
# a flow parameter: Prefect stores parameters, and prefect-ray ships the flow run context (parameters
# included) with every Ray task; a display holds locks and a terminal, so it can be neither.
_driver_progress: ProgressListener | None = None


@contextmanager
def driver_progress(listener: ProgressListener | None) -> Iterator[None]:
    """Let flows started inside this block report their stages to ``listener``."""
    global _driver_progress
    previous, _driver_progress = _driver_progress, listener
    try:
        yield
    finally:
        _driver_progress = previous


def current_progress() -> ProgressListener | None:
    return _driver_progress
