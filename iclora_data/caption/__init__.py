"""Joint captions of composites from a local multimodal LLM or an OpenAI-compatible server.

Public API (light to import: models load only when captioning starts):

- ``CaptionSettings``: the ``caption:`` config section
- ``check_captioner(settings)``: cheap checks before any work; ``load_captioner(settings)``: load once
- ``caption_sets(composites, composites_dir, store, settings, ...)``: caption a build's composites
- ``caption_key(composite, settings)``: a caption's store key, for cheap re-run checks
- ``render_caption``, ``caption_schema``, ``caption_grammar``, ``parse_caption``, ``PROMPT_VERSION``
- ``CaptionRunError``: the backend failed (a failure of the run, never of a set)
"""

from iclora_data.caption.base import Captioner, CaptionerError, CaptionRequest, CaptionRunError, captioner_id
from iclora_data.caption.prompts import PROMPT_VERSION, PromptTemplateError, load_template
from iclora_data.caption.run import (
    EditedCaption,
    caption_key,
    caption_outcome,
    caption_sets,
    captioner_notes,
    check_captioner,
    effective_settings,
    load_captioner,
    sidecar_caption,
)
from iclora_data.caption.schema import (
    CaptionValidationError,
    caption_grammar,
    caption_schema,
    parse_caption,
    render_caption,
)
from iclora_data.caption.settings import CaptionSettings

__all__ = [
    "PROMPT_VERSION", "CaptionRequest", "CaptionRunError", "CaptionSettings", "CaptionValidationError", "Captioner",
    "CaptionerError", "EditedCaption", "PromptTemplateError", "caption_grammar", "caption_key", "caption_outcome",
    "caption_schema", "caption_sets", "captioner_id", "captioner_notes",
    "check_captioner", "effective_settings", "load_captioner", "load_template", "parse_caption",
    "render_caption", "sidecar_caption",
]
