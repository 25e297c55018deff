"""Checks on every caption before it is kept: a failing check names its reason, and the set is retried
(with the reason given to the model) before it fails.

``structure`` checks (always): length in the text encoder's tokens, and leaked or invented tags.
``all`` adds the quality checks: identical or near-identical panels, refusals and meta-talk, repetition
loops, markdown, wrong language, ``<Name>`` spellings that change between panels, and captions too
short to train on. tiny-random runs only the structure checks: its words are noise.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher
from itertools import combinations

from iclora_data.caption.length import is_cjk
from iclora_data.caption.schema import CaptionValidationError, StructuredCaption
from iclora_data.caption.style import preset_names_characters, render_caption
from iclora_data.layout import Layout
from iclora_data.records import CompositeRecord

NEAR_IDENTICAL = 0.9  # SequenceMatcher ratio over words at or above which two panel texts are "the same"
MIN_WORDS = 25  # a whole caption shorter than this teaches the LoRA little (IC-LoRA's run 60-125)

_TAG = re.compile(r"\[[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*\]")
_REFUSAL = re.compile(
    r"\b(as an ai\b|as a language model|i(?:'m| am) (?:sorry|unable|not able)|i can(?:no|')t (?:see|view|help|"
    r"describe|provide|assist)|unable to (?:see|view|process|describe) (?:the|these|this|any)|"
    r"i do not have the ability|no images? (?:was|were) provided|cannot (?:see|view) (?:the )?images?|"
    r"here is (?:the|a|your) (?:json|caption|description)|the json (?:object|answer)|"
    r"(?:this|the) (?:caption|description) (?:above|below))", re.I)
_MARKDOWN = re.compile(r"(\*\*|__|```|`[^`]+`|^#{1,6}\s|^\s*[-*+]\s|^\s*\d+\.\s|\[[^\]]+\]\([^)]+\))", re.M)
_NAME = re.compile(r"<\s*([^<>]{1,40}?)\s*>")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)
_FUNCTION_WORDS_TEXT = """a an the of in on at to with and or but as by for from into over under
while where when is are was were be its his her their this that these those it he she they while than
through against beside behind above below between"""
_ENGLISH_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _similar(a: str, b: str) -> float:
    return SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()


def check_tags(caption: StructuredCaption, tags: Sequence[str], prefix: str) -> None:
    """The renderer adds the tags; a tag the model wrote leaks one (or invents one the layout lacks)."""
    for where, text in _fields(caption):
        for tag in _TAG.findall(text):
            kind = "leaked" if tag in tags or tag == prefix else "invented"
            raise CaptionValidationError(f"{where} contains the {kind} tag {tag}; tags are added when rendering")


def _fields(caption: StructuredCaption) -> list[tuple[str, str]]:
    return [("summary", caption.summary)] + [(f"panel {i + 1}", p) for i, p in enumerate(caption.panels)]


def check_repetition(text: str, where: str) -> None:
    """A generation loop: a word four times in a row, a phrase three times back to back, or the same
    four words three times anywhere."""
    words = _words(text)
    for size in range(1, 7):
        times = 4 if size == 1 else 3
        for i in range(len(words) - size * times + 1):
            phrase = words[i:i + size]
            if words[i:i + size * times] == phrase * times:
                raise CaptionValidationError(f"{where} repeats {' '.join(phrase)!r} in a loop")
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 3):
        gram = tuple(words[i:i + 4])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] == 3:
            raise CaptionValidationError(f"{where} repeats {' '.join(gram)!r} three times")


def _latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    return sum(unicodedata.name(c, "").startswith("LATIN") for c in letters) / len(letters)


def check_language(caption: StructuredCaption, language: str) -> None:
    text = " ".join([caption.summary, *caption.panels])
    letters = [c for c in text if c.isalpha()]
    if language in ("zh", "ja", "ko"):
        share = sum(is_cjk(c) for c in letters) / max(len(letters), 1)
        if share < 0.5:
            raise CaptionValidationError(f"caption is not in the requested language {language!r} "
                                         f"({share:.0%} of its letters are CJK)")
        return
    share = _latin_share(text)
    if share < 0.9:  # Latin-script languages; quoted foreign words (a shop sign) stay well under 10 %
        raise CaptionValidationError(f"caption is not in the requested language {language!r} "
                                     f"(only {share:.0%} of its letters are Latin)")
    words = _words(text)
    if language == "en" and len(words) >= 20:
        # English prose is a third function words; German, French or Spanish prose has almost none of these
        english = sum(w in _ENGLISH_FUNCTION_WORDS for w in words) / len(words)
        if english < 0.1:
            raise CaptionValidationError(f"caption does not read as English (only {english:.0%} of its words "
                                         "are English function words)")


def check_names(caption: StructuredCaption, names_characters: bool) -> None:
    """``<Name>`` tags are for movie shots; where they are used, one person keeps one spelling."""
    found: list[tuple[int, str]] = []
    for i, (_, text) in enumerate(_fields(caption)):
        found += [(i, m.strip()) for m in _NAME.findall(text)]
    if not found:
        return
    if not names_characters:
        raise CaptionValidationError(f"caption names {'<' + found[0][1] + '>'}, but this preset does not "
                                     "name people")
    for _, name in found:
        if not re.fullmatch(r"[A-Z][\w'-]*(?: [A-Z][\w'-]*)?", name):
            raise CaptionValidationError(f"<{name}> is not a name (one or two capitalised words)")
    names = sorted({n for _, n in found})
    for a, b in combinations(names, 2):
        close = a.lower() == b.lower() or SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.75
        if close:
            where = {n: sorted({i for i, m in found if m == n}) for n in (a, b)}
            raise CaptionValidationError(f"the name changes between panels: <{a}> (in {_places(where[a])}) "
                                         f"and <{b}> (in {_places(where[b])}) look like one person")


def _places(indices: list[int]) -> str:
    return ", ".join("summary" if i == 0 else f"panel {i}" for i in indices)


def check_caption(caption: StructuredCaption, layout: Layout | CompositeRecord, *, count_tokens: Callable[[str], int],
                  max_tokens: int, checks: str = "all", language: str | None = "en") -> str:
    """The rendered prompt of ``caption`` when it passes every check; CaptionValidationError otherwise."""
    tags, prefix = tuple(layout.panel_tags), layout.prefix
    check_tags(caption, tags, prefix)
    rendered = render_caption(caption.summary, caption.panels, layout)
    tokens = count_tokens(rendered)
    if tokens > max_tokens:
        raise CaptionValidationError(f"caption is {tokens} text-encoder tokens, over the trainer's "
                                     f"{max_tokens}; the end would be cut off in training")
    if checks != "all":
        return rendered
    for where, text in _fields(caption):
        if _REFUSAL.search(text):
            raise CaptionValidationError(f"{where} is a refusal or talk about the task, not a description: "
                                         f"{text[:80]!r}")
        if _MARKDOWN.search(text):
            raise CaptionValidationError(f"{where} contains markdown")
        check_repetition(text, where)
    for (i, a), (j, b) in combinations(enumerate(caption.panels), 2):
        ratio = _similar(a, b)
        if ratio >= NEAR_IDENTICAL:
            same = "identical" if a.strip().lower() == b.strip().lower() else "near-identical"
            raise CaptionValidationError(f"panels {i + 1} and {j + 1} have {same} descriptions "
                                         f"(similarity {ratio:.2f}); each panel needs its own")
    if language:
        check_language(caption, language)
    check_names(caption, preset_names_characters(layout.preset))
    words = len(rendered.split())
    if words < MIN_WORDS and not any(is_cjk(c) for c in rendered):
        raise CaptionValidationError(f"caption has {words} words; at least {MIN_WORDS} are needed to train on")
    return rendered
