"""Caption a build's composites: cache lookups, human edits, sidecar captions, a sliding window of
requests, checks and bounded retries.

A caption is stored in the run store under its key (composite key + captioner + template +
generation settings + the set's own text when it is used), so a re-run finds every finished
caption and asks the model for none of them; a changed template or model re-captions.

Failures at two layers (docs/ARCHITECTURE.md, Captions):

- the backend fails (unreachable, refused, unknown model, cannot load): ``probe()`` finds it before any
  work, or a request meets it later; ``CaptionRunError`` propagates and the caller changes nothing.
- the model answered badly (malformed, wrong count, a failed quality check): that set is retried with
  the reason in its instruction, up to ``max_attempts``; then it gets a failed record with the reason,
  never an empty caption, and is not cached, so the next run tries it again. With ``previous`` captions
  (a re-caption of a built OUT), a set whose new caption fails keeps its previous one, said so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclora_data.caption.base import Captioner, CaptionerError, CaptionRequest, captioner_id
from iclora_data.caption.length import token_counter
from iclora_data.caption.prompts import PROMPT_VERSION, PromptTemplate, load_template
from iclora_data.caption.quality import check_caption
from iclora_data.caption.schema import (
    CaptionValidationError,
    caption_grammar,
    caption_schema,
    parse_caption,
    render_caption,
    split_rendered,
)
from iclora_data.caption.settings import TINY_RANDOM, CaptionSettings
from iclora_data.caption.style import clean_text
from iclora_data.records import KEPT_PREVIOUS_CAPTION, CaptionRecord, CompositeRecord, from_dict, to_dict
from iclora_data.store import RunStore, content_key

log = logging.getLogger(__name__)

STORE_KIND = "captions"
SIDECAR_CAPTIONER = "sidecar"
HUMAN_CAPTIONER = "human"

_CAPTIONERS: dict[tuple[Any, ...], Captioner] = {}
_CAPTIONERS_LOCK = threading.Lock()


def effective_settings(settings: CaptionSettings) -> CaptionSettings:
    """Settings as the captioner uses them (model defaults filled in; see CaptionSettings.resolved)."""
    return settings.resolved()


def _plain_ascii(settings: CaptionSettings) -> bool:
    return settings.model == TINY_RANDOM and settings.max_chars is not None


def check_captioner(settings: CaptionSettings, *, quick: bool = False) -> None:
    """Cheap checks before any work (no weights loaded): the prompt file, the length tokenizer, the model
    folder and its config; an openai server is probed (one small request: reachable, key accepted, model
    served), so a bad URL fails in seconds. Raises a one-line IcloraError (CaptionRunError for a server).

    ``quick``: only what needs no import of the model's code (the prompt file, a local model folder's
    ``config.json``, the server probe). The CLI checks this way before a build, so a re-run whose captions
    are all cached never loads transformers; the build makes the full check once some set needs a caption."""
    settings = effective_settings(settings)
    load_template(settings.prompt_file)
    if not quick:
        token_counter(settings.tokenizer)
    if settings.backend == "transformers":
        from iclora_data.caption.transformers_backend import check_model, check_model_folder

        if quick:
            check_model_folder(settings)
        else:
            check_model(settings)
    elif settings.backend == "openai":
        from iclora_data.caption.openai_backend import OpenAICaptioner

        server = OpenAICaptioner(settings, captioner_id(settings))
        try:
            server.probe()
        finally:
            server.close()


def load_captioner(settings: CaptionSettings) -> Captioner:
    """The captioner for ``settings``, loaded once per process (a model's weights load once however
    many captioners share it). Raises CaptionerError before any work when it cannot be used."""
    settings = effective_settings(settings)
    load_template(settings.prompt_file)  # a bad prompt file is an invocation error too
    key = (captioner_id(settings), settings.model_dump_json())
    with _CAPTIONERS_LOCK:
        if key in _CAPTIONERS:
            return _CAPTIONERS[key]
        captioner: Captioner
        if settings.backend == "transformers":
            from iclora_data.caption.transformers_backend import TransformersCaptioner

            captioner = TransformersCaptioner(settings, captioner_id(settings))
        elif settings.backend == "openai":
            from iclora_data.caption.openai_backend import OpenAICaptioner

            captioner = OpenAICaptioner(settings, captioner_id(settings))
        else:  # pydantic already restricts it; kept for settings built with model_construct
            raise CaptionerError(f"unknown caption backend {settings.backend!r}; use transformers or openai")
        _CAPTIONERS[key] = captioner
        return captioner


def _sidecar_inputs(composite: CompositeRecord, settings: CaptionSettings) -> list[Any]:
    if settings.sidecar == "ignore":
        return []
    return [composite.source_caption, composite.panel_hints]


def caption_key(composite: CompositeRecord, settings: CaptionSettings, template: PromptTemplate | None = None) -> str:
    """The store key of a composite's caption under ``settings``; needs no model (cheap re-run checks)."""
    settings = effective_settings(settings)
    template = template or load_template(settings.prompt_file)
    return content_key("caption", PROMPT_VERSION, composite.key, captioner_id(settings), template.digest,
                       settings.generation_key(), list(composite.panel_tags), composite.prefix,
                       composite.preset, composite.task, _sidecar_inputs(composite, settings))


def sidecar_caption(composite: CompositeRecord) -> tuple[str, tuple[str, ...], str] | None:
    """The set's own caption as (summary, panels, training prompt) when it has the caption's structure:
    written with the layout's tags in order (kept word for word), or a caption.txt plus one non-empty
    note per panel (rendered in the preset's style). None otherwise."""
    text = (composite.source_caption or "").strip()
    hints = [h.strip() for h in composite.panel_hints or []]
    if text:
        structured = split_rendered(text, composite)
        if structured:
            return structured.summary, structured.panels, clean_text(text)
    n = len(composite.panel_boxes)
    if text and len(hints) == n and all(hints):
        summary, panels = clean_text(text), tuple(clean_text(h) for h in hints)
        return summary, panels, render_caption(summary, panels, composite)
    return None


@dataclass(frozen=True)
class EditedCaption:
    """A caption a person wrote or corrected (``iclora captions import``); it wins over any model's."""

    set_id: str
    summary: str
    panels: tuple[str, ...]
    caption: str  # the training prompt as the person left it


@dataclass
class _Job:
    index: int
    composite: CompositeRecord
    key: str
    instruction: str
    request: CaptionRequest | None = None
    error: str = ""
    attempts: int = 0


def _panels(composite: CompositeRecord, composites_dir: Path) -> list[Any]:
    """The composite cut into its panels with the layout module (the one geometry)."""
    from PIL import Image

    from iclora_data.layout import Layout

    layout = Layout(composite.rows, composite.cols, composite.width, composite.height,
                    panel_tags=tuple(composite.panel_tags), prefix=composite.prefix, preset=composite.preset)
    if [list(b) for b in layout.panel_boxes()] != [list(b) for b in composite.panel_boxes]:
        raise ValueError(f"panel boxes in {composite.image}'s sidecar do not match a {layout.grid} grid "
                         f"of {layout.width}x{layout.height}")
    with Image.open(composites_dir / composite.image) as im:
        im.load()
        return layout.split(im.convert("RGB"))


def build_request(composite: CompositeRecord, composites_dir: Path, settings: CaptionSettings,
                  instruction: str) -> CaptionRequest:
    """What one set is sent: its panels, the instruction, the schema (servers) and grammar (local)."""
    panels = _panels(composite, composites_dir)
    plain = _plain_ascii(settings)
    schema = caption_schema(len(panels), settings.max_chars, plain_ascii=plain)
    return CaptionRequest(composite.set_id, panels, instruction, schema,
                          grammar=None if plain else caption_grammar(len(panels), settings.max_chars))


def keep_previous_caption(new: CaptionRecord, old: CaptionRecord | None,
                          composite: CompositeRecord) -> CaptionRecord | None:
    """When ``new`` failed and the set had a good caption of the same composite, that caption, marked
    as kept (a re-caption never shrinks a dataset because the new captioner failed). None otherwise."""
    if new.status != "failed" or old is None or old.status != "ok" or not old.caption \
            or old.composite_key != composite.key:
        return None
    log.warning("caption of %s failed (%s); keeping its previous caption", new.set_id, new.error)
    return CaptionRecord(**{**to_dict(old), "set_id": new.set_id, "error": KEPT_PREVIOUS_CAPTION + str(new.error)})


def human_record(composite: CompositeRecord, key: str, edit: EditedCaption) -> CaptionRecord:
    return CaptionRecord(set_id=composite.set_id, key=key, composite_key=composite.key, status="ok",
                         summary=edit.summary, panels=list(edit.panels), caption=edit.caption,
                         captioner=HUMAN_CAPTIONER, source="human", attempts=0)


def caption_sets(composites: Sequence[CompositeRecord], composites_dir: Path, store: RunStore,
                 settings: CaptionSettings, *, captioner: Captioner | None = None,
                 on_result: Callable[[CaptionRecord], None] | None = None,
                 edited: Mapping[str, EditedCaption] | None = None,
                 previous: Mapping[str, CaptionRecord] | None = None) -> list[CaptionRecord]:
    """Caption every composite; one record per composite, in input order (ok, or failed with a reason).

    ``edited`` (set id -> a person's caption) wins over everything. ``previous`` (set id -> the caption
    OUT had) is kept for a set whose new caption fails. Finished captions come from ``store``; the model is
    loaded, and probed, only when something is left to caption. Raises CaptionRunError when the backend
    fails; records finished by then are in the store, so a re-run resumes."""
    settings = effective_settings(settings)
    template = load_template(settings.prompt_file)
    records: dict[int, CaptionRecord] = {}
    lock = threading.Lock()

    def finish(i: int, record: CaptionRecord, stored: bool = False) -> None:
        # ``stored``: it came from the store; writing it back would only rewrite a finished object
        if record.status == "ok" and record.source == "model" and not stored:
            store.put_json(STORE_KIND, record.key, to_dict(record))
        elif previous and (kept := keep_previous_caption(record, previous.get(record.set_id), composites[i])):
            record = kept
        with lock:
            records[i] = record
            if on_result is not None:
                on_result(record)

    jobs: list[_Job] = []
    for i, comp in enumerate(composites):
        key = caption_key(comp, settings, template)
        edit = (edited or {}).get(comp.set_id)
        if edit is not None and len(edit.panels) == len(comp.panel_boxes):
            finish(i, human_record(comp, key, edit))
            continue
        if edit is not None:
            log.warning("edited caption of %s has %d panels, its composite %d: not used", comp.set_id,
                        len(edit.panels), len(comp.panel_boxes))
        cached = store.get_json(STORE_KIND, key)
        if cached is not None:
            rec = from_dict(CaptionRecord, cached)
            rec.set_id = comp.set_id  # the same content may be another set's (ids are not in the key)
            finish(i, rec, stored=True)
            continue
        if settings.sidecar == "keep" and (own := sidecar_caption(comp)) is not None:
            summary, panels, prompt = own
            finish(i, CaptionRecord(set_id=comp.set_id, key=key, composite_key=comp.key, status="ok",
                                    summary=summary, panels=list(panels), caption=prompt,
                                    captioner=SIDECAR_CAPTIONER, source="sidecar", attempts=0))
            continue
        # keep without a structured sidecar: the model captions, with the set's text as a hint
        use_hints = settings.sidecar in ("hint", "keep")
        jobs.append(_Job(i, comp, key, template.render(comp, use_hints=use_hints, language=settings.language)))

    if jobs:
        captioner = captioner or load_captioner(settings)
        probe = getattr(captioner, "probe", None)
        if probe is not None:
            probe()  # a backend that cannot serve fails here, in seconds, before any set is sent
        _run_window(jobs, composites_dir, settings, captioner, finish)
    return [records[i] for i in range(len(composites))]


def _units(jobs: list[_Job], size: int) -> Iterator[list[_Job]]:
    for start in range(0, len(jobs), size):
        yield jobs[start:start + size]


def _run_window(jobs: list[_Job], composites_dir: Path, settings: CaptionSettings, captioner: Captioner,
                finish: Callable[[int, CaptionRecord], None]) -> None:
    """Keep ``captioner.concurrency`` units of ``batch_size`` sets in flight: a new unit starts as soon as
    any one ends (a sliding window, not chunks that wait for their slowest member). The first
    CaptionRunError stops new work, lets running units end, and propagates."""
    width = max(1, int(getattr(captioner, "concurrency", 1)))
    units = _units(jobs, max(1, captioner.batch_size))
    stop: BaseException | None = None
    pending: set[Future[None]] = set()
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="caption") as pool:
        while True:
            while stop is None and len(pending) < width and (unit := next(units, None)) is not None:
                pending.add(pool.submit(_caption_unit_then_release, unit, composites_dir, settings, captioner,
                                        finish))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if (exc := future.exception()) is not None and stop is None:
                    stop = exc
    if stop is not None:
        raise stop


def _captioner_label(captioner: Captioner) -> str:
    """The captioner as the dataset names it; a server that made us fall back says so there too."""
    fmt = getattr(captioner, "response_format", None)
    if fmt is None or fmt == "json_schema" or not getattr(captioner, "notes", None):
        return captioner.id
    return f"{captioner.id} (response_format {fmt})"


def _retry_instruction(job: _Job) -> str:
    return (f"{job.instruction}\nA previous answer was rejected because {job.error.rstrip('.')}. "
            "Write a new answer that avoids this.")


def _caption_unit_then_release(unit: list[_Job], composites_dir: Path, settings: CaptionSettings,
                               captioner: Captioner, finish: Callable[[int, CaptionRecord], None]) -> None:
    try:
        _caption_unit(unit, composites_dir, settings, captioner, finish)
    finally:
        # a finished unit's decoded panels go now: kept on their jobs until every set of the call was done,
        # they made memory grow by a composite's pixels per set (~4 MB at 1 MP; tests/test_memory.py)
        for job in unit:
            job.request = None


def _caption_unit(unit: list[_Job], composites_dir: Path, settings: CaptionSettings, captioner: Captioner,
                  finish: Callable[[int, CaptionRecord], None]) -> None:
    def failed(job: _Job, error: str) -> CaptionRecord:
        return CaptionRecord(set_id=job.composite.set_id, key=job.key, composite_key=job.composite.key,
                             status="failed", captioner=captioner.id, error=error, attempts=job.attempts)

    count_tokens = token_counter(settings.tokenizer)
    todo: list[_Job] = []
    for job in unit:
        try:
            job.request = build_request(job.composite, composites_dir, settings, job.instruction)
        except Exception as exc:  # noqa: BLE001 - an unreadable composite fails its own set only
            finish(job.index, failed(job, f"cannot read composite {job.composite.image}: {exc}"))
            continue
        todo.append(job)
    for attempt in range(1, settings.max_attempts + 1):
        if not todo:
            break
        requests = [j.request for j in todo if j.request is not None]
        if attempt > 1:
            for job, request in zip(todo, requests, strict=True):
                request.instruction = _retry_instruction(job)
        answers = captioner.generate(requests, attempt)
        retry: list[_Job] = []
        for job, answer in zip(todo, answers, strict=True):
            job.attempts = attempt
            comp = job.composite
            if isinstance(answer, Exception) and not isinstance(answer, CaptionValidationError):
                # a request that failed after the backend's own retries (5xx, timeouts) or that the server
                # refused (400): asking again at once would repeat it; the set fails with the reason
                job.error = str(answer)
                finish(job.index, failed(job, f"caption failed after {attempt} "
                                              f"{'attempt' if attempt == 1 else 'attempts'}: {job.error}"))
                continue
            try:
                if isinstance(answer, Exception):
                    raise answer
                caption = parse_caption(answer, len(comp.panel_boxes), comp)
                if settings.max_chars is not None:
                    over = [t for t in (caption.summary, *caption.panels) if len(t) > settings.max_chars]
                    if over:
                        raise CaptionValidationError(f"a text is {len(over[0])} characters, over max_chars="
                                                     f"{settings.max_chars}")
                rendered = check_caption(caption, comp, count_tokens=count_tokens, max_tokens=settings.max_tokens,
                                         checks=settings.checks or "all", language=settings.language)
            except CaptionValidationError as exc:
                job.error = str(exc)
                retry.append(job)
                continue
            finish(job.index, CaptionRecord(set_id=comp.set_id, key=job.key, composite_key=comp.key, status="ok",
                                            summary=caption.summary, panels=list(caption.panels), caption=rendered,
                                            captioner=_captioner_label(captioner), source="model",
                                            attempts=attempt))
        if retry:
            log.info("caption attempt %d: %d set(s) to retry", attempt, len(retry))
        todo = retry
    for job in todo:
        word = "attempt" if job.attempts == 1 else "attempts"
        finish(job.index, failed(job, f"caption failed after {job.attempts} {word}: {job.error}"))


MOSTLY_FAILED = 0.5  # share of the sets sent to the captioner whose caption failed, above which a run says so


def captioner_notes(settings: CaptionSettings) -> list[str]:
    """What the captioner of ``settings`` had to change during this process (e.g. a response_format
    fallback); empty when it was never loaded (everything came from the store)."""
    settings = effective_settings(settings)
    with _CAPTIONERS_LOCK:
        captioner = _CAPTIONERS.get((captioner_id(settings), settings.model_dump_json()))
    return list(getattr(captioner, "notes", []) or [])


def caption_outcome(records: Sequence[CaptionRecord], notes: Sequence[str] = ()) -> dict[str, Any]:
    """The run's caption figures for the report, with a loud ``warning`` when most sets failed: a
    captioner that fails nearly everything is more likely misconfigured than the data bad."""
    kept = [r for r in records if r.status == "ok" and (r.error or "").startswith(KEPT_PREVIOUS_CAPTION)]
    failed = [r for r in records if r.status == "failed"]
    by_source = {source: sum(r.status == "ok" and r.source == source and r not in kept for r in records)
                 for source in ("model", "human", "sidecar")}
    tried = by_source["model"] + len(failed) + len(kept)
    share = (len(failed) + len(kept)) / tried if tried else 0.0
    warning = None
    if tried and share > MOSTLY_FAILED:
        first = (failed or kept)[0]
        warning = (f"captioning failed for {len(failed) + len(kept)} of {tried} sets ({share:.0%}); check the "
                   f"captioner's settings. First reason ({first.set_id}): {first.error}")
    return {"sets": len(records), **by_source, "failed": len(failed), "kept_previous": len(kept),
            "failed_share": round(share, 3), "mostly_failed": warning is not None, "warning": warning,
            "notes": list(notes)}
