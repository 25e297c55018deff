"""The structured caption: its JSON schema, its checks, and its rendering into a training prompt.

A captioner answers ``{"summary": str, "panels": [str, ... exactly n]}``; the renderer joins it
with the preset's tags (``[MOVIE-SHOTS] <summary> [SCENE-1] <p1> ...``), or, for layouts without a
prefix, ``This four-panel image shows <summary>; [TOP-LEFT] <p1> ...``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iclora_data.layout import Layout
from iclora_data.records import CompositeRecord

MAX_WORDS = 512  # IC-LoRA keeps its prompts under 512 words (T5 context)

_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}


class CaptionValidationError(ValueError):
    """A model answer that does not have the caption's structure; the message says what is wrong."""


@dataclass(frozen=True)
class StructuredCaption:
    summary: str
    panels: tuple[str, ...]


def caption_schema(n: int, max_chars: int | None = None, *, plain_ascii: bool = False) -> dict[str, Any]:
    """JSON schema of a caption of ``n`` panels (exactly n panel descriptions, none empty).

    ``max_chars`` caps each text. ``plain_ascii`` (needs ``max_chars``) allows only printable ASCII
    starting with a letter and without quotes or backslashes, so every character is one token of a
    byte-level vocabulary and an answer's length in tokens is bounded: used for the tiny test model."""
    if n < 1:
        raise ValueError(f"a caption needs at least one panel, got {n}")
    text: dict[str, Any] = {"type": "string", "minLength": 1}
    if plain_ascii:
        if max_chars is None:
            raise ValueError("plain_ascii needs max_chars")
        # xgrammar ignores min/maxLength beside a pattern, so the pattern carries the length
        text = {"type": "string", "pattern": f"^[A-Za-z][ !#-\\[\\]-~]{{0,{max_chars - 1}}}$"}
    elif max_chars is not None:
        text["maxLength"] = max_chars
    return {
        "type": "object",
        "properties": {
            "summary": dict(text, description="what the whole set shows and what its panels share"),
            "panels": {"type": "array", "items": dict(text), "minItems": n, "maxItems": n,
                       "description": f"one description per panel, in panel order ({n} in all)"},
        },
        "required": ["summary", "panels"],
        "additionalProperties": False,
    }


def _tags_and_prefix(layout: Layout | CompositeRecord) -> tuple[tuple[str, ...], str]:
    return tuple(layout.panel_tags), layout.prefix


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """One line of text: control characters and runs of whitespace become single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def render_caption(summary: str, panels: Sequence[str], layout: Layout | CompositeRecord) -> str:
    """The training prompt of a structured caption, with the layout's (or composite's) tags."""
    tags, prefix = _tags_and_prefix(layout)
    if len(panels) != len(tags):
        raise CaptionValidationError(f"{len(panels)} panel descriptions for {len(tags)} panels")
    body = " ".join(f"{tag} {_clean(p)}" for tag, p in zip(tags, panels, strict=True))
    if prefix:
        return f"{prefix} {_clean(summary)} {body}"
    n = len(tags)
    count = _COUNT_WORDS.get(n, str(n))
    return f"This {count}-panel image shows {_continue_sentence(_clean(summary)).rstrip('.;')}; {body}"


# leading words that read wrong capitalised mid-sentence ("shows A cat"); names are left alone
_LOWER_FIRST = {"a", "an", "the", "this", "these", "two", "three", "four", "five", "six", "several", "each"}


def _continue_sentence(summary: str) -> str:
    first, _, rest = summary.partition(" ")
    if first.lower() in _LOWER_FIRST:
        return f"{first.lower()} {rest}".strip()
    return summary


def max_answer_tokens(n: int, max_chars: int) -> int:
    """Upper bound on the tokens of a ``plain_ascii`` answer: braces, keys and separators, plus
    each text's characters and its quotes and comma."""
    return 32 + (n + 1) * (max_chars + 4)


def word_count(text: str) -> int:
    return len(text.split())


def _extract_json(text: str) -> str:
    """The JSON object in a model answer; unconstrained models like to wrap it in a code fence."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, flags=re.DOTALL)
    if fenced:
        return fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if start != -1 and end > start else text


def parse_caption(text: str, n: int, layout: Layout | CompositeRecord | None = None) -> StructuredCaption:
    """Parse and check one answer. Raises CaptionValidationError with a person-readable reason.

    Checks: valid JSON object, ``summary`` a non-empty string, ``panels`` exactly ``n`` non-empty strings,
    and (with ``layout``) the rendered prompt within MAX_WORDS words."""
    if not text or not text.strip():
        raise CaptionValidationError("model returned an empty answer")
    try:
        # strict=False: a raw control character inside a string (some grammars allow it) is cleaned below
        data = json.loads(_extract_json(text), strict=False)
    except json.JSONDecodeError as exc:
        snippet = _clean(text)[:60]
        raise CaptionValidationError(f"model returned malformed JSON ({exc.msg} at char {exc.pos}): {snippet!r}") \
            from None
    if not isinstance(data, dict):
        raise CaptionValidationError(f"model returned a JSON {type(data).__name__}, expected an object")
    summary, panels = data.get("summary"), data.get("panels")
    if not isinstance(summary, str):
        raise CaptionValidationError("model answer has no 'summary' text")
    if not isinstance(panels, list) or not all(isinstance(p, str) for p in panels):
        raise CaptionValidationError("model answer has no 'panels' list of texts")
    if len(panels) != n:
        raise CaptionValidationError(f"model returned {len(panels)} panel descriptions, expected {n}")
    caption = StructuredCaption(_clean(summary), tuple(_clean(p) for p in panels))
    if not caption.summary:
        raise CaptionValidationError("model returned an empty summary")
    empty = [i + 1 for i, p in enumerate(caption.panels) if not p]
    if empty:
        raise CaptionValidationError(f"model returned an empty description for panel {empty[0]}")
    if layout is not None:
        words = word_count(render_caption(caption.summary, caption.panels, layout))
        if words > MAX_WORDS:
            raise CaptionValidationError(f"caption has {words} words, over the {MAX_WORDS}-word limit")
    return caption


def split_rendered(text: str, layout: Layout | CompositeRecord) -> StructuredCaption | None:
    """Recover summary and panels from a caption already written with the layout's tags, in order.

    For sidecar captions kept as they are; None when ``text`` does not carry every tag once, in order."""
    tags, prefix = _tags_and_prefix(layout)
    body = _clean(text)
    if prefix and body.startswith(prefix):
        body = body[len(prefix):]
    positions = []
    start = 0
    for tag in tags:
        at = body.find(tag, start)
        if at == -1 or body.count(tag) != 1:
            return None
        positions.append(at)
        start = at + len(tag)
    summary = body[:positions[0]].strip().rstrip(";").strip()
    prefix_re = re.match(r"This [\w-]+-panel image shows (.*)", summary)
    if prefix_re and not prefix:
        summary = prefix_re.group(1).strip()
    ends = positions[1:] + [len(body)]
    panels = tuple(body[p + len(t):e].strip() for p, t, e in zip(positions, tags, ends, strict=True))
    if not summary or not all(panels):
        return None
    return StructuredCaption(summary, panels)
