"""``build_dataset``: SOURCE -> ledger, composites, captions, dataset, gallery.

Thin wiring over ``iclora_data``: each task calls one library function. Per-set work
(validate, hash, compose) is mapped over a thread pool: Pillow and hashlib release the GIL,
so two threads use both cores of a small machine.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import RETRY_DELAYS, TASK_RETRIES, retry_transient
from iclora_data import __version__
from iclora_data.caption.settings import CaptionSettings
from iclora_data.compose import compose_set, place_composites
from iclora_data.config import BuildConfig, ComposeSettings
from iclora_data.dedup import DEFAULT_MAX_DISTANCE, deduplicate_sets
from iclora_data.ingest import IngestResult, ingest
from iclora_data.progress import progress
from iclora_data.records import (
    CaptionRecord,
    CompositeRecord,
    PreparedSet,
    SetDecision,
    SourceSet,
    captions_dir,
    composites_dir,
    file_stem,
    save_caption,
)
from iclora_data.report import build_report, write_report
from iclora_data.store import RunStore, atomic_write_json, remove_partial_files

# The run store caches by content; Prefect's own input hashing and result persistence would only cost time.


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False)
def ingest_source(source: str) -> IngestResult:
    return ingest(Path(source))


@task(name="compose", task_run_name="compose {src.set_id}", cache_policy=NO_CACHE, persist_result=False,
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient)
def compose_one(src: SourceSet, settings: ComposeSettings, out: str) -> PreparedSet:
    prepared = compose_set(src, settings, RunStore(Path(out)))
    progress().advance("compose")
    return prepared


@task(name="dedup", cache_policy=NO_CACHE, persist_result=False)
def dedup_sets(prepared: list[PreparedSet], max_distance: int) -> dict[str, SetDecision]:
    return deduplicate_sets([p for p in prepared if not p.rejection], max_distance)


@task(name="place-composites", cache_policy=NO_CACHE, persist_result=False)
def place(out: str, prepared: list[PreparedSet], decisions: dict[str, SetDecision],
          settings: ComposeSettings) -> list[CompositeRecord]:
    return place_composites(Path(out), RunStore(Path(out)), prepared, decisions, settings)


# a retry resumes: every caption finished before the failure is in the run store
@task(name="caption", cache_policy=NO_CACHE, persist_result=False,
      retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_transient)
def caption(out: str, composites: list[CompositeRecord], settings: CaptionSettings) -> list[CaptionRecord]:
    from iclora_data.caption import caption_sets

    progress().start("caption", len(composites))
    # the model loads only when a caption is not in the store, and then once per process (worker)
    records = caption_sets(composites, composites_dir(Path(out)), RunStore(Path(out)), settings,
                           on_result=lambda _r: progress().advance("caption"))
    keep = {file_stem(r.set_id) for r in records}
    for r in records:
        save_caption(Path(out), r)
    for stale in captions_dir(Path(out)).glob("*.json"):  # captions of sets no longer kept
        if stale.stem not in keep:
            stale.unlink()
    return records


@task(name="publish", cache_policy=NO_CACHE, persist_result=False)
def publish(out: str, require_captions: bool) -> str:
    from prefect.artifacts import create_markdown_artifact

    from iclora_data.gallery import write_gallery
    from iclora_data.publish import counts_markdown, write_dataset

    write_dataset(Path(out), require_captions=require_captions)
    write_gallery(Path(out))
    markdown = counts_markdown(Path(out))
    create_markdown_artifact(markdown, key="iclora-build", description=f"iclora build of {out}")
    return markdown


def _failed_captions(decisions: dict[str, SetDecision], records: list[CaptionRecord]) -> dict[str, SetDecision]:
    """A set whose caption failed leaves the dataset: it becomes a rejected set with the reason."""
    updated = dict(decisions)
    for r in records:
        if r.status == "failed":
            updated[r.set_id] = SetDecision(r.set_id, "rejected", f"captioning failed: {r.error}")
    return updated


@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2))  # type: ignore[arg-type]
def build_dataset(source: str, out: str, config: dict[str, Any] | None = None,
                  lock_timeout: float = 0) -> dict[str, Any]:
    """Build IC-LoRA training data from SOURCE into OUT. Returns the ledger's counts."""
    cfg = BuildConfig.model_validate(config or {})
    log = get_run_logger()
    out_path = Path(out)
    store = RunStore(out_path)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with store.lock(timeout=lock_timeout):
        removed = remove_partial_files(out_path)
        if removed:
            log.info("removed %d partial file(s) left by an interrupted run", removed)
        ingested = ingest_source(source)
        progress().start("compose", len(ingested.sets))
        futures = compose_one.map(ingested.sets, unmapped(cfg.compose), unmapped(out))
        prepared: list[PreparedSet] = [f.result() for f in futures]
        decoded = sum(p.decoded for p in prepared)
        max_distance = cfg.dedup.max_distance if cfg.dedup.max_distance is not None else DEFAULT_MAX_DISTANCE
        decisions = dedup_sets(prepared, max_distance)
        composites = place(out, prepared, decisions, cfg.compose)
        captioner_id = None
        if cfg.until != "compose":
            records = caption(out, composites, cfg.caption)
            captioner_id = next((r.captioner for r in records if r.captioner), None)
            decisions = _failed_captions(decisions, records)
            composites = place(out, prepared, decisions, cfg.compose)
        report = build_report(ingested, prepared, decisions)
        write_report(out_path, report)
        log.info("%s", ", ".join(f"{k}: {v}" for k, v in report["counts"].items()))
        _rejects_artifact(report)
        # build.json first: the dataset card reads how the data was built from it
        atomic_write_json(out_path / "build.json", {
            "version": 1, "source": str(ingested.source), "source_kind": ingested.kind,
            "config": cfg.model_dump(mode="json"), "started_at": started,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "until": cfg.until,
            "iclora_version": __version__, "captioner": captioner_id,
            "prompt_version": _prompt_version() if cfg.until != "compose" else None,
            "counts": report["counts"], "decoded_images": decoded})
        if cfg.until == "publish":
            publish(out, require_captions=True)
        else:
            from iclora_data.gallery import write_gallery

            write_gallery(out_path)
    return {"counts": report["counts"], "decoded_images": decoded, "out": str(out_path)}


def _rejects_artifact(report: dict[str, Any]) -> None:
    """The sets that left the dataset, with their reasons, as a table in the Prefect UI."""
    from prefect.artifacts import create_table_artifact

    rows = [{"set": s["set_id"], "status": s["status"], "reason": s.get("reason") or "",
             "duplicate of": s.get("duplicate_of") or ""} for s in report["sets"] if s["status"] != "kept"]
    create_table_artifact(rows or [{"set": "", "status": "", "reason": "no set was rejected", "duplicate of": ""}],
                          key="iclora-rejects", description=f"{len(rows)} set(s) not kept")


def _prompt_version() -> str | None:
    from iclora_data.caption import PROMPT_VERSION

    return PROMPT_VERSION
