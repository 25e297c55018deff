"""Caption structure: schema, checks, renderer per preset, prompts, settings; and the captioning loop
(cache, retries, sidecars) driven by a scripted captioner. No model here: see test_caption_transformers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from _caption_helpers import make_composite
from pydantic import ValidationError

from iclora_data.caption import (
    CaptionRequest,
    CaptionSettings,
    CaptionValidationError,
    PromptTemplateError,
    caption_grammar,
    caption_key,
    caption_schema,
    caption_sets,
    load_template,
    parse_caption,
    render_caption,
)
from iclora_data.caption.prompts import NAMES_RULE
from iclora_data.caption.schema import split_rendered
from iclora_data.layout import Layout, preset_layout
from iclora_data.presets import PRESETS
from iclora_data.records import CaptionRecord
from iclora_data.store import RunStore

# --- schema ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9])
def test_schema_demands_exactly_n_panels_and_allows_escapes(n: int) -> None:
    schema = caption_schema(n)
    panels = schema["properties"]["panels"]
    assert (panels["minItems"], panels["maxItems"]) == (n, n)
    # a length bound compiles to a character class without JSON escapes in xgrammar (vLLM's backend)
    assert "minLength" not in panels["items"] and "maxLength" not in schema["properties"]["summary"]
    assert schema["required"] == ["summary", "panels"] and schema["additionalProperties"] is False
    assert list(schema["properties"]) == ["summary", "panels"]  # the model writes the summary first


def test_schema_plain_ascii_bounds_each_text() -> None:
    item = caption_schema(2, 12, plain_ascii=True)["properties"]["panels"]["items"]
    assert item["pattern"].endswith("{0,11}$")
    with pytest.raises(ValueError):
        caption_schema(2, plain_ascii=True)
    with pytest.raises(ValueError):
        caption_schema(0)


# --- grammar, judged by xgrammar's own matcher --------------------------------------------------------


def _grammar_accepts(ebnf: str, text: str) -> bool:
    import xgrammar as xgr

    # a byte-ish vocabulary is enough: accept_string walks the grammar character by character
    info = xgr.TokenizerInfo(["<eos>"] + [chr(i) for i in range(32, 127)], stop_token_ids=[0])
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(ebnf),
                                 terminate_without_stop_token=True)
    return bool(matcher.accept_string(text)) and bool(matcher.is_terminated())


@pytest.mark.parametrize("answer", [
    {"summary": "a", "panels": ["b", "c"]},
    {"summary": 'The four-panel image showcases a bubble font', "panels": ['displays "Pop Candy" in pink',
                                                                           "a back\\slash / and a tab\t"]},
    {"summary": "Ein Café in Zürich, 東京の夜, emoji 🎨", "panels": ["naïve", "Ωmega"]},
])
def test_grammar_accepts_escapes_and_any_unicode(answer: dict[str, object]) -> None:
    for ensure_ascii in (False, True):  # raw Unicode, and \uXXXX escapes
        text = json.dumps(answer, ensure_ascii=ensure_ascii)
        assert _grammar_accepts(caption_grammar(2), text), text
        assert json.loads(text) == answer


@pytest.mark.parametrize(("text", "why"), [
    ('{"summary": "", "panels": ["b", "c"]}', "empty summary"),
    ('{"summary": "a", "panels": ["b", ""]}', "empty panel"),
    ('{"summary": " a", "panels": ["b", "c"]}', "leading space"),
    ('{"summary": "a", "panels": ["b"]}', "too few panels"),
    ('{"summary": "a", "panels": ["b", "c", "d"]}', "too many panels"),
    ('{"panels": ["b", "c"], "summary": "a"}', "keys out of order"),
    ('{"summary": "a\\x", "panels": ["b", "c"]}', "bad escape"),
    ('{"summary": "a\nb", "panels": ["b", "c"]}', "raw newline"),
])
def test_grammar_rejects_what_is_not_a_caption(text: str, why: str) -> None:
    assert not _grammar_accepts(caption_grammar(2), text), why


def test_grammar_bounds_each_text_by_max_chars() -> None:
    grammar = caption_grammar(1, max_chars=5)
    assert _grammar_accepts(grammar, json.dumps({"summary": 'ab\"de', "panels": ["12345"]}))
    assert not _grammar_accepts(grammar, json.dumps({"summary": "abcdef", "panels": ["x"]}))


def test_minlength_schema_is_what_forbade_escapes() -> None:
    """The bug this grammar replaces: xgrammar's own compilation of ``minLength`` forbids quotes."""
    import xgrammar as xgr

    old = {"type": "object", "properties": {"s": {"type": "string", "minLength": 1}}, "required": ["s"]}
    ebnf = str(xgr.Grammar.from_json_schema(json.dumps(old), any_whitespace=False, strict_mode=True))
    assert not _grammar_accepts(ebnf, json.dumps({"s": 'displays "Pop Candy"'}))
    assert _grammar_accepts(caption_grammar(1), json.dumps({"summary": 'displays "Pop Candy"',
                                                             "panels": ["x"]}))


# --- renderer -------------------------------------------------------------------------------------


def test_render_film_storyboard_runs_on_as_one_sentence() -> None:
    layout = preset_layout(PRESETS["film-storyboard"])
    text = render_caption("In a vibrant festival", ["we find <Leo>, a shy boy.", "moving to a game ",
                                                    "culminating in a win."], layout)
    assert text == ("[MOVIE-SHOTS] In a vibrant festival, [SCENE-1] we find <Leo>, a shy boy, "
                    "[SCENE-2] moving to a game, [SCENE-3] culminating in a win.")


def test_render_splices_a_noun_phrase_summary_after_the_opener() -> None:
    layout = preset_layout(PRESETS["home-decoration"])
    text = render_caption("A rustic living room.", ["Features a fireplace.", "shows a sofa", "b c", "d e"], layout)
    assert text == ("This four-panel image showcases a rustic living room; [TOP-LEFT] features a fireplace; "
                    "[TOP-RIGHT] shows a sofa; [BOTTOM-LEFT] b c; [BOTTOM-RIGHT] d e.")


@pytest.mark.parametrize(("summary", "lead"), [
    ("The four images show one rustic room", "The four images show one rustic room; [TOP-LEFT]"),
    ("A cosy room is shown in warm light.", "In this four-panel image, a cosy room is shown in warm light; "),
    ("Paris at night", "This four-panel image showcases Paris at night; "),
])
def test_render_never_splices_a_sentence_into_the_opener(summary: str, lead: str) -> None:
    text = render_caption(summary, ["a b", "c d", "e f", "g h"], preset_layout(PRESETS["ppt-templates"]))
    assert text.startswith(lead), text
    assert "showcases the four" not in text and "showcases a cosy room is" not in text


def test_render_default_tags_and_count_in_words() -> None:
    text = render_caption("three cups", ["x", "y", "z"], Layout(1, 3, 192, 64))
    assert text == "This three-panel image showcases three cups; [IMAGE1] x; [IMAGE2] y; [IMAGE3] z."


@pytest.mark.parametrize(("name", "start"), [
    ("film-storyboard", "[MOVIE-SHOTS] "), ("sandstorm-vfx", "[SANDSTORM-PSA] This two-part image showcases "),
    ("sparklers-vfx", "[REAL-SPARKLERS-OVERLAYS] The two-part image illustrates "),
    ("couple-profile", "This two-part image portrays "), ("font-design", "The four-panel image showcases "),
    ("portrait-photography", "This [FOUR-PANEL] image illustrates "),
    ("visual-identity", "The two-panel image showcases "),
])
def test_presets_use_ic_lora_prefixes_and_openers(name: str, start: str) -> None:
    layout = preset_layout(PRESETS[name])
    assert render_caption("a b", ["c d"] * layout.panels, layout).startswith(start)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_renders_its_tags_in_order_and_splits_back(name: str) -> None:
    from iclora_data.caption.style import style_for

    layout = preset_layout(PRESETS[name])
    example = style_for(name, layout.panels).example
    assert example is not None and len(example.panels) == layout.panels
    text = render_caption(example.summary, example.panels, layout)
    positions = [text.index(tag) for tag in layout.panel_tags]
    assert positions == sorted(positions)
    words = len(text.split())
    assert 55 <= words <= 125, (name, words)  # IC-LoRA's own examples run 60-125 words
    back = split_rendered(text, layout)
    assert back is not None and render_caption(back.summary, back.panels, layout) == text


def test_render_refuses_wrong_panel_count() -> None:
    with pytest.raises(CaptionValidationError, match="2 panel descriptions for 3 panels"):
        render_caption("s", ["a", "b"], Layout(1, 3, 192, 64))


# --- checks ---------------------------------------------------------------------------------------


def test_parse_accepts_valid_and_fenced_json() -> None:
    answer = json.dumps({"summary": " two  cats ", "panels": ["a cat", "another cat"]})
    assert parse_caption(answer, 2).panels == ("a cat", "another cat")
    assert parse_caption(f"Here you go:\n```json\n{answer}\n```", 2).summary == "two cats"


@pytest.mark.parametrize(("answer", "reason"), [
    ('{"summary": "s", "panels": ["a", "b"]}', "model returned 2 panel descriptions, expected 3"),
    ('{"summary": "  ", "panels": ["a", "b", "c"]}', "empty summary"),
    ('{"summary": "s", "panels": ["a", "", "c"]}', "empty description for panel 2"),
    ('{"summary": "s", "panels": ["a", "b", "c"', "malformed JSON"),
    ('["a", "b", "c"]', "expected an object"),
    ('{"panels": ["a", "b", "c"]}', "no 'summary'"),
    ("", "empty answer"),
])
def test_parse_rejects_bad_answers_with_a_reason(answer: str, reason: str) -> None:
    with pytest.raises(CaptionValidationError, match=reason.replace("(", r"\(")):
        parse_caption(answer, 3)


# --- prompts --------------------------------------------------------------------------------------


def test_prompt_names_characters_only_where_the_preset_asks(tmp_path: Path) -> None:
    film = make_composite(tmp_path, "film", 3, "film-storyboard")
    font = make_composite(tmp_path, "font", 4, "font-design")
    template = load_template(None)
    film_text, font_text = template.render(film, use_hints=False), template.render(font, use_hints=False)
    assert NAMES_RULE in film_text and NAMES_RULE not in font_text
    assert "exactly 3 strings" in film_text and "[SCENE-1], [SCENE-2], [SCENE-3]" in film_text
    assert "80-125 words" in font_text and "The four-panel image showcases" in font_text
    assert "Write plain English prose" in font_text
    assert "Write plain German prose" in template.render(font, use_hints=False, language="de")
    # the few-shot example is valid JSON with the preset's panel count, quotes escaped
    example = json.loads(font_text.split("for its shape and length only:\n", 1)[1].splitlines()[0])
    assert len(example["panels"]) == 4 and '"' in example["panels"][0]


def test_prompt_hints_only_when_asked(tmp_path: Path) -> None:
    rec = make_composite(tmp_path, "s", 2, source_caption="Two mugs on a desk.", panel_hints=["red mug", ""])
    template = load_template(None)
    with_hints = template.render(rec, use_hints=True)
    assert "Two mugs on a desk." in with_hints and "panel 1: red mug" in with_hints and "panel 2" not in with_hints
    assert "Two mugs" not in template.render(rec, use_hints=False)


def test_prompt_file_placeholders_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("Caption these $n images ($tags) as JSON; cost $$0. $hints")
    rec = make_composite(tmp_path, "s", 2)
    rendered = load_template(good).render(rec, use_hints=True)
    assert rendered == "Caption these 2 images ([IMAGE1], [IMAGE2]) as JSON; cost $0."
    bad = tmp_path / "bad.txt"
    bad.write_text("Caption $n images in $colour")
    with pytest.raises(PromptTemplateError, match=r"unknown placeholder\(s\) \$colour"):
        load_template(bad)
    with pytest.raises(PromptTemplateError, match="does not exist"):
        load_template(tmp_path / "missing.txt")


# --- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "openai"}, "needs base_url"),
    ({"min_pixels": 10_000, "max_pixels": 5_000}, "larger than max_pixels"),
    ({"base_url": "localhost:8000"}, "must start with http"),
    ({"device": "tpu"}, "device must be"),
    ({"backend": "vllm"}, "backend"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"colour": "red"}, "colour"),
])
def test_settings_reject_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CaptionSettings(**kwargs)  # type: ignore[arg-type]


# --- the captioning loop with a scripted captioner --------------------------------------------------


class ScriptedCaptioner:
    """Answers from a function of (request, attempt); records what it was asked."""

    def __init__(self, answer: Callable[[CaptionRequest, int], str | Exception], batch_size: int = 4):
        self.id = "scripted:test"
        self.batch_size = batch_size
        self.answer = answer
        self.calls: list[tuple[list[str], int]] = []
        self.instructions: dict[str, str] = {}

    def generate(self, requests: Sequence[CaptionRequest], attempt: int) -> list[str | Exception]:
        self.calls.append(([r.set_id for r in requests], attempt))
        for r in requests:
            self.instructions[r.set_id] = r.instruction
        return [self.answer(r, attempt) for r in requests]


def good_answer(request: CaptionRequest, attempt: int = 1) -> str:
    return json.dumps({"summary": f"summary of {request.set_id}",
                       "panels": [f"panel {i} of {request.set_id}" for i in range(request.n)]})


# structure checks only: these scripted answers are short placeholders (quality checks: test_caption_quality)
SETTINGS = CaptionSettings(model="scripted", max_attempts=3, checks="structure")


def test_caption_sets_captions_every_set_in_batches(tmp_path: Path) -> None:
    comps = [make_composite(tmp_path / "c", f"s{i}", n, seed=i) for i, n in enumerate([2, 3, 2, 4, 2])]
    cap = ScriptedCaptioner(good_answer, batch_size=2)
    seen: list[str] = []
    recs = caption_sets(comps, tmp_path / "c", RunStore(tmp_path), SETTINGS, captioner=cap,
                        on_result=lambda r: seen.append(r.set_id))
    assert [r.set_id for r in recs] == [c.set_id for c in comps] and sorted(seen) == sorted(r.set_id for r in recs)
    assert [len(ids) for ids, _ in cap.calls] == [2, 2, 1]
    for rec, comp in zip(recs, comps, strict=True):
        assert rec.status == "ok" and rec.captioner == "scripted:test" and rec.attempts == 1
        assert len(rec.panels) == len(comp.panel_boxes)
        assert rec.caption == render_caption(rec.summary, rec.panels, comp)


def test_wrong_count_is_retried_then_accepted(tmp_path: Path) -> None:
    comps = [make_composite(tmp_path / "c", "s", 3)]

    def flaky(r: CaptionRequest, attempt: int) -> str:
        return json.dumps({"summary": "s", "panels": ["a", "b"]}) if attempt == 1 else good_answer(r)

    rec, = caption_sets(comps, tmp_path / "c", RunStore(tmp_path), SETTINGS, captioner=ScriptedCaptioner(flaky))
    assert rec.status == "ok" and rec.attempts == 2


@pytest.mark.parametrize(("answer", "reason"), [
    (json.dumps({"summary": "s", "panels": ["a", "b"]}), "model returned 2 panel descriptions, expected 3"),
    (json.dumps({"summary": "", "panels": ["a", "b", "c"]}), "model returned an empty summary"),
    (json.dumps({"summary": "w " * 600, "panels": ["a", "b", "c"]}), "over the trainer's 512"),
])
def test_persistent_failure_gives_a_failed_record_never_an_empty_caption(
        tmp_path: Path, answer: str | Exception, reason: str) -> None:
    comps = [make_composite(tmp_path / "c", "bad", 3), make_composite(tmp_path / "c", "good", 2, seed=1)]
    cap = ScriptedCaptioner(lambda r, a: answer if r.set_id == "bad" else good_answer(r))
    store = RunStore(tmp_path)
    bad, good = caption_sets(comps, tmp_path / "c", store, SETTINGS, captioner=cap)
    assert good.status == "ok"
    assert bad.status == "failed" and bad.caption == "" and bad.attempts == 3
    assert bad.error is not None and bad.error.startswith("caption failed after 3 attempts: ") and reason in bad.error
    assert [ids for ids, _ in cap.calls] == [["bad", "good"], ["bad"], ["bad"]]
    assert store.get_json("captions", bad.key) is None  # a failure is tried again next run


def test_a_request_that_failed_after_the_backends_retries_is_not_asked_again(tmp_path: Path) -> None:
    comps = [make_composite(tmp_path / "c", "bad", 3), make_composite(tmp_path / "c", "good", 2, seed=1)]
    cap = ScriptedCaptioner(lambda r, a: RuntimeError("server answered HTTP 503: boom (after 3 tries)")
                            if r.set_id == "bad" else good_answer(r))
    bad, good = caption_sets(comps, tmp_path / "c", RunStore(tmp_path), SETTINGS, captioner=cap)
    assert good.status == "ok" and bad.status == "failed" and bad.attempts == 1
    assert bad.error == "caption failed after 1 attempt: server answered HTTP 503: boom (after 3 tries)"
    assert [ids for ids, _ in cap.calls] == [["bad", "good"]]


def test_rerun_uses_cache_and_template_change_recaptions(tmp_path: Path) -> None:
    comps = [make_composite(tmp_path / "c", f"s{i}", 2, seed=i) for i in range(3)]
    store = RunStore(tmp_path)
    first = caption_sets(comps, tmp_path / "c", store, SETTINGS, captioner=ScriptedCaptioner(good_answer))
    again = ScriptedCaptioner(good_answer)
    second = caption_sets(comps, tmp_path / "c", store, SETTINGS, captioner=again)
    assert again.calls == [] and [r.caption for r in second] == [r.caption for r in first]
    assert [caption_key(c, SETTINGS) for c in comps] == [r.key for r in first]

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Caption $n images as JSON with a summary and panels.")
    changed = SETTINGS.model_copy(update={"prompt_file": prompt})
    third_cap = ScriptedCaptioner(good_answer)
    third = caption_sets(comps, tmp_path / "c", store, changed, captioner=third_cap)
    assert len(third_cap.calls) == 1 and {r.key for r in third}.isdisjoint(r.key for r in first)
    hotter = SETTINGS.model_copy(update={"temperature": 0.5})
    assert caption_key(comps[0], hotter) != caption_key(comps[0], SETTINGS)


def test_sidecar_keep_hint_ignore(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    tagged = make_composite(folder, "tagged", 3, "film-storyboard",
                            source_caption="[MOVIE-SHOTS] A duel. [SCENE-1] Swords. [SCENE-2] A lunge. [SCENE-3] Rain.")
    hinted = make_composite(folder, "hinted", 2, seed=1, source_caption="Two lamps.", panel_hints=["brass", "glass"])
    loose = make_composite(folder, "loose", 2, seed=2, source_caption="Some notes only.")
    plain = make_composite(folder, "plain", 2, seed=3)
    comps = [tagged, hinted, loose, plain]

    keep_cap = ScriptedCaptioner(good_answer)
    keep = caption_sets(comps, folder, RunStore(tmp_path / "k"), SETTINGS.model_copy(update={"sidecar": "keep"}),
                        captioner=keep_cap)
    assert keep[0].source == "sidecar" and keep[0].summary == "A duel." and keep[0].panels == ["Swords", "A lunge",
                                                                                                  "Rain"]
    # a caption the set brought with its tags is the author's: kept word for word
    assert keep[0].caption == "[MOVIE-SHOTS] A duel. [SCENE-1] Swords. [SCENE-2] A lunge. [SCENE-3] Rain."
    assert keep[1].source == "sidecar" and keep[1].caption == "This two-panel image showcases two lamps; [IMAGE1] " \
                                                              "brass; [IMAGE2] glass."
    # a sidecar without the caption's structure cannot be kept: the model writes it, with the notes as hints
    assert keep[2].source == "model" and "Some notes only." in keep_cap.instructions["loose"]
    assert sorted(keep_cap.calls[0][0]) == ["loose", "plain"]

    hint_cap = ScriptedCaptioner(good_answer)
    hint = caption_sets(comps, folder, RunStore(tmp_path / "h"), SETTINGS.model_copy(update={"sidecar": "hint"}),
                        captioner=hint_cap)
    assert all(r.source == "model" for r in hint)
    assert "Two lamps." in hint_cap.instructions["hinted"] and "panel 1: brass" in hint_cap.instructions["hinted"]

    ignore_cap = ScriptedCaptioner(good_answer)
    caption_sets(comps, folder, RunStore(tmp_path / "i"), SETTINGS.model_copy(update={"sidecar": "ignore"}),
                 captioner=ignore_cap)
    assert all("author" not in text for text in ignore_cap.instructions.values())
    assert ignore_cap.instructions["plain"] == hint_cap.instructions["plain"]


def test_unreadable_composite_fails_alone(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    comps = [make_composite(folder, "broken", 2), make_composite(folder, "fine", 2, seed=1)]
    (folder / comps[0].image).write_bytes(b"not a jpeg")
    broken, fine = caption_sets(comps, folder, RunStore(tmp_path), SETTINGS, captioner=ScriptedCaptioner(good_answer))
    assert fine.status == "ok"
    assert broken.status == "failed" and broken.error is not None and "cannot read composite broken.jpg" in broken.error


def test_cached_record_round_trips(tmp_path: Path) -> None:
    comps = [make_composite(tmp_path / "c", "s", 2)]
    store = RunStore(tmp_path)
    rec, = caption_sets(comps, tmp_path / "c", store, SETTINGS, captioner=ScriptedCaptioner(good_answer))
    stored = store.get_json("captions", rec.key)
    assert stored is not None and CaptionRecord(**stored) == rec


def test_control_characters_are_cleaned_out_of_captions() -> None:
    caption = parse_caption('{"summary": "a\x11b\\u0007c", "panels": ["x\ty", "\x1bz"]}', 2)
    assert caption.summary == "a b c" and caption.panels == ("x y", "z")
    with pytest.raises(CaptionValidationError, match="empty description for panel 2"):
        parse_caption('{"summary": "s", "panels": ["x", "\x11\x12"]}', 2)


def test_caption_key_survives_a_config_round_trip(tmp_path: Path) -> None:
    """The build flow passes settings as JSON; the key (and tiny-random's defaults) must not change."""
    rec = make_composite(tmp_path, "s", 2)
    for settings in (CaptionSettings(model="tiny-random"), CaptionSettings(), SETTINGS):
        again = CaptionSettings.model_validate(json.loads(settings.model_dump_json()))
        assert caption_key(rec, again) == caption_key(rec, settings)
        assert again.resolved() == settings.resolved()
    tiny = CaptionSettings(model="tiny-random").resolved()
    assert tiny.pixels == (56 * 56, 112 * 112) and tiny.max_chars == 24
    assert CaptionSettings().resolved().pixels == (128 * 28 * 28, 768 * 28 * 28)
