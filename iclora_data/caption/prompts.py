"""What the captioner is asked: one instruction per set, in IC-LoRA's caption style for its preset.

The instruction is a ``string.Template`` (``$name`` placeholders, so JSON braces need no escaping).
A ``--prompt-file`` replaces the built-in one and may use the same placeholders:

- ``$n`` number of panels, ``$count`` the same in words ("three")
- ``$task`` what the set shows (the preset's task, or the set's own)
- ``$tags`` the panel tags in order, e.g. ``[SCENE-1], [SCENE-2], [SCENE-3]``
- ``$opener`` the words the summary is rendered after (``This four-panel image showcases``)
- ``$summary_form``/``$summary_words``, ``$panel_form``/``$panel_words``: the preset's shape and lengths
- ``$min_words``/``$max_words`` the whole caption's target length (IC-LoRA's: 80-125 words)
- ``$names_rule`` IC-LoRA's ``<Name>`` rule for movie shots, or the rule not to name people
- ``$example`` an answer for another set of the same preset, written for this project
- ``$language`` the language to write in (``caption.language``: "English" for ``en``)
- ``$hints`` text the set brought (caption.txt, per-panel notes), when sidecars are used as hints
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template

from iclora_data.caption.style import CAPTION_WORDS, COUNT_WORDS, SUMMARY_WORDS, style_for, summary_form
from iclora_data.errors import IcloraError
from iclora_data.presets import PRESETS
from iclora_data.records import CompositeRecord

# Bump when the built-in instruction, the schema or the renderer change what a caption says:
# the version is part of every caption key, so a bump re-captions.
PROMPT_VERSION = "2"

SYSTEM_PROMPT = ("You write precise, visual captions for image-generation training data, in the style of "
                 "In-Context LoRA prompts. You answer with one JSON object and nothing else.")

DEFAULT_TEMPLATE = """\
These $n images are the panels of one $count-panel image, in reading order ($tags). It shows $task.
Write its caption as a JSON object with two fields:
- "summary": about $summary_words words, $summary_form.
- "panels": exactly $n strings, one per image in the order given, about $panel_words words each. Each is \
$panel_form. Describe what that panel shows (subject, action, composition, lighting, colours, any text) \
and what sets it apart from the others.
$names_rule
The whole caption should read as one flowing description of $min_words-$max_words words. Put any text \
the images show in double quotes. Write plain $language prose: no tags such as $first_tag, no lists, \
no markdown, and no remarks about the task.
$example
$hints"""

NAMES_RULE = ("Give each person who recurs across the shots a short made-up name in angle brackets, "
              "such as <Mia> or <Leo>, and write exactly the same name in every panel where that person appears.")
NO_NAMES_RULE = "Do not invent names for people; describe them (\"a young woman\", \"she\")."

PLACEHOLDERS = frozenset({"n", "count", "task", "tags", "first_tag", "opener", "summary_form", "summary_words",
                          "panel_form", "panel_words", "min_words", "max_words", "names_rule", "example",
                          "hints", "language"})
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch", "zh": "Chinese", "ja": "Japanese", "ko": "Korean"}


class PromptTemplateError(IcloraError):
    pass


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    source: str  # "built-in" or the prompt file's path

    @property
    def digest(self) -> str:
        """What identifies this template in a caption key."""
        return hashlib.sha256(f"{PROMPT_VERSION}\0{SYSTEM_PROMPT}\0{self.text}".encode()).hexdigest()

    def render(self, composite: CompositeRecord, *, use_hints: bool, language: str | None = "en") -> str:
        n = len(composite.panel_boxes)
        preset = PRESETS.get(composite.preset) if composite.preset else None
        task = composite.task or (preset.task if preset else "a set of related images")
        style = style_for(composite.preset, n)
        example = ""
        if style.example is not None and len(style.example.panels) == n:
            answer = json.dumps({"summary": style.example.summary, "panels": list(style.example.panels)},
                                ensure_ascii=False)
            example = f"An answer for another set of this kind, for its shape and length only:\n{answer}"
        fields = {
            "n": str(n),
            "count": COUNT_WORDS.get(n, str(n)),
            "task": task.rstrip("."),
            "tags": ", ".join(composite.panel_tags),
            "first_tag": composite.panel_tags[0] if composite.panel_tags else "[IMAGE1]",
            "opener": style.opener,
            "summary_form": summary_form(style),
            "summary_words": str(SUMMARY_WORDS),
            "panel_form": style.panel_form,
            "panel_words": str(style.panel_words(n)),
            "min_words": str(CAPTION_WORDS[0]),
            "max_words": str(CAPTION_WORDS[1]),
            "names_rule": NAMES_RULE if preset and preset.names_characters else NO_NAMES_RULE,
            "example": example,
            "hints": hints_text(composite) if use_hints else "",
            "language": LANGUAGES.get(language or "en", language or "English"),
        }
        text = Template(self.text).safe_substitute(fields)
        return "\n".join(line for line in text.splitlines() if line.strip()).strip()


def hints_text(composite: CompositeRecord) -> str:
    """The set's own words about itself, offered to the model as notes (not to be copied blindly)."""
    parts = []
    if composite.source_caption and composite.source_caption.strip():
        parts.append(f"The set's author describes it as: {' '.join(composite.source_caption.split())}")
    hints = composite.panel_hints or []
    notes = [f"panel {i + 1}: {' '.join(h.split())}" for i, h in enumerate(hints) if h and h.strip()]
    if notes:
        parts.append("Author's notes per panel: " + "; ".join(notes) + ".")
    if parts:
        parts.append("Use these notes where the images agree with them.")
    return "\n".join(parts)


def load_template(prompt_file: Path | None) -> PromptTemplate:
    """The built-in template, or the user's file checked for unknown placeholders (one clear error)."""
    if prompt_file is None:
        return PromptTemplate(DEFAULT_TEMPLATE, "built-in")
    path = Path(prompt_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptTemplateError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptTemplateError(f"cannot read prompt file {path}: {exc}") from None
    if not text.strip():
        raise PromptTemplateError(f"prompt file {path} is empty")
    template = Template(text)
    if not template.is_valid():
        raise PromptTemplateError(f"prompt file {path} has a stray '$'; write '$$' for a literal dollar sign")
    unknown = sorted(set(template.get_identifiers()) - PLACEHOLDERS)
    if unknown:
        raise PromptTemplateError(f"prompt file {path} uses unknown placeholder(s) "
                                  f"{', '.join('$' + u for u in unknown)}; known: "
                                  f"{', '.join('$' + p for p in sorted(PLACEHOLDERS))}")
    return PromptTemplate(text, str(path))
