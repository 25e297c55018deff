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
    MAX_WORDS,
    CaptionRequest,
    CaptionSettings,
    CaptionValidationError,
    PromptTemplateError,
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
def test_schema_demands_exactly_n_non_empty_panels(n: int) -> None:
    schema = caption_schema(n)
    panels = schema["properties"]["panels"]
    assert (panels["minItems"], panels["maxItems"]) == (n, n)
    assert panels["items"]["minLength"] == 1 and schema["properties"]["summary"]["minLength"] == 1
    assert schema["required"] == ["summary", "panels"] and schema["additionalProperties"] is False
    assert list(schema["properties"]) == ["summary", "panels"]  # the model writes the summary first


def test_schema_plain_ascii_bounds_each_text() -> None:
    item = caption_schema(2, 12, plain_ascii=True)["properties"]["panels"]["items"]
    assert item["pattern"].endswith("{0,11}$")
    with pytest.raises(ValueError):
        caption_schema(2, plain_ascii=True)
    with pytest.raises(ValueError):
        caption_schema(0)


# --- renderer -------------------------------------------------------------------------------------


def test_render_film_storyboard_uses_prefix_and_scene_tags() -> None:
    layout = preset_layout(PRESETS["film-storyboard"])
    text = render_caption("A chase at night.", ["<Mia> runs.", "A car  turns.", "Sirens."], layout)
    assert text == ("[MOVIE-SHOTS] A chase at night. [SCENE-1] <Mia> runs. [SCENE-2] A car turns. "
                    "[SCENE-3] Sirens.")


def test_render_without_prefix_counts_panels_in_words() -> None:
    layout = preset_layout(PRESETS["font-design"])
    text = render_caption("A serif typeface.", ["a", "b", "c", "d"], layout)
    assert text == "This four-panel image shows a serif typeface; [TOP-LEFT] a [TOP-RIGHT] b [BOTTOM-LEFT] c " \
                   "[BOTTOM-RIGHT] d"


def test_render_without_prefix_keeps_names_capitalised() -> None:
    text = render_caption("Paris at night", ["x", "y"], Layout(1, 2, 128, 64))
    assert text.startswith("This two-panel image shows Paris at night; [IMAGE1] x")


def test_render_default_tags_are_image_n() -> None:
    text = render_caption("three cups", ["x", "y", "z"], Layout(1, 3, 192, 64))
    assert "[IMAGE1] x [IMAGE2] y [IMAGE3] z" in text and text.startswith("This three-panel image shows")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_renders_its_tags_in_order_and_splits_back(name: str) -> None:
    layout = preset_layout(PRESETS[name])
    panels = [f"panel number {i}" for i in range(layout.panels)]
    text = render_caption("the shared summary", panels, layout)
    positions = [text.index(tag) for tag in layout.panel_tags]
    assert positions == sorted(positions)
    assert text.startswith(layout.prefix or "This ")
    back = split_rendered(text, layout)
    assert back is not None and back.summary == "the shared summary" and list(back.panels) == panels


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


def test_parse_rejects_captions_over_the_word_limit() -> None:
    layout = Layout(1, 2, 128, 64)
    long = " ".join(["word"] * (MAX_WORDS // 2 + 10))
    with pytest.raises(CaptionValidationError, match=f"over the {MAX_WORDS}-word limit"):
        parse_caption(json.dumps({"summary": long, "panels": [long, "b"]}), 2, layout)
    parse_caption(json.dumps({"summary": long, "panels": ["a", "b"]}), 2, layout)  # under the limit: fine


# --- prompts --------------------------------------------------------------------------------------


def test_prompt_names_characters_only_where_the_preset_asks(tmp_path: Path) -> None:
    film = make_composite(tmp_path, "film", 3, "film-storyboard")
    font = make_composite(tmp_path, "font", 4, "font-design")
    template = load_template(None)
    film_text, font_text = template.render(film, use_hints=False), template.render(font, use_hints=False)
    assert NAMES_RULE in film_text and NAMES_RULE not in font_text
    assert "exactly 3 strings" in film_text and "[SCENE-1], [SCENE-2], [SCENE-3]" in film_text
    assert "512 words" in font_text


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
    bad.write_text("Caption $n images in $language")
    with pytest.raises(PromptTemplateError, match=r"unknown placeholder\(s\) \$language"):
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


SETTINGS = CaptionSettings(model="scripted", max_attempts=3)


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
    (json.dumps({"summary": "w " * 600, "panels": ["a", "b", "c"]}), "over the 512-word limit"),
    (RuntimeError("server answered HTTP 500: boom"), "server answered HTTP 500: boom"),
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
    assert keep[0].source == "sidecar" and keep[0].summary == "A duel." and keep[0].panels == ["Swords.", "A lunge.",
                                                                                                  "Rain."]
    assert keep[0].caption == "[MOVIE-SHOTS] A duel. [SCENE-1] Swords. [SCENE-2] A lunge. [SCENE-3] Rain."
    assert keep[1].source == "sidecar" and keep[1].caption == "This two-panel image shows two lamps; [IMAGE1] brass " \
                                                              "[IMAGE2] glass"
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
