"""``caption``: a one-off captioning run over an existing build, with other caption settings.

Thin: ``iclora_data.build.recaption`` re-runs the build on its own SOURCE and config with the new
caption section; this flow gives it Prefect tasks and publishes the artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.build_dataset import publish_artifacts
from flows.executors import PrefectExecutor, current_progress
from iclora_data.build import NoBuildError, recaption

__all__ = ["NoBuildError", "caption"]


@flow(name="caption")
def caption(out: str, caption: dict[str, Any] | None = None, lock_timeout: float = 0) -> dict[str, Any]:
    result = recaption(out, caption, executor=PrefectExecutor(), progress=current_progress(),
                       lock_timeout=lock_timeout)
    publish_artifacts(result)
    return result.as_dict()
