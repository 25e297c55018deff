"""Caption a build's composites: cache lookups, sidecar captions, batching, checks and bounded retries.

A caption is stored in the run store under its key (composite key + captioner + template +
generation settings + the set's own text when it is used), so a re-run finds every finished
caption and asks the model for none of them; a changed template or model re-captions. A set whose
answers stay malformed after ``max_attempts`` gets a failed record with the reason, never an empty
caption; failed records are not cached, so the next run tries them again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclora_data.caption.base import Captioner, CaptionerError, CaptionRequest, captioner_id
from iclora_data.caption.prompts import PROMPT_VERSION, PromptTemplate, load_template
from iclora_data.caption.schema import (
    CaptionValidationError,
    caption_schema,
    parse_caption,
    render_caption,
    split_rendered,
)
from iclora_data.caption.settings import TINY_RANDOM, CaptionSettings
from iclora_data.records import CaptionRecord, CompositeRecord, from_dict, to_dict
from iclora_data.store import RunStore, content_key

log = logging.getLogger(__name__)

STORE_KIND = "captions"
SIDECAR_CAPTIONER = "sidecar"

_CAPTIONERS: dict[tuple[Any, ...], Captioner] = {}
_CAPTIONERS_LOCK = threading.Lock()


def effective_settings(settings: CaptionSettings) -> CaptionSettings:
    """Settings as the captioner uses them (model defaults filled in; see CaptionSettings.resolved)."""
    return settings.resolved()


def _plain_ascii(settings: CaptionSettings) -> bool:
    return settings.model == TINY_RANDOM and settings.max_chars is not None


def check_captioner(settings: CaptionSettings) -> None:
    """Cheap checks before any work (no weights loaded): the prompt file, the model folder and its config.
    Raises a one-line IcloraError."""
    load_template(settings.prompt_file)
    if settings.backend == "transformers":
        from iclora_data.caption.transformers_backend import check_model

        check_model(settings)


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


def sidecar_caption(composite: CompositeRecord) -> tuple[str, tuple[str, ...]] | None:
    """The set's own caption as (summary, panels) when it has the caption's structure: either written with
    the layout's tags in order, or a caption.txt plus one non-empty note per panel. None otherwise."""
    text = (composite.source_caption or "").strip()
    hints = [h.strip() for h in composite.panel_hints or []]
    if text:
        structured = split_rendered(text, composite)
        if structured:
            return structured.summary, structured.panels
    n = len(composite.panel_boxes)
    if text and len(hints) == n and all(hints):
        return " ".join(text.split()), tuple(" ".join(h.split()) for h in hints)
    return None


@dataclass
class _Job:
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


def caption_sets(composites: Sequence[CompositeRecord], composites_dir: Path, store: RunStore,
                 settings: CaptionSettings, *, captioner: Captioner | None = None,
                 on_result: Callable[[CaptionRecord], None] | None = None) -> list[CaptionRecord]:
    """Caption every composite; one record per composite, in input order (ok, or failed with a reason).

    Finished captions come from ``store``; the model is loaded only when something is left to caption."""
    settings = effective_settings(settings)
    template = load_template(settings.prompt_file)
    records: dict[int, CaptionRecord] = {}

    def finish(i: int, record: CaptionRecord) -> None:
        records[i] = record
        if record.status == "ok":
            store.put_json(STORE_KIND, record.key, to_dict(record))
        if on_result is not None:
            on_result(record)

    jobs: dict[int, _Job] = {}
    for i, comp in enumerate(composites):
        key = caption_key(comp, settings, template)
        cached = store.get_json(STORE_KIND, key)
        if cached is not None:
            rec = from_dict(CaptionRecord, cached)
            rec.set_id = comp.set_id  # the same content may be another set's (ids are not in the key)
            records[i] = rec
            if on_result is not None:
                on_result(rec)
            continue
        if settings.sidecar == "keep" and (own := sidecar_caption(comp)) is not None:
            summary, panels = own
            finish(i, CaptionRecord(set_id=comp.set_id, key=key, composite_key=comp.key, status="ok",
                                    summary=summary, panels=list(panels),
                                    caption=render_caption(summary, panels, comp),
                                    captioner=SIDECAR_CAPTIONER, source="sidecar", attempts=0))
            continue
        # keep without a structured sidecar: the model captions, with the set's text as a hint
        use_hints = settings.sidecar in ("hint", "keep")
        jobs[i] = _Job(comp, key, template.render(comp, use_hints=use_hints))

    if jobs:
        captioner = captioner or load_captioner(settings)
        order = list(jobs)
        for start in range(0, len(order), captioner.batch_size):
            chunk = {i: jobs[i] for i in order[start:start + captioner.batch_size]}
            try:
                _caption_chunk(chunk, composites_dir, settings, captioner, finish)
            finally:
                # a finished request's decoded panels go now: kept on their jobs until every set of the
                # call was done, they made memory grow by a composite's pixels per set (~4 MB at 1 MP)
                for job in chunk.values():
                    job.request = None
    return [records[i] for i in range(len(composites))]


def _caption_chunk(chunk: dict[int, _Job], composites_dir: Path, settings: CaptionSettings,
                   captioner: Captioner, finish: Callable[[int, CaptionRecord], None]) -> None:
    def failed(job: _Job, error: str) -> CaptionRecord:
        return CaptionRecord(set_id=job.composite.set_id, key=job.key, composite_key=job.composite.key,
                             status="failed", captioner=captioner.id, error=error, attempts=job.attempts)

    todo: dict[int, _Job] = {}
    for i, job in chunk.items():
        comp = job.composite
        try:
            panels = _panels(comp, composites_dir)
        except Exception as exc:  # noqa: BLE001 - an unreadable composite fails its own set only
            finish(i, failed(job, f"cannot read composite {comp.image}: {exc}"))
            continue
        schema = caption_schema(len(panels), settings.max_chars, plain_ascii=_plain_ascii(settings))
        job.request = CaptionRequest(comp.set_id, panels, job.instruction, schema)
        todo[i] = job
    for attempt in range(1, settings.max_attempts + 1):
        if not todo:
            break
        answers = captioner.generate([j.request for j in todo.values() if j.request], attempt)
        retry: dict[int, _Job] = {}
        for (i, job), answer in zip(todo.items(), answers, strict=True):
            job.attempts = attempt
            if isinstance(answer, Exception):
                job.error = str(answer)
                retry[i] = job
                continue
            try:
                caption = parse_caption(answer, len(job.composite.panel_boxes), job.composite)
            except CaptionValidationError as exc:
                job.error = str(exc)
                retry[i] = job
                continue
            finish(i, CaptionRecord(set_id=job.composite.set_id, key=job.key, composite_key=job.composite.key,
                                    status="ok", summary=caption.summary, panels=list(caption.panels),
                                    caption=render_caption(caption.summary, caption.panels, job.composite),
                                    captioner=captioner.id, source="model", attempts=attempt))
        if retry:
            log.info("caption attempt %d: %d set(s) to retry", attempt, len(retry))
        todo = retry
    for i, job in todo.items():
        word = "attempt" if job.attempts == 1 else "attempts"
        finish(i, failed(job, f"caption failed after {job.attempts} {word}: {job.error}"))
