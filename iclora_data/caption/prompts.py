"""What the captioner is asked: one instruction per set, filled from the composite's preset and hints.

The instruction is a ``string.Template`` (``$name`` placeholders, so JSON braces need no escaping).
A ``--prompt-file`` replaces the built-in one and may use the same placeholders:

- ``$n`` number of panels, ``$count`` the same in words ("three")
- ``$task`` what the set shows (the preset's task, or the set's own)
- ``$tags`` the panel tags in order, e.g. ``[SCENE-1], [SCENE-2], [SCENE-3]``
- ``$names_rule`` the IC-LoRA habit of naming recurring people ``<Name>`` (empty when the preset does not ask)
- ``$hints`` text the set brought (caption.txt, per-panel notes), when sidecars are used as hints
- ``$max_words`` the word limit of the whole caption
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from string import Template

from iclora_data.caption.schema import _COUNT_WORDS, MAX_WORDS
from iclora_data.errors import IcloraError
from iclora_data.presets import PRESETS
from iclora_data.records import CompositeRecord

# Bump when the built-in instruction, the schema or the renderer change what a caption says:
# the version is part of every caption key, so a bump re-captions.
PROMPT_VERSION = "1"

SYSTEM_PROMPT = "You write precise, visual captions for image-generation training data. You answer in JSON."

DEFAULT_TEMPLATE = """\
These $n images are the panels of one set, in reading order ($tags). The set shows $task.
Write a joint caption as a JSON object with two fields:
- "summary": one or two sentences on what the whole set shares: subject, style, setting, palette and mood.
- "panels": exactly $n strings, one per image in the order given; each describes that image on its own \
(content, composition, camera, lighting, text shown) and what sets it apart from the others.
$names_rule
Write plain descriptive English without tags, lists or markdown. Keep the whole caption under $max_words words.
$hints"""

NAMES_RULE = ("Give each person who recurs across panels a short made-up name in angle brackets, "
              "such as <Mia> or <Leo>, and use the same name wherever that person appears.")

PLACEHOLDERS = frozenset({"n", "count", "task", "tags", "names_rule", "hints", "max_words"})


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

    def render(self, composite: CompositeRecord, *, use_hints: bool) -> str:
        n = len(composite.panel_boxes)
        preset = PRESETS.get(composite.preset) if composite.preset else None
        task = composite.task or (preset.task if preset else "a set of related images")
        names = bool(preset and preset.names_characters)
        fields = {
            "n": str(n),
            "count": _COUNT_WORDS.get(n, str(n)),
            "task": task.rstrip("."),
            "tags": ", ".join(composite.panel_tags),
            "names_rule": NAMES_RULE if names else "",
            "hints": hints_text(composite) if use_hints else "",
            "max_words": str(MAX_WORDS),
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
