"""Quality checks on captions, and caption length in text-encoder tokens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iclora_data.caption import CaptionValidationError
from iclora_data.caption.length import estimate_t5_tokens, token_counter
from iclora_data.caption.quality import check_caption
from iclora_data.caption.schema import StructuredCaption
from iclora_data.caption.style import style_for
from iclora_data.layout import Layout, preset_layout
from iclora_data.presets import PRESETS

FILM = preset_layout(PRESETS["film-storyboard"])
HOME = preset_layout(PRESETS["home-decoration"])


def example(name: str) -> StructuredCaption:
    ex = style_for(name, PRESETS[name].panels).example
    assert ex is not None
    return StructuredCaption(ex.summary, ex.panels)


def check(caption: StructuredCaption, layout: Layout, **kw: object) -> str:
    options: dict[str, object] = {"count_tokens": estimate_t5_tokens, "max_tokens": 512} | kw
    return check_caption(caption, layout, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_hand_written_examples_pass_every_check(name: str) -> None:
    check(example(name), preset_layout(PRESETS[name]))


def _with_panel(caption: StructuredCaption, i: int, text: str) -> StructuredCaption:
    panels = list(caption.panels)
    panels[i] = text
    return StructuredCaption(caption.summary, tuple(panels))


@pytest.mark.parametrize(("panel", "reason"), [
    ("As an AI language model, I cannot see the images, but here is a description.", "refusal"),
    ("Here is the JSON object you asked for with the caption of the shot", "refusal or talk about the task"),
    ("features a **low bed** with linen and lamps above it in morning light", "markdown"),
    ("- a low bed\n- two lamps and a knitted throw in soft grey", "markdown"),
    ("features a bed bed bed bed with white linen and lamps", "repeats 'bed' in a loop"),
    ("shows a chair and a lamp and a chair and a lamp and a chair and a lamp", "a chair and a. three times"),
    ("[BOTTOM-LEFT] displays a slim oak dresser topped with ceramic vases", "leaked tag [BOTTOM-LEFT]"),
    ("[IMAGE5] displays a slim oak dresser topped with ceramic vases", "invented tag [IMAGE5]"),
    ("zeigt eine schmale Kommode aus Eiche mit Vasen, getrockneten Gräsern und einem kleinen Bild", None),
])
def test_each_check_names_its_reason(panel: str, reason: str | None) -> None:
    caption = _with_panel(example("home-decoration"), 2, panel)
    if reason is None:  # one German panel among English ones is a quoted aside at most: fine
        check(caption, HOME)
        return
    with pytest.raises(CaptionValidationError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        check(caption, HOME)


def test_identical_and_near_identical_panels() -> None:
    base = example("home-decoration")
    same = _with_panel(base, 3, base.panels[0])
    with pytest.raises(CaptionValidationError, match="panels 1 and 4 have identical descriptions"):
        check(same, HOME)
    near = _with_panel(base, 1, base.panels[0].replace("white linen", "white cotton"))
    with pytest.raises(CaptionValidationError, match="panels 1 and 2 have near-identical"):
        check(near, HOME)
    # panels that share a subject but differ in what they show are fine
    check(_with_panel(base, 1, "shows the same low platform bed from the doorway, a wool rug now at its foot"), HOME)


def test_wrong_language() -> None:
    german = StructuredCaption(
        "ein skandinavisches Schlafzimmer in heller Eiche und Leinen",
        ("zeigt ein niedriges Bett mit weißer Bettwäsche und zwei runden Lampen darüber im Morgenlicht",
         "zeigt eine Leseecke mit einem geschwungenen Sessel, einem Schaffell und einer großen Pflanze",
         "zeigt eine schmale Kommode aus Eiche mit Vasen, getrockneten Gräsern und einem kleinen Bild",
         "zeigt die Fensterseite mit zarten Vorhängen, einer Bank mit Kissen und Licht auf dem Boden"))
    with pytest.raises(CaptionValidationError, match="does not read as English"):
        check(german, HOME)
    check(german, HOME, language="de")
    chinese = StructuredCaption("北欧风格的卧室，浅色橡木和亚麻", ("低矮的床铺着白色床单，上方有两盏纸灯",
                                                      "阅读角落有弯曲的橡木扶手椅和羊皮地毯",
                                                      "细长的橡木梳妆台上放着陶瓷花瓶和干花",
                                                      "窗边有薄纱窗帘、内置长凳和清晨的阳光"))
    with pytest.raises(CaptionValidationError, match="only 0% of its letters are Latin"):
        check(chinese, HOME)
    check(chinese, HOME, language="zh")  # CJK: no word-count minimum (words are not space-separated)
    with pytest.raises(CaptionValidationError, match="not in the requested language 'zh'"):
        check(example("home-decoration"), HOME, language="zh")


def test_names_that_change_between_panels() -> None:
    film = example("film-storyboard")
    check(film, FILM)  # <Mara> and <Elias> are two people
    changed = _with_panel(film, 1, film.panels[1].replace("<Mara>", "<Marah>"))
    with pytest.raises(CaptionValidationError, match=r"<Mara> \(in panel 1, panel 3\) and <Marah> \(in panel 2\)"):
        check(changed, FILM)
    recased = _with_panel(film, 2, film.panels[2].replace("<Mara>", "<MARA>"))
    with pytest.raises(CaptionValidationError, match="look like one person"):
        check(recased, FILM)
    with pytest.raises(CaptionValidationError, match="is not a name"):
        check(_with_panel(film, 0, film.panels[0].replace("<Mara>", "<the young fisherwoman>")), FILM)
    # names are IC-LoRA's habit for movie shots only
    named = _with_panel(example("home-decoration"), 0, "features <Mia> resting on a low platform bed with linen")
    with pytest.raises(CaptionValidationError, match="this preset does not name people"):
        check(named, HOME)


def test_too_short_to_train_on() -> None:
    with pytest.raises(CaptionValidationError, match="at least 25 are needed"):
        check(StructuredCaption("a room", ("a bed", "a chair", "a dresser", "a window")), HOME)
    check(StructuredCaption("a room", ("a bed", "a chair", "a dresser", "a window")), HOME, checks="structure")


# --- length in tokens -----------------------------------------------------------------------------------


def _t5_tokenizer(folder: Path, words: set[str]) -> Path:
    """A T5 tokenizer (SentencePiece unigram, ``▁`` word starts, ``</s>``) built here: every word of
    ``words`` is one piece (at a word start or inside one), anything else falls back to characters."""
    import string

    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -8.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [(w, -3.5) for w in sorted(words)] + [("▁" + w, -3.0) for w in sorted(words)]
    T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512).save_pretrained(folder)
    return folder


def test_length_is_counted_with_the_trainers_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    film = example("film-storyboard")
    rendered = check(film, FILM)
    words = set(re.findall(r"[A-Za-z]+", rendered))
    folder = _t5_tokenizer(tmp_path / "t5", words)
    count = token_counter(str(folder))
    oracle = AutoTokenizer.from_pretrained(folder)  # the tokenizer itself, loaded independently
    assert count(rendered) == len(oracle(rendered).input_ids) and oracle(rendered).input_ids[-1] == 1  # </s>
    # one token under, at and over the limit: the limit is the trainer's, in its tokens
    n = count(rendered)
    check(film, FILM, count_tokens=count, max_tokens=n)
    with pytest.raises(CaptionValidationError, match=f"caption is {n} text-encoder tokens, over the trainer's {n - 1}"):
        check(film, FILM, count_tokens=count, max_tokens=n - 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_estimate_counts_more_than_a_t5_tokenizer_that_knows_every_word(name: str, tmp_path: Path) -> None:
    layout = preset_layout(PRESETS[name])
    rendered = check(example(name), layout)
    words = set(re.findall(r"[A-Za-z]+", rendered))
    counted = token_counter(str(_t5_tokenizer(tmp_path / "t5", words)))(rendered)
    assert counted <= estimate_t5_tokens(rendered) <= 3 * counted


def test_cjk_is_counted_per_character_not_per_word() -> None:
    text = "这是一张四格图片，展示了北欧风格的卧室"  # one "word" to a whitespace split
    assert estimate_t5_tokens(text) >= len(text) + 1
    assert estimate_t5_tokens("ab") == 2 and estimate_t5_tokens("showcases") == 4  # letters: per started 4, + </s>
