"""The build: SOURCE -> ledger, composites, captions, dataset, gallery, as library code.

``run_build`` runs the stages in order (docs/ARCHITECTURE.md, "Stages"):

1. ingest (driver): find the sets; nothing decoded.
2. prepare (per shard, on the executor): validate, hash, compose into the run store.
3. dedup (driver, global): near-duplicate search over every panel hash.
4. caption (per shard, on the executor): only the kept composites whose caption is not cached;
   the caption package is imported only then. A failed caption rejects its set, with the reason.
5. commit (driver): the ledger, composites, captions, build manifest, dataset and gallery are
   staged, then put in place. Stages before it write only into the run store, so a run that fails
   anywhere before the commit leaves every previous output exactly as it was.

It imports no Prefect: the flows (``flows/``) call it with an executor of Prefect tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclora_data import __version__
from iclora_data.compose import UNREADABLE, prepare_shard
from iclora_data.config import BuildConfig
from iclora_data.dedup import DEFAULT_MAX_DISTANCE, deduplicate_sets
from iclora_data.errors import EnvironmentFailure, IcloraError, describe_os_error
from iclora_data.executors import Executor, ThreadExecutor
from iclora_data.faults import crash_point
from iclora_data.ingest import IngestResult, check_out_is_not_source, ingest
from iclora_data.outdir import OutDir
from iclora_data.progress import ProgressListener, SilentProgress
from iclora_data.records import (
    CaptionRecord,
    CompositeRecord,
    PreparedSet,
    SetDecision,
    Shard,
    file_stem,
    from_dict,
    load_captions,
    shard_name,
    to_dict,
)
from iclora_data.report import build_report_entries, write_report_stream
from iclora_data.secrets import register_secret, scrub, scrub_obj
from iclora_data.sources import hub_source, source_exists
from iclora_data.store import (
    RunStore,
    StatCache,
    atomic_write_bytes,
    atomic_write_json,
    content_key,
    link_or_copy,
    remove_partial_files,
    sync_filesystem,
    temp_dir,
)

if TYPE_CHECKING:
    from iclora_data.caption.settings import CaptionSettings

MAX_SHARD_SETS = 256  # a shard's sets: enough to amortise a task's overhead, few enough to resume cheaply
SHARDS_PER_WORKER = 4  # a few per worker, so a slow shard does not leave the others idle
CAPTION_INDEX = "caption-index"  # store kind: the build's own index of finished captions (see _caption_index_key)


class NoBuildError(IcloraError):
    pass


class SourceVanishedError(IcloraError):
    """SOURCE disappeared while the build ran: nothing is committed (every set would look unreadable)."""


@dataclass
class BuildResult:
    """What a build did. ``rejects`` lists the sets not kept, for the flow's artifact."""

    out: Path
    counts: dict[str, int]
    decoded_images: int
    captioner: str | None = None
    rejects: list[dict[str, Any]] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)  # the outputs this run changed (names under OUT)
    captions: dict[str, Any] | None = None  # caption.caption_outcome of this run (None: no caption stage)
    warnings: list[str] = field(default_factory=list)  # said loudly by the CLI (e.g. most captions failed)

    def as_dict(self) -> dict[str, Any]:
        """The flow's return value (a JSON-friendly summary)."""
        return {"counts": self.counts, "decoded_images": self.decoded_images, "out": str(self.out),
                "rewritten": list(self.rewritten), "captions": self.captions, "warnings": list(self.warnings)}


# --- shards -------------------------------------------------------------------------------------------

def shard_size_for(n_sets: int, workers: int, shard_size: int | None = None) -> int:
    """Sets per shard: ``shard_size`` when given, else a few shards per worker and at most MAX_SHARD_SETS."""
    if shard_size is not None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        return shard_size
    return max(1, min(MAX_SHARD_SETS, math.ceil(n_sets / (max(1, workers) * SHARDS_PER_WORKER))))


def make_shards(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# --- the build -----------------------------------------------------------------------------------------

def run_build(source: str | Path, out: str | Path, config: BuildConfig | Mapping[str, Any] | None = None,
              executor: Executor | None = None, progress: ProgressListener | None = None,
              lock_timeout: float = 0, shard_size: int | None = None) -> BuildResult:
    """Build IC-LoRA training data from SOURCE into OUT (docs/ARCHITECTURE.md). Holds the OUT lock.

    ``executor`` maps the per-shard stages (default: a thread pool of ``config.workers``);
    ``progress`` hears about each stage from this thread only. Raises IcloraError for a problem of the
    invocation or the environment; bad data is reported per set in the ledger."""
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.model_validate(dict(config or {}))
    check_out_is_not_source(source, out)  # before the lock would create OUT/.iclora inside SOURCE
    layout = OutDir(out)
    store = RunStore(layout.root)
    executor = executor or ThreadExecutor(cfg.workers)
    progress = progress or SilentProgress()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if cfg.caption.api_key_env:  # scrubbed from every message, file and log line of this process
        register_secret(os.environ.get(cfg.caption.api_key_env))
    with store.lock(timeout=lock_timeout):
        from iclora_data.publish import recover_dirs

        recover_dirs(layout.root)  # first: a folder a killed swap set aside is put back before any sweep
        # temporary files exist only where a run was killed mid-write: sweep (a walk of the whole store)
        # only then, or when this OUT has never been committed by this version
        if layout.running.exists() or not layout.commit_state.exists():
            remove_partial_files(layout.root)
        layout.running.touch()
        try:
            result = _build(source, layout, cfg, executor, progress, shard_size, started)
        except OSError as exc:  # per-file problems are reasons in the ledger: what reaches here is the run's
            raise EnvironmentFailure(f"the build failed: {describe_os_error(exc)}; the previous outputs in "
                                     f"{layout.root} are unchanged") from exc
        layout.running.unlink()  # a run that raised leaves it too: the next one sweeps, as insurance
        return result


def _build(source: str | Path, layout: OutDir, cfg: BuildConfig, executor: Executor, progress: ProgressListener,
           shard_size: int | None, started: str) -> BuildResult:
    workers = getattr(executor, "workers", cfg.workers)
    ingested = ingest(source if hub_source(source) else Path(source), out=layout.root, settings=cfg.source,
                      work_dir=layout.store, grid=cfg.compose.layout)
    size = shard_size_for(len(ingested.sets), workers, shard_size)
    shards = [Shard(i, sets) for i, sets in enumerate(make_shards(ingested.sets, size))]

    prepared = _prepare(shards, cfg, layout, executor, progress)
    check_source_was_readable(source, prepared)
    decoded = sum(p.decoded for p in prepared)
    max_distance = cfg.dedup.max_distance if cfg.dedup.max_distance is not None else DEFAULT_MAX_DISTANCE
    progress.start("dedup", 1)
    decisions = deduplicate_sets([p for p in prepared if not p.rejection], max_distance)
    progress.advance("dedup")

    captions: dict[str, CaptionRecord] = {}
    outcome: dict[str, Any] | None = None
    if cfg.until != "compose":
        kept = [p.composite for p in prepared if p.composite is not None
                and decisions.get(p.set_id, _NONE).status == "kept"]
        # a captioner that cannot serve raises CaptionRunError here, before the commit: nothing changes
        captions, outcome = caption_composites(kept, layout, cfg.caption, executor, progress, size)
        decisions = reject_failed_captions(decisions, captions.values())
    # text a server sent (a failed caption's error, a caption itself) may echo a key back: nothing written
    # from here on carries a registered secret
    captions = {set_id: from_dict(CaptionRecord, scrub_obj(to_dict(rec))) for set_id, rec in captions.items()}
    decisions = {set_id: dataclasses.replace(d, reason=scrub(d.reason), warnings=[scrub(w) for w in d.warnings])
                 for set_id, d in decisions.items()}
    outcome = scrub_obj(outcome)  # its notes quote what a server said
    if not source_exists(source):
        raise SourceVanishedError(f"SOURCE {source} disappeared during the build; nothing was changed in "
                                  f"{layout.root}")
    result = _commit(ingested, prepared, decisions, captions, cfg, layout, decoded, started, progress, outcome)
    result.captions = outcome
    if outcome is not None and outcome["warning"]:
        result.warnings.append(outcome["warning"])
    return result


_NONE = SetDecision("", "rejected", "")


def check_source_was_readable(source: str | Path, prepared: Sequence[PreparedSet]) -> None:
    """A run whose sets all failed because their files could not be read failed itself: SOURCE's storage
    is gone (an unmounted share leaves an empty folder behind), not the data bad. Committing it would
    replace every published output with nothing."""
    unreadable = [p for p in prepared if p.file_reasons
                  and all(r.startswith(UNREADABLE) for r in p.file_reasons.values())]
    if unreadable and not any(p.composite is not None for p in prepared):
        first = next(iter(unreadable[0].file_reasons.items()))
        raise EnvironmentFailure(f"no set could be composed and the files of {len(unreadable)} set(s) could not be "
                                 f"read (first: {first[0]}: {first[1].removeprefix(UNREADABLE + ': ')}); is SOURCE "
                                 f"{source} still there? Nothing was changed")


def recaption(out: str | Path, caption: Mapping[str, Any] | None = None, executor: Executor | None = None,
              progress: ProgressListener | None = None, lock_timeout: float = 0) -> BuildResult:
    """Caption an existing build again with other caption settings, and re-publish its dataset.

    Re-runs the build on the build's own SOURCE and config with ``caption`` as its caption section:
    every composite is found in the run store, captions whose key is unchanged come from the store
    too, so only what the new settings change is done."""
    manifest = OutDir(out).build
    if not manifest.exists():
        raise NoBuildError(f"{out} holds no finished build (no build.json): run `iclora build SOURCE --out {out}`")
    build = json.loads(manifest.read_text(encoding="utf-8"))
    if not source_exists(build["source"]):
        raise NoBuildError(f"the SOURCE of this build, {build['source']}, no longer exists")
    config = dict(build["config"])
    config["caption"] = dict(caption or {})
    config["until"] = "publish"
    return run_build(build["source"], out, config, executor=executor, progress=progress, lock_timeout=lock_timeout)


def _prepare(shards: list[Shard], cfg: BuildConfig, layout: OutDir, executor: Executor,
             progress: ProgressListener) -> list[PreparedSet]:
    progress.start("prepare", sum(len(s.sets) for s in shards))
    fn = functools.partial(prepare_shard, settings=cfg.compose, out=str(layout.root), sources=cfg.source)
    results: dict[int, list[PreparedSet]] = {}
    cache = StatCache(layout.stat_cache)
    cache.open_for_writing()
    try:
        for index, shard in executor.map(fn, shards, [s.name("prepare") for s in shards]):
            cache.update(shard.stat_rows)  # the one writer of the stat cache
            results[index] = shard.sets
            progress.advance("prepare", len(shard.sets))
    finally:
        cache.close()
    return [p for i in range(len(shards)) for p in results[i]]


def reject_failed_captions(decisions: Mapping[str, SetDecision],
                           captions: Iterable[CaptionRecord]) -> dict[str, SetDecision]:
    """A set whose caption failed leaves the dataset: it becomes a rejected set with the reason. A set
    whose new caption failed but that kept its previous caption stays, with a warning saying so."""
    from iclora_data.records import KEPT_PREVIOUS_CAPTION

    updated = dict(decisions)
    for r in captions:
        if r.status == "failed":
            updated[r.set_id] = SetDecision(r.set_id, "rejected", f"captioning failed: {r.error}")
        elif r.error and r.error.startswith(KEPT_PREVIOUS_CAPTION) and r.set_id in updated:
            old = updated[r.set_id]
            updated[r.set_id] = dataclasses.replace(old, warnings=[*old.warnings, r.error])
    return updated


# --- caption -------------------------------------------------------------------------------------------

@functools.cache
def _caption_code_digest() -> str:
    """A digest of the caption package's source: when its code changes, the index is not trusted."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "caption").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _caption_index_key(rec: CompositeRecord, settings: CaptionSettings, prompt_digest: str) -> str:
    """The build's own key of a finished caption, computed without importing the caption package: every
    input a caption can depend on (the composite record, all caption settings, the prompt file's bytes,
    the caption code). It can only be stricter than the caption package's key; a miss just asks
    ``caption_sets``, which finds its own store entries first."""
    composite = {k: v for k, v in to_dict(rec).items() if k not in ("set_id", "image", "source_files")}
    return content_key("caption-index/v1", _caption_code_digest(), composite,
                       settings.model_dump(mode="json"), prompt_digest)


def _prompt_digest(settings: CaptionSettings) -> str:
    prompt_file = getattr(settings, "prompt_file", None)
    if not prompt_file:
        return ""
    try:
        return hashlib.sha256(Path(prompt_file).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"  # caption_sets reports it


def caption_composites(kept: Sequence[CompositeRecord], layout: OutDir, settings: CaptionSettings,
                       executor: Executor, progress: ProgressListener,
                       shard_size: int) -> tuple[dict[str, CaptionRecord], dict[str, Any]]:
    """Caption records of ``kept`` by set id, and the run's caption figures (``caption.caption_outcome``).

    The rules (docs/ARCHITECTURE.md, "Captions"): captions people edited (``OUT/captions-edited/``) win;
    cached ones come from the run store with no import of the caption package; the rest are captioned in
    shards on ``executor``, after one probe of the captioner, so a captioner that cannot serve raises
    CaptionRunError before any shard starts. A set whose new caption fails keeps the caption OUT already
    had for the same composite."""
    store = RunStore(layout.root)
    progress.start("caption", len(kept))
    prompt_digest = _prompt_digest(settings)
    records: dict[str, CaptionRecord] = {}
    todo: list[tuple[CompositeRecord, str]] = []
    edited: dict[str, Any] = {}
    if layout.captions_edited.is_dir():
        from iclora_data.caption.review import load_edited

        edited = load_edited(layout.root)
    for rec in kept:
        edit = edited.get(rec.set_id)
        if edit is not None and len(edit.panels) == len(rec.panel_boxes):
            from iclora_data.caption.run import human_record

            records[rec.set_id] = human_record(rec, content_key("human-caption", rec.key, edit.caption), edit)
            continue
        index_key = _caption_index_key(rec, settings, prompt_digest)
        cached = store.get_json(CAPTION_INDEX, index_key)
        if cached is not None:
            found = from_dict(CaptionRecord, cached)
            records[rec.set_id] = dataclasses.replace(found, set_id=rec.set_id)
        else:
            todo.append((rec, index_key))
    progress.advance("caption", len(records))
    if not todo:
        return records, _caption_outcome(records, settings, asked=False)
    from iclora_data.caption import check_captioner
    from iclora_data.caption.run import keep_previous_caption

    check_captioner(settings)  # an openai server is probed: unreachable, refused or unknown model fail here
    previous = load_captions(layout.root)  # the last commit's captions
    shards = make_shards(todo, shard_size)
    names = [shard_name("caption", i, [r.set_id for r, _ in shard]) for i, shard in enumerate(shards)]
    fn = functools.partial(caption_shard, out=str(layout.root), settings=settings)
    for index, results in executor.map(fn, [[r for r, _ in shard] for shard in shards], names):
        for (rec, index_key), cap in zip(shards[index], results, strict=True):
            if cap.status == "ok" and cap.source == "model":
                store.put_json(CAPTION_INDEX, index_key, to_dict(cap))
            records[rec.set_id] = keep_previous_caption(cap, previous.get(rec.set_id), rec) or cap
        progress.advance("caption", len(results))
    return records, _caption_outcome(records, settings, asked=True)


def _caption_outcome(records: Mapping[str, CaptionRecord], settings: CaptionSettings, asked: bool) -> dict[str, Any]:
    """The run's caption figures; the caption package is imported only when it captioned something."""
    if not asked:  # every caption was edited or cached: the same figures, none failed
        by_source = {source: sum(r.source == source for r in records.values())
                     for source in ("model", "human", "sidecar")}
        return {"sets": len(records), **by_source, "failed": 0, "kept_previous": 0, "failed_share": 0.0,
                "mostly_failed": False, "warning": None, "notes": []}
    from iclora_data.caption import caption_outcome, captioner_notes

    return caption_outcome(list(records.values()), captioner_notes(settings))


_LOCAL_MODEL_LOCK = threading.Lock()


def caption_shard(composites: list[CompositeRecord], out: str, settings: CaptionSettings) -> list[CaptionRecord]:
    """The caption stage over one shard (in a worker). Composites are read from the run store: they are
    not in ``OUT/composites/`` until the commit."""
    store = RunStore(Path(out))
    in_store = [dataclasses.replace(rec, image=store_image_name(rec)) for rec in composites]
    # A local model captions one shard at a time per process: it uses every core by itself, and two
    # threads importing transformers at once break its lazy imports. A server takes concurrent shards.
    with _LOCAL_MODEL_LOCK if settings.backend == "transformers" else contextlib.nullcontext():
        from iclora_data.caption import caption_sets

        results = caption_sets(in_store, store.root / "composites", store, settings)
    return [dataclasses.replace(r, set_id=rec.set_id) for rec, r in zip(composites, results, strict=True)]


def store_image_name(rec: CompositeRecord) -> str:
    """The composite's file inside the run store's ``composites/`` kind, relative to it."""
    return f"{rec.key[:2]}/{rec.key}{Path(rec.image).suffix}"


def store_image(layout: OutDir, rec: CompositeRecord) -> Path:
    return layout.object_path("composites", rec.key, Path(rec.image).suffix)


# --- commit --------------------------------------------------------------------------------------------

def _commit(ingested: IngestResult, prepared: list[PreparedSet], decisions: Mapping[str, SetDecision],
            captions: Mapping[str, CaptionRecord], cfg: BuildConfig, layout: OutDir, decoded: int,
            started: str, progress: ProgressListener, caption_outcome: Mapping[str, Any] | None = None) -> BuildResult:
    """Stage every output, then put them in place (docs/ARCHITECTURE.md, "The commit step").

    Staging (the part that can fail on bad luck: disk full, a broken thumbnail) writes only temporary
    files and folders; the put-in-place part is renames, links and small writes. Outputs whose inputs
    have the same digest as at the last commit are not rewritten."""
    progress.start("commit", 1)
    state = _read_state(layout)
    new_state: dict[str, str] = {}
    rewritten: list[str] = []
    sets, files, counts = build_report_entries(ingested, prepared, decisions)
    kept = sorted((p.composite for p in prepared if p.composite is not None
                   and decisions.get(p.set_id, _NONE).status == "kept"), key=lambda r: r.set_id)
    captioned = cfg.until != "compose"
    kept_captions = {r.set_id: captions[r.set_id] for r in kept if r.set_id in captions} if captioned \
        else {k: v for k, v in load_captions(layout.root).items() if k in {r.set_id for r in kept}}
    captioner_id = next((c.captioner for c in captions.values() if c.captioner), None)

    staging = temp_dir(layout.store, "commit")
    try:
        # the ledger: streamed to a temporary file; unchanged bytes leave report.json alone
        report_tmp = staging / "report.json"
        new_state["report"] = write_report_stream(report_tmp, counts, sets, files)
        report_changed = new_state["report"] != state.get("report") or not layout.report.is_file()

        composites_digest = _records_digest((r.image, r.key, to_dict(r)) for r in kept)
        new_state["composites"] = composites_digest
        composites_changed = composites_digest != state.get("composites") or not layout.composites.is_dir()
        captions_digest = _records_digest(to_dict(kept_captions[r.set_id]) for r in kept if r.set_id in kept_captions)
        if captioned:
            new_state["captions"] = captions_digest
        elif "captions" in state:
            new_state["captions"] = state["captions"]
        captions_changed = captioned and (captions_digest != state.get("captions") or not layout.captions.is_dir())

        build = {
            "version": 1, "source": str(ingested.source), "source_kind": ingested.kind,
            "config": cfg.model_dump(mode="json"), "started_at": started,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "until": cfg.until,
            "iclora_version": __version__, "captioner": captioner_id,
            "prompt_version": _prompt_version() if captioned else None,
            "counts": counts, "decoded_images": decoded, "captions": dict(caption_outcome or {}) or None}
        # what the dataset and the gallery show, without the run's timestamps
        # (and without this run's caption figures: a re-run that found every caption cached shows the same)
        stable_build = {k: v for k, v in build.items()
                        if k not in ("started_at", "finished_at", "decoded_images", "captions")}

        dataset_tmp: Path | None = None
        stage_dataset_changed = False
        if cfg.until == "publish":
            new_state["dataset"] = content_key("dataset/v1", stable_build, composites_digest, captions_digest)
            if new_state["dataset"] != state.get("dataset") or not layout.dataset.is_dir():
                dataset_tmp = _stage_dataset(staging, layout, build, counts, kept, kept_captions)
                stage_dataset_changed = True
        elif "dataset" in state:
            new_state["dataset"] = state["dataset"]

        gallery_tmp: Path | None = None
        new_state["gallery"] = content_key("gallery/v2", stable_build, new_state["report"], composites_digest,
                                           captions_digest)
        if new_state["gallery"] != state.get("gallery") or not layout.gallery_page.is_file():
            from iclora_data.gallery import stage_gallery

            gallery_tmp = staging / "gallery-stage"
            stage_gallery(gallery_tmp, layout, sets=sets, files=files, counts=counts, kept=kept,
                          captions=kept_captions, build=build,
                          composite_file=lambda rec: store_image(layout, rec))

        # --- put in place: nothing above touched an output ---------------------------------------
        sync_filesystem(layout.root)  # store objects and staged files are on disk before outputs point at them
        crash_point("commit-staged")
        if composites_changed:
            _place_composites(layout, kept)
            rewritten.append("composites")
            crash_point("composites-placed")
        if captions_changed:
            _place_captions(layout, kept, kept_captions)
            rewritten.append("captions")
        if report_changed:
            os.replace(report_tmp, layout.report)
            rewritten.append("report.json")
            crash_point("report-replaced")
        atomic_write_json(layout.build, build)  # its times say when this run happened: always written
        if stage_dataset_changed:
            from iclora_data.publish import remove_dir, replace_dir

            if dataset_tmp is not None:
                replace_dir(dataset_tmp, layout.dataset)
            else:  # no row: datasets cannot load an empty split, so there is no dataset (nor an old one)
                remove_dir(layout.dataset)
            rewritten.append("dataset")
        if gallery_tmp is not None:
            from iclora_data.gallery import commit_gallery

            commit_gallery(gallery_tmp, layout)
            rewritten.append("gallery")
            crash_point("gallery-placed")
        atomic_write_json(layout.commit_state, new_state)
        sync_filesystem(layout.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.advance("commit")
    rejects = [{"set_id": s.set_id, "status": s.status, "reason": s.reason, "duplicate_of": s.duplicate_of}
               for s in sets if s.status != "kept"]
    return BuildResult(layout.root, counts, decoded, captioner_id, rejects, rewritten)


def _read_state(layout: OutDir) -> dict[str, str]:
    try:
        state = json.loads(layout.commit_state.read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _records_digest(items: Iterable[Any]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _sidecar_bytes(rec: CompositeRecord) -> bytes:
    return json.dumps(to_dict(rec), indent=2, ensure_ascii=False).encode("utf-8")


def _caption_bytes(rec: CaptionRecord) -> bytes:
    return (json.dumps(to_dict(rec), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _place_composites(layout: OutDir, kept: Sequence[CompositeRecord]) -> None:
    """OUT/composites/ holds exactly the kept sets' composites (hard links into the store) and sidecars."""
    folder = layout.composites
    folder.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    for rec in kept:
        src = store_image(layout, rec)
        dst = layout.composite_image(rec.image)
        if not (dst.exists() and os.path.samefile(src, dst)):
            link_or_copy(src, dst)
        sidecar = layout.composite_sidecar(file_stem(rec.set_id))
        data = _sidecar_bytes(rec)
        if not _same_bytes(sidecar, data):
            atomic_write_bytes(sidecar, data)
        wanted.update({dst.name, sidecar.name})
    _remove_others(folder, wanted)


def _place_captions(layout: OutDir, kept: Sequence[CompositeRecord], captions: Mapping[str, CaptionRecord]) -> None:
    """OUT/captions/ holds exactly the kept sets' caption records."""
    folder = layout.captions
    folder.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    for rec in kept:
        cap = captions.get(rec.set_id)
        if cap is None:
            continue
        path = layout.caption_file(file_stem(rec.set_id))
        data = _caption_bytes(cap)
        if not _same_bytes(path, data):
            atomic_write_bytes(path, data)
        wanted.add(path.name)
    _remove_others(folder, wanted)


def _remove_others(folder: Path, wanted: set[str]) -> None:
    """Sets that left SOURCE or are no longer kept leave OUT too."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name not in wanted and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def _stage_dataset(staging: Path, layout: OutDir, build: dict[str, Any], counts: dict[str, int],
                   kept: list[CompositeRecord], captions: Mapping[str, CaptionRecord]) -> Path | None:
    """The dataset in a staging folder, or None when it has no row."""
    from iclora_data.publish import FinishedBuild, stage_dataset

    finished = FinishedBuild(layout.root, {"counts": counts}, build, kept, dict(captions))
    dest = staging / "dataset"
    summary = stage_dataset(finished, dest, image_path=lambda rec: store_image(layout, rec), require_captions=True)
    return dest if summary.rows else None


def _prompt_version() -> str | None:
    from iclora_data.caption import PROMPT_VERSION

    return PROMPT_VERSION

