"""The IC-LoRA task presets: composite size, grid and the caption tags of each task.

Sizes and grids follow the released IC-LoRA task data (README, "Presets"). A preset's
``prefix`` opens the training prompt and ``panel_tags`` name the panels in reading order
(row-major), as IC-LoRA's released prompts have them. ``names_characters`` asks the captioner to
name recurring people ``<Name>``: only movie shots do, as in IC-LoRA's data.
"""

from __future__ import annotations

from dataclasses import dataclass

CORNER_TAGS = ("[TOP-LEFT]", "[TOP-RIGHT]", "[BOTTOM-LEFT]", "[BOTTOM-RIGHT]")


@dataclass(frozen=True)
class Preset:
    name: str
    width: int
    height: int
    rows: int
    cols: int
    panel_tags: tuple[str, ...]
    task: str  # what the set shows, in words the captioner is told
    prefix: str = ""  # tag that opens the prompt, e.g. "[MOVIE-SHOTS]"
    names_characters: bool = False

    @property
    def panels(self) -> int:
        return self.rows * self.cols

    @property
    def grid(self) -> str:
        return f"{self.rows}x{self.cols}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("film-storyboard", 1024, 1536, 3, 1, ("[SCENE-1]", "[SCENE-2]", "[SCENE-3]"),
               "three consecutive shots of one film scene", prefix="[MOVIE-SHOTS]", names_characters=True),
        Preset("couple-profile", 2048, 1024, 1, 2, ("[LEFT]", "[RIGHT]"),
               "a pair of matching profile portraits of a couple"),
        Preset("font-design", 1792, 1216, 2, 2, CORNER_TAGS,
               "one typeface or lettering style shown in four designs"),
        Preset("home-decoration", 1344, 1728, 2, 2, CORNER_TAGS,
               "four views of one interior design style"),
        Preset("portrait-photography", 1344, 1728, 2, 2, CORNER_TAGS,
               "four portrait photographs of the same person in one shoot"),
        Preset("portrait-illustration", 1152, 1088, 1, 2, ("[LEFT]", "[RIGHT]"),
               "a photograph and an illustrated portrait of the same person"),
        Preset("ppt-templates", 1984, 1152, 2, 2, CORNER_TAGS,
               "four slides of one presentation template"),
        Preset("sandstorm-vfx", 1408, 1600, 2, 1, ("[TOP]", "[BOTTOM]"),
               "a subject before and after a sandstorm visual effect", prefix="[SANDSTORM-PSA]"),
        Preset("sparklers-vfx", 960, 1088, 2, 1, ("[TOP]", "[BOTTOM]"),
               "a subject before and after a sparklers visual effect",
               prefix="[REAL-SPARKLERS-OVERLAYS]"),
        Preset("visual-identity", 1472, 1024, 1, 2, ("[LEFT]", "[RIGHT]"),
               "a brand's visual identity: a logo or design and its application"),
    )
}


def default_panel_tags(n: int) -> tuple[str, ...]:
    """Tags of a layout without a preset: ``[IMAGE1]`` … ``[IMAGEn]``."""
    return tuple(f"[IMAGE{i}]" for i in range(1, n + 1))


class UnknownPresetError(ValueError):
    pass


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {known}") from None
