"""The structured caption: its JSON schema and grammar, its parsing, and recovering it from a rendered
prompt.

A captioner answers ``{"summary": str, "panels": [str, ... exactly n]}``; ``style.render_caption`` joins
it with the preset's prefix, opener and tags in IC-LoRA's style; ``quality.check_caption`` judges it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from iclora_data.caption.style import clean_text, render_caption, style_for
from iclora_data.layout import Layout
from iclora_data.records import CompositeRecord

__all__ = ["CaptionValidationError", "StructuredCaption", "caption_grammar", "caption_schema", "parse_caption",
           "render_caption", "split_rendered"]


class CaptionValidationError(ValueError):
    """A model answer that does not have the caption's structure; the message says what is wrong."""


@dataclass(frozen=True)
class StructuredCaption:
    summary: str
    panels: tuple[str, ...]


def caption_schema(n: int, max_chars: int | None = None, *, plain_ascii: bool = False) -> dict[str, Any]:
    """JSON schema of a caption of ``n`` panels (exactly n panel descriptions), for servers'
    ``response_format``.

    Texts carry no ``minLength``/``maxLength``: xgrammar (vLLM's and SGLang's default backend) compiles a
    length bound to a character class without JSON escapes (``[^"\\\r\n]+``), which would forbid the
    quoted words the font and slide presets need. Emptiness and length are checked after the answer
    (``parse_caption``); the local backend uses :func:`caption_grammar`, which bounds both exactly.

    ``plain_ascii`` (needs ``max_chars``) allows only printable ASCII starting with a letter and without
    quotes or backslashes, so an answer's length in tokens of a byte-level vocabulary is bounded: used for
    the tiny test model."""
    if n < 1:
        raise ValueError(f"a caption needs at least one panel, got {n}")
    text: dict[str, Any] = {"type": "string"}
    if plain_ascii:
        if max_chars is None:
            raise ValueError("plain_ascii needs max_chars")
        text = {"type": "string", "pattern": f"^[A-Za-z][ !#-\\[\\]-~]{{0,{max_chars - 1}}}$"}
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


# A JSON string that is not empty and does not start with a space: any Unicode character except the
# ones JSON forbids raw (quote, backslash, controls), and every JSON escape.
_GRAMMAR_RULES = r"""
first ::= [^"\\\x00-\x20] | escape
rest ::= [^"\\\x00-\x1f] | escape
escape ::= "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
"""


def caption_grammar(n: int, max_chars: int | None = None) -> str:
    """EBNF (xgrammar's dialect) of a caption of exactly ``n`` non-empty panel texts, key order fixed
    (the summary first), compact separators; texts may hold JSON escapes and any Unicode. ``max_chars``
    bounds each text (an escape counts as one character)."""
    if n < 1:
        raise ValueError(f"a caption needs at least one panel, got {n}")
    panels = ' ", " '.join(["text"] * n)
    root = f'root ::= "{{\\"summary\\": " text ", \\"panels\\": [" {panels} "]}}"'
    repeat = "*" if max_chars is None else f"{{0,{max(0, max_chars - 1)}}}"
    return f'{root}\ntext ::= "\\"" first rest{repeat} "\\""' + _GRAMMAR_RULES


def max_answer_tokens(n: int, max_chars: int) -> int:
    """Upper bound on the tokens of a ``plain_ascii`` answer: braces, keys and separators, plus
    each text's characters and its quotes and comma."""
    return 32 + (n + 1) * (max_chars + 4)


def _extract_json(text: str) -> str:
    """The JSON object in a model answer; unconstrained models like to wrap it in a code fence."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, flags=re.DOTALL)
    if fenced:
        return fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if start != -1 and end > start else text


def parse_caption(text: str, n: int, layout: Layout | CompositeRecord | None = None) -> StructuredCaption:
    """Parse one answer's structure. Raises CaptionValidationError with a person-readable reason.

    Checks: valid JSON object, ``summary`` a non-empty string, ``panels`` exactly ``n`` non-empty strings,
    and (with ``layout``) that it renders. Length and quality are ``quality.check_caption``'s."""
    if not text or not text.strip():
        raise CaptionValidationError("model returned an empty answer")
    try:
        # strict=False: a raw control character inside a string (some grammars allow it) is cleaned below
        data = json.loads(_extract_json(text), strict=False)
    except json.JSONDecodeError as exc:
        snippet = clean_text(text)[:60]
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
    caption = StructuredCaption(clean_text(summary), tuple(clean_text(p) for p in panels))
    if not caption.summary:
        raise CaptionValidationError("model returned an empty summary")
    empty = [i + 1 for i, p in enumerate(caption.panels) if not p]
    if empty:
        raise CaptionValidationError(f"model returned an empty description for panel {empty[0]}")
    if layout is not None:
        render_caption(caption.summary, caption.panels, layout)
    return caption


def split_rendered(text: str, layout: Layout | CompositeRecord) -> StructuredCaption | None:
    """Recover summary and panels from a caption written with the layout's tags, each once and in order
    (a sidecar caption, or an edited one). None when ``text`` does not carry every tag once, in order.

    The renderer's own words (prefix, opener, joiners, final stop) are taken off again, so that
    ``render_caption(*split_rendered(render_caption(s, p, L)), L)`` gives the same prompt back."""
    tags, prefix = tuple(layout.panel_tags), layout.prefix
    body = clean_text(text)
    if prefix and body.startswith(prefix):
        body = body[len(prefix):].lstrip()
    positions = []
    start = 0
    for tag in tags:
        at = body.find(tag, start)
        if at == -1 or body.count(tag) != 1:
            return None
        positions.append(at)
        start = at + len(tag)
    style = style_for(layout.preset, len(tags))
    summary = body[:positions[0]].strip().rstrip(";,").strip()
    if style.opener and summary.startswith(style.opener + " "):
        summary = summary[len(style.opener):].strip()
    elif style.opener:
        lead = re.match(r"In this [\w-]+-panel image, (.*)", summary)
        summary = lead.group(1) if lead else summary
    ends = positions[1:] + [len(body)]
    panels = tuple(body[p + len(t):e].strip().rstrip(";,.").strip()
                   for p, t, e in zip(positions, tags, ends, strict=True))
    if not summary or not all(panels):
        return None
    return StructuredCaption(summary, panels)
