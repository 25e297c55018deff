"""IC-LoRA's caption style per preset, and the renderer that turns a structured caption into a prompt.

IC-LoRA's released prompts (ali-vilab/In-Context-LoRA: README model zoo, ``data/movie-shots``) are
one flowing text of 80-125 words: the task's trigger prefix where it has one (``[MOVIE-SHOTS]``,
``[SANDSTORM-PSA]``, ``[REAL-SPARKLERS-OVERLAYS]``), a short summary spliced after an opener such as
``This four-panel image showcases``, then each panel's clause after its tag, joined by ``;`` or
``,``. Only movie shots name recurring people ``<Name>``.

The model writes the summary and the panel clauses; the renderer owns the grammar around them. A
summary is spliced after the opener only when it reads as a noun phrase; one that is already a
sentence ("This image shows...", "A cosy room is shown...") is kept whole, so the renderer never
produces "showcases a room is shown".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from iclora_data.layout import Layout
from iclora_data.presets import PRESETS
from iclora_data.records import CompositeRecord

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}

# IC-LoRA's released prompts run 80-125 words; the summary is about 12 of them
CAPTION_WORDS = (80, 125)
SUMMARY_WORDS = 12


@dataclass(frozen=True)
class Example:
    """A model answer written for this project (not copied), shown to the model as the target shape."""

    summary: str
    panels: tuple[str, ...]


@dataclass(frozen=True)
class CaptionStyle:
    opener: str  # words the summary is spliced after, e.g. "This four-panel image showcases"; "" for none
    joiner: str  # between panel clauses: "; " or ", "
    summary_form: str  # what the summary must be, in words the model is told
    panel_form: str  # what each panel clause must be
    example: Example | None = None

    def panel_words(self, n: int) -> int:
        """Words per panel clause so that the whole caption lands near IC-LoRA's lengths."""
        middle = (CAPTION_WORDS[0] + CAPTION_WORDS[1]) // 2
        return max(15, min(40, round((middle - SUMMARY_WORDS) / max(n, 1))))


_NOUN_SUMMARY = "a noun phrase that completes \"{opener} ...\", e.g. \"{example}\""
_CLAUSE = ("a clause that reads on after its tag: start with a verb such as features, shows, displays, "
           "presents, or with the panel's subject")

_STYLES: dict[str, CaptionStyle] = {
    "film-storyboard": CaptionStyle(
        opener="", joiner=", ",
        summary_form="a short scene-setting lead-in such as \"In a rain-soaked harbour town at dusk\"",
        panel_form=("a clause that continues the one sentence, moving the story on with a transition such as "
                    "\"moving to\", \"as\", \"ending on\"; name recurring people <Name> in every panel"),
        example=Example(
            "On a foggy night in a quiet harbour town",
            ("<Mara>, a young fisherwoman in a yellow raincoat, pulls a rusted tin box from her tangled nets "
             "under the cold glow of a dock lamp, waves breaking softly behind her",
             "moving to a cramped, lantern-lit cabin where <Mara> pries the box open on a wooden table, "
             "revealing a bundle of faded letters while rain streaks the small round window",
             "ending on the empty pier at dawn as <Mara> hands the letters to <Elias>, an elderly lighthouse "
             "keeper whose trembling hands suggest the letters were once his"))),
    "couple-profile": CaptionStyle(
        opener="This two-part image portrays", joiner="; ", summary_form="", panel_form=_CLAUSE,
        example=Example(
            "a pair of paper-cut fox characters dressed for a winter festival",
            ("a russet fox in a knitted red scarf and mittens holds a steaming cup of cocoa and glances to the "
             "right, framed by falling snowflakes on a deep blue background",
             "a silver fox in a matching green scarf and bobble hat raises a paper lantern toward her partner, "
             "smiling warmly, the same snowy blue backdrop tying the two portraits together"))),
    "font-design": CaptionStyle(
        opener="The four-panel image showcases", joiner="; ", summary_form="",
        panel_form=_CLAUSE + "; quote the words each design shows in double quotes",
        example=Example(
            "a hand-drawn brush script with a retro summer beach mood",
            ('displays "Sunny Days" in thick coral strokes over a pale sand background with tiny palm doodles',
             'shows "Surf Club" in teal with a white outline, set on a faded wave pattern',
             'has "Chill" in sunset orange with a soft drop shadow beside a small ice cream cone',
             'presents "Beach Party" in layered yellow and pink letters on a striped towel texture, made for '
             "playful summer posters"))),
    "home-decoration": CaptionStyle(
        opener="This four-panel image showcases", joiner="; ", summary_form="", panel_form=_CLAUSE,
        example=Example(
            "a Scandinavian bedroom in pale oak, linen and soft grey tones",
            ("features a low platform bed dressed in white linen with a chunky knit throw and two round paper "
             "pendant lamps above it",
             "shows a reading corner with a curved oak armchair, a sheepskin rug and a tall fiddle-leaf fig by "
             "the window",
             "displays a slim oak dresser topped with ceramic vases, dried pampas grass and a small framed print",
             "captures the window side with sheer curtains, a built-in bench with grey cushions and morning "
             "light across the wooden floor"))),
    "portrait-photography": CaptionStyle(
        opener="This [FOUR-PANEL] image illustrates", joiner=", ", summary_form="",
        panel_form="a clause about the same person, e.g. \"she stands ...\", \"he turns ...\"",
        example=Example(
            "a ceramicist's afternoon in a sunlit pottery studio",
            ("she centres a lump of wet clay on the wheel, sleeves rolled up, her forearms streaked with grey "
             "slip",
             "she lifts a finished bowl toward the window light, inspecting its thin rim with a calm, focused "
             "expression",
             "she sits on a stool among shelves of drying pots, laughing as she wipes her hands on a linen apron",
             "she brushes a pale blue glaze onto a vase at a cluttered workbench, soft side light catching the "
             "dust in the air"))),
    "portrait-illustration": CaptionStyle(
        opener="This two-panel image presents", joiner="; ", summary_form="",
        panel_form="a clause starting with \"the photograph shows\" or \"the illustration ...\"",
        example=Example(
            "a street musician turned from a photograph into a bold comic-book illustration",
            ("the photograph shows a bearded man playing an accordion on a cobblestone corner, wearing a flat "
             "cap, a corduroy jacket and a striped scarf",
             "the illustration keeps his cap, scarf and accordion but renders them in thick ink lines and flat "
             "saturated colours, with musical notes swirling through a simplified street"))),
    "ppt-templates": CaptionStyle(
        opener="This four-panel image showcases", joiner="; ", summary_form="",
        panel_form=_CLAUSE + "; quote the titles and headings a slide shows in double quotes",
        example=Example(
            "a clean botanical presentation template for a plant shop's yearly review",
            ('introduces "Growing Together 2025" in dark green serif type beside a watercolour fern',
             'lays out the agenda with sections like "Highlights", "Sales" and "Next Steps" on a cream '
             "background",
             "charts monthly sales as leafy green bars with short labelled notes",
             'closes with "Thank You" and contact details framed by hanging ivy illustrations'))),
    "sandstorm-vfx": CaptionStyle(
        opener="This two-part image showcases", joiner=", ", summary_form="",
        panel_form="a clause starting \"the upper panel ...\" (before) or \"the lower panel ...\" (the effect)",
        example=Example(
            "the transformation of a desert hiker through a sandstorm visual effect",
            ("the upper panel shows a hiker in a wide-brimmed hat and tan jacket walking along a rocky ridge "
             "under a clear blue sky, a map held out in front of her",
             "the lower panel wraps the same scene in a roaring sandstorm, ochre dust swirling around her bent "
             "figure and hiding the ridge beneath a heavy orange sky"))),
    "sparklers-vfx": CaptionStyle(
        opener="The two-part image illustrates", joiner=", ", summary_form="",
        panel_form="a clause starting \"the first panel ...\" (before) or \"the second panel ...\" (the effect)",
        example=Example(
            "a rooftop birthday party transformed by sparkler overlays",
            ("the first panel shows three friends laughing around a small cake on a city rooftop at twilight, "
             "string lights glowing softly behind them",
             "the second panel adds bright handheld sparklers, golden trails of light looping above the cake "
             "and scattering warm sparks across their faces"))),
    "visual-identity": CaptionStyle(
        opener="The two-panel image showcases", joiner="; ", summary_form="",
        panel_form="a clause starting \"the left panel ...\" (the design) or \"the right panel ...\" (its use)",
        example=Example(
            'the cheerful identity of a neighbourhood bakery called "Crumb & Co"',
            ("the left panel shows the logo, a smiling croissant in brown line art above the brand name in a "
             "rounded, friendly typeface on a butter-yellow background",
             "the right panel applies it to a paper takeaway bag and a coffee cup on a wooden counter, the "
             "croissant mark printed in brown, giving a warm, homemade feel"))),
}

_DEFAULT_EXAMPLES = {
    2: Example("a handmade ceramic mug photographed in two settings",
               ("shows the speckled cream mug on a linen cloth beside a sprig of rosemary, soft daylight from the "
                "left casting a gentle shadow",
                "presents the same mug held in two hands over a wooden desk, steam rising from black coffee "
                "against a blurred bookshelf")),
    3: Example("one mountain lake seen at three times of day",
               ("features the lake at sunrise under pink mist, a lone rowing boat tied to a weathered jetty",
                "shows the same shore at noon, the water a clear turquoise and hikers resting on the pale rocks",
                "captures the lake at night under a sky full of stars, the jetty lit by a single lantern")),
    4: Example("a red vintage bicycle photographed around an old town",
               ("features the bicycle leaning against a blue door with a basket of fresh bread",
                "shows a close-up of its chrome bell and worn leather grips in warm afternoon light",
                "displays the bicycle parked beside a fountain in a sunny cobbled square",
                "captures it from behind on a narrow lane lined with potted geraniums")),
}


def style_for(preset: str | None, n: int) -> CaptionStyle:
    """The caption style of a preset; without one, IC-LoRA's generic "This N-panel image showcases"."""
    if preset in _STYLES:
        return _STYLES[preset]  # type: ignore[index]
    return CaptionStyle(opener=f"This {COUNT_WORDS.get(n, str(n))}-panel image showcases", joiner="; ",
                        summary_form="", panel_form=_CLAUSE, example=_DEFAULT_EXAMPLES.get(n))


def summary_form(style: CaptionStyle) -> str:
    if style.summary_form:
        return style.summary_form
    example = style.example.summary if style.example else "a rustic living room with warm wood tones"
    return _NOUN_SUMMARY.format(opener=style.opener, example=example)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """One line of text: control characters and runs of whitespace become single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


# first words that read wrong capitalised mid-sentence ("showcases A cat", "[LEFT] The photograph")
_WORDS_LOWERED_MID_SENTENCE = """a an the this that these those its his her their our my your one two three four five
six several each both some another every here then now while as where when after before finally next moving
ending continuing transitioning culminating features shows displays presents captures depicts has introduces
includes lays charts closes reveals offers adds applies keeps wraps turns she he they it we in on at with
beneath under inside outside"""
_LOWER_FIRST = frozenset(_WORDS_LOWERED_MID_SENTENCE.split())

# finite verbs that make a summary a sentence of its own (then it is not spliced after an opener)
_FINITE_VERB = re.compile(r"\b(is|are|was|were|shows|show|showcases|features|displays|depicts|presents|"
                          r"illustrates|captures|portrays|unfolds|reveals|has|have|offers|highlights)\b", re.I)
_SELF_DESCRIBING = re.compile(r"^(this|the|these|here)\b(\W+\w+){0,4}?\W+(image|images|panels?|set|photos?|"
                              r"pictures?|series|sequence|shots|slides|collage|grid)\b", re.I)


def _lower_first(text: str) -> str:
    first, sep, rest = text.partition(" ")
    if first.lower() in _LOWER_FIRST and first[:1].isupper() and (len(first) == 1 or first[1:].islower()):
        return f"{first.lower()}{sep}{rest}"
    return text


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _trim(text: str) -> str:
    return clean_text(text).rstrip(" .;,:")


def render_summary(summary: str, style: CaptionStyle, n: int) -> str:
    """The caption's lead: the summary spliced after the opener when it is a noun phrase, kept whole when
    it is a sentence of its own."""
    text = _trim(summary)
    if not style.opener:
        return _upper_first(text)
    if _SELF_DESCRIBING.match(text):
        return _upper_first(text)
    if _FINITE_VERB.search(text):
        count = COUNT_WORDS.get(n, str(n))
        return f"In this {count}-panel image, {_lower_first(text)}"
    return f"{style.opener} {_lower_first(text)}"


def render_caption(summary: str, panels: Sequence[str], layout: Layout | CompositeRecord) -> str:
    """The training prompt of a structured caption, in the style of the layout's (or composite's) preset."""
    from iclora_data.caption.schema import CaptionValidationError

    tags, prefix = tuple(layout.panel_tags), layout.prefix
    if len(panels) != len(tags):
        raise CaptionValidationError(f"{len(panels)} panel descriptions for {len(tags)} panels")
    style = style_for(layout.preset, len(tags))
    lead = render_summary(summary, style, len(tags))
    clauses = [f"{tag} {_lower_first(_trim(p))}" for tag, p in zip(tags, panels, strict=True)]
    # a lead that is a sentence of its own ends with ";" (as IC-LoRA's do); a lead-in phrase runs on with ","
    after_lead = "; " if (style.opener or _FINITE_VERB.search(lead)) else ", "
    body = style.joiner.join(clauses)
    text = f"{lead}{after_lead}{body}."
    return f"{prefix} {text}" if prefix else text


def preset_names_characters(preset: str | None) -> bool:
    p = PRESETS.get(preset) if preset else None
    return bool(p and p.names_characters)
