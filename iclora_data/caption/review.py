"""People review captions: export them to edit, import the edits, and see what a set would be sent.

``export_captions(OUT, DIR)`` writes one JSON file per captioned set (``summary``, ``panels`` and the
rendered ``caption``). A person edits either the summary/panels or the caption text itself.
``import_captions(OUT, DIR)`` checks every file and keeps the changed ones in ``OUT/captions-edited/``:
every later build or re-caption of OUT uses them over any model's (``captioner`` = ``human``).

``dry_run(...)`` shows the exact instruction and image sizes a set would be sent with, without sending it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclora_data.caption.length import token_counter
from iclora_data.caption.quality import check_tags
from iclora_data.caption.run import EditedCaption, build_request, effective_settings, load_template
from iclora_data.caption.schema import CaptionValidationError, StructuredCaption, render_caption, split_rendered
from iclora_data.caption.settings import CaptionSettings
from iclora_data.caption.style import clean_text
from iclora_data.errors import IcloraError
from iclora_data.records import CompositeRecord, composites_dir, file_stem, load_captions, load_composites
from iclora_data.store import atomic_write_json


class CaptionReviewError(IcloraError):
    pass


def edited_dir(out: Path) -> Path:
    from iclora_data.outdir import OutDir

    return OutDir(out).captions_edited


def export_captions(out: Path, dest: Path) -> int:
    """One ``<set>.json`` per captioned set of OUT in ``dest``; returns how many."""
    captions = load_captions(out)
    if not captions:
        raise CaptionReviewError(f"{out} has no captions to export: run `iclora build` or `iclora caption` first")
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    for comp in load_composites(out):
        rec = captions.get(comp.set_id)
        if rec is None or rec.status != "ok":
            continue
        atomic_write_json(dest / f"{file_stem(comp.set_id)}.json", {
            "set_id": comp.set_id, "tags": list(comp.panel_tags), "summary": rec.summary, "panels": rec.panels,
            "caption": rec.caption, "captioner": rec.captioner,
            "how_to_edit": "change summary/panels (the caption is re-rendered) or the caption text itself "
                           "(keep every tag once, in order); then run `iclora captions import`"})
        written += 1
    return written


def _edit_from_file(data: dict[str, Any], comp: CompositeRecord, current: Any) -> EditedCaption | None:
    """The person's caption from one exported file; None when nothing was changed."""
    caption = clean_text(str(data.get("caption", "")))
    summary = clean_text(str(data.get("summary", "")))
    panels = data.get("panels")
    if not isinstance(panels, list) or not all(isinstance(p, str) for p in panels):
        raise CaptionValidationError("'panels' must be a list of texts")
    panels = [clean_text(p) for p in panels]
    if len(panels) != len(comp.panel_boxes):
        raise CaptionValidationError(f"{len(panels)} panel texts for {len(comp.panel_boxes)} panels")
    if current is not None and caption and caption != current.caption:
        split = split_rendered(caption, comp)  # the caption text was edited: it wins as written
        if split is None:
            raise CaptionValidationError(f"the edited caption must keep every tag once, in order: "
                                         f"{' '.join(comp.panel_tags)}")
        return EditedCaption(comp.set_id, split.summary, split.panels, caption)
    if current is not None and summary == current.summary and panels == list(current.panels):
        return None
    if not summary or not all(panels):
        raise CaptionValidationError("summary and every panel text must be non-empty")
    check_tags(StructuredCaption(summary, tuple(panels)), tuple(comp.panel_tags), comp.prefix)
    return EditedCaption(comp.set_id, summary, tuple(panels), render_caption(summary, panels, comp))


def import_captions(out: Path, source: Path, settings: CaptionSettings | None = None) -> list[str]:
    """Check every edited file in ``source`` and keep the changed ones in ``OUT/captions-edited/``.
    All or nothing: one bad file is an error naming it, and nothing is imported. Returns the set ids."""
    settings = effective_settings(settings or CaptionSettings())
    files = sorted(Path(source).glob("*.json"))
    if not files:
        raise CaptionReviewError(f"{source} holds no .json caption files (made by `iclora captions export`)")
    composites = {c.set_id: c for c in load_composites(out)}
    captions = load_captions(out)
    count = token_counter(settings.tokenizer)
    edits: list[EditedCaption] = []
    problems: list[str] = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            set_id = data.get("set_id") if isinstance(data, dict) else None
            comp = composites.get(set_id) if isinstance(set_id, str) else None
            if comp is None:
                raise CaptionValidationError(f"set {set_id!r} is not a kept set of {out}")
            edit = _edit_from_file(data, comp, captions.get(comp.set_id))
            if edit is not None:
                tokens = count(edit.caption)
                if tokens > settings.max_tokens:
                    raise CaptionValidationError(f"caption is {tokens} text-encoder tokens, over the trainer's "
                                                 f"{settings.max_tokens}")
                edits.append(edit)
        except (ValueError, CaptionValidationError, OSError) as exc:
            problems.append(f"{path.name}: {exc}")
    if problems:
        raise CaptionReviewError(f"{len(problems)} edited caption file(s) have problems, nothing imported: "
                                 + "; ".join(problems[:5]))
    for edit in edits:
        atomic_write_json(edited_dir(out) / f"{file_stem(edit.set_id)}.json",
                          {"set_id": edit.set_id, "summary": edit.summary, "panels": list(edit.panels),
                           "caption": edit.caption, "composite_key": composites[edit.set_id].key})
    return [e.set_id for e in edits]


def load_edited(out: Path) -> dict[str, EditedCaption]:
    """The captions people edited for OUT (``iclora captions import``), by set id."""
    edits: dict[str, EditedCaption] = {}
    for path in sorted(edited_dir(out).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            edits[data["set_id"]] = EditedCaption(data["set_id"], data["summary"], tuple(data["panels"]),
                                                  data["caption"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise CaptionReviewError(f"edited caption {path} is unreadable ({exc}); fix or delete it") from None
    return edits


@dataclass
class DryRun:
    set_id: str
    backend: str
    system: str
    instruction: str
    panels: list[tuple[tuple[int, int], tuple[int, int]]]  # (size in the composite, size sent)
    response_format: dict[str, Any] | None
    grammar: str | None

    def text(self) -> str:
        lines = [f"set {self.set_id}: {len(self.panels)} panels, backend {self.backend}"]
        for i, (orig, sent) in enumerate(self.panels, 1):
            lines.append(f"  panel {i}: {orig[0]}x{orig[1]} in the composite, sent as {sent[0]}x{sent[1]}")
        lines += ["--- system ---", self.system, "--- user (after the images) ---", self.instruction]
        if self.response_format is not None:
            lines += ["--- response_format ---", json.dumps(self.response_format, indent=1)]
        if self.grammar is not None:
            lines += ["--- grammar (EBNF) ---", self.grammar.strip()]
        return "\n".join(lines)


def _resize_factor(settings: CaptionSettings) -> int:
    """Qwen-VL's image side multiple: patch size x merge size from the processor config (28 for Qwen2/2.5-VL)."""
    from iclora_data.caption.transformers_backend import resolve_model

    try:
        source, local = resolve_model(settings)
        config = json.loads((Path(source) / "preprocessor_config.json").read_text()) if local else {}
    except (IcloraError, OSError, ValueError):
        config = {}
    return int(config.get("patch_size", 14)) * int(config.get("merge_size", 2))


def dry_run(out: Path, settings: CaptionSettings, set_id: str | None = None) -> DryRun:
    """What ``set_id`` (default: the first kept set) would be sent with under ``settings``."""
    from iclora_data.caption.prompts import SYSTEM_PROMPT

    settings = effective_settings(settings)
    composites = load_composites(out)
    if not composites:
        raise CaptionReviewError(f"{out} has no composites: run `iclora build SOURCE --out {out}` first")
    comp = composites[0] if set_id is None else next((c for c in composites if c.set_id == set_id), None)
    if comp is None:
        raise CaptionReviewError(f"no composite of set {set_id!r} in {out}")
    use_hints = settings.sidecar in ("hint", "keep")
    instruction = load_template(settings.prompt_file).render(comp, use_hints=use_hints, language=settings.language)
    request = build_request(comp, composites_dir(out), settings, instruction)
    min_px, max_px = settings.pixels
    sizes = []
    for im in request.panels:
        if settings.backend == "openai":
            from iclora_data.caption.openai_backend import prepare_panel

            sent = prepare_panel(im, max_px).size
        else:
            from iclora_data.caption.transformers_backend import _process_vision_info

            _process_vision_info()  # imports qwen-vl-utils where torchvision is missing (see that module)
            from qwen_vl_utils import smart_resize  # the sizes Qwen-VL sees

            h, w = smart_resize(im.height, im.width, factor=_resize_factor(settings), min_pixels=min_px,
                                max_pixels=max_px)
            sent = (w, h)
        sizes.append((im.size, sent))
    fmt = None
    if settings.backend == "openai" and settings.constrained:
        fmt = {"type": "json_schema", "json_schema": {"name": "iclora_caption", "schema": request.schema,
                                                      "strict": True}}
    grammar = request.grammar if settings.backend == "transformers" and settings.constrained else None
    if settings.backend == "transformers" and settings.constrained and grammar is None:
        fmt = request.schema  # tiny-random: its bounded plain-text schema
    return DryRun(comp.set_id, settings.backend, SYSTEM_PROMPT, request.instruction, sizes, fmt, grammar)
