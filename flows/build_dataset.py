"""``build_dataset``: SOURCE -> ledger, composites, captions, dataset, gallery.

Thin: the build is ``iclora_data.build.run_build``; this flow gives it an executor of Prefect tasks
(one per shard, on the flow's task runner: threads, or Ray with ``--runner ray``) and publishes the
counts and the rejected sets as artifacts. See docs/ARCHITECTURE.md."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.executors import PrefectExecutor, current_progress
from iclora_data.build import BuildResult, run_build
from iclora_data.config import BuildConfig

MAX_REJECT_ROWS = 1000  # the artifact is a summary; every set is in report.json


@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2))  # type: ignore[arg-type]
def build_dataset(source: str, out: str, config: dict[str, Any] | None = None, lock_timeout: float = 0,
                  shard_size: int | None = None) -> dict[str, Any]:
    """Build IC-LoRA training data from SOURCE into OUT. Returns the ledger's counts.

    Progress goes to the listener the CLI installed with ``flows.executors.driver_progress``."""
    cfg = BuildConfig.model_validate(config or {})
    result = run_build(source, out, cfg, executor=PrefectExecutor(cfg.workers), progress=current_progress(),
                       lock_timeout=lock_timeout, shard_size=shard_size)
    publish_artifacts(result)
    return result.as_dict()


def publish_artifacts(result: BuildResult) -> None:
    """The counts, and the sets that left the dataset with their reasons, in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    get_run_logger().info("%s", ", ".join(f"{k}: {v}" for k, v in result.counts.items()))
    lines = ["| | count |", "|---|---:|", *(f"| {k} | {v} |" for k, v in result.counts.items()),
             f"| images decoded | {result.decoded_images} |", ""]
    gallery = result.out / "gallery.html"
    lines.append(f"Gallery: [{gallery.name}]({gallery.resolve().as_uri()})" if gallery.is_file()
                 else "No gallery was written.")
    create_markdown_artifact("\n".join(lines) + "\n", key="iclora-build", description=f"iclora build of {result.out}")
    rows = [{"set": r["set_id"], "status": r["status"], "reason": r["reason"] or "",
             "duplicate of": r["duplicate_of"] or ""} for r in result.rejects[:MAX_REJECT_ROWS]]
    if len(result.rejects) > MAX_REJECT_ROWS:
        rows.append({"set": "…", "status": "", "reason": f"{len(result.rejects) - MAX_REJECT_ROWS} more in "
                     "report.json", "duplicate of": ""})
    create_table_artifact(rows or [{"set": "", "status": "", "reason": "no set was rejected", "duplicate of": ""}],
                          key="iclora-rejects", description=f"{len(result.rejects)} set(s) not kept")
