"""People review captions: export, edit, import; edited captions win over the model's; dry runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _caption_helpers import make_composite
from typer.testing import CliRunner

from iclora_data.caption import CaptionRequest, CaptionSettings, caption_sets, render_caption
from iclora_data.caption.review import CaptionReviewError, dry_run, export_captions, import_captions, load_edited
from iclora_data.caption.style import style_for
from iclora_data.cli import app
from iclora_data.records import CaptionRecord, composites_dir, load_composites, save_caption
from iclora_data.store import RunStore

SETTINGS = CaptionSettings(model="scripted", checks="structure")


class Scripted:
    id = "scripted:test"
    batch_size = 4

    def __init__(self) -> None:
        self.asked: list[str] = []

    def generate(self, requests: list[CaptionRequest], attempt: int) -> list[str | Exception]:
        self.asked += [r.set_id for r in requests]
        return [json.dumps({"summary": f"model summary of {r.set_id}",
                            "panels": [f"model panel {i}" for i in range(r.n)]}) for r in requests]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A captioned OUT: composites, their sidecars and caption records, as a build leaves them."""
    out = tmp_path / "out"
    folder = composites_dir(out)
    comps = [make_composite(folder, "film", 3, "film-storyboard"), make_composite(folder, "font", 4, "font-design",
                                                                                  seed=1)]
    for rec in caption_sets(comps, folder, RunStore(out), SETTINGS, captioner=Scripted()):
        save_caption(out, rec)
    (out / "report.json").write_text(json.dumps({"version": 1, "counts": {}, "sets": [], "files": []}))
    return out


def test_export_edit_import_and_the_edits_win(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "review"
    assert export_captions(out, dest) == 2
    film_file, font_file = dest / "film.json", dest / "font.json"
    film = json.loads(film_file.read_text())
    assert film["panels"] == ["model panel 0", "model panel 1", "model panel 2"]
    # the person rewrites one panel of the film; rewrites the font's caption text itself
    film["panels"][1] = 'moving to <Mara> at the harbour, reading "Closed" on the door'
    film_file.write_text(json.dumps(film))
    font = json.loads(font_file.read_text())
    font["caption"] = ("The four-panel image showcases my own words; [TOP-LEFT] one; [TOP-RIGHT] two; "
                       "[BOTTOM-LEFT] three; [BOTTOM-RIGHT] four, as I like it")
    font_file.write_text(json.dumps(font))

    assert sorted(import_captions(out, dest)) == ["film", "font"]
    edited = load_edited(out)
    comps = {c.set_id: c for c in load_composites(out)}
    assert edited["font"].caption == font["caption"]  # word for word, as the person left it
    assert edited["film"].caption == render_caption(film["summary"], film["panels"], comps["film"])

    # a re-caption with a model keeps the edits and marks them human-written; the model is not asked
    model = Scripted()
    records = caption_sets(list(comps.values()), composites_dir(out), RunStore(out), SETTINGS, captioner=model,
                           edited=edited)
    by_id = {r.set_id: r for r in records}
    assert model.asked == []
    assert by_id["font"].caption == font["caption"] and by_id["font"].captioner == "human"
    assert by_id["font"].source == "human" and by_id["film"].panels[1].startswith("moving to <Mara>")


def test_unchanged_files_are_not_imported_as_human(out: Path, tmp_path: Path) -> None:
    export_captions(out, tmp_path / "review")
    assert import_captions(out, tmp_path / "review") == []
    assert load_edited(out) == {}


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda d: d.update(panels=d["panels"][:2]), "2 panel texts for 3 panels"),
    (lambda d: d.update(caption="[MOVIE-SHOTS] no tags left"), "must keep every tag once, in order"),
    (lambda d: d.update(panels=["[SCENE-2] x", "y", "z"]), "leaked tag"),
    (lambda d: d.update(set_id="nope"), "not a kept set"),
    (lambda d: d.update(panels=["x", "", "z"]), "non-empty"),
])
def test_bad_edits_import_nothing_and_say_why(out: Path, tmp_path: Path, edit: object, problem: str) -> None:
    dest = tmp_path / "review"
    export_captions(out, dest)
    data = json.loads((dest / "film.json").read_text())
    edit(data)  # type: ignore[operator]
    (dest / "film.json").write_text(json.dumps(data))
    font = json.loads((dest / "font.json").read_text())
    font["summary"] = "a good edit that must not land alone"
    (dest / "font.json").write_text(json.dumps(font))
    with pytest.raises(CaptionReviewError, match=f"film.json: .*{problem}"):
        import_captions(out, dest)
    assert load_edited(out) == {}


def test_dry_run_shows_the_exact_prompt_and_sizes(out: Path) -> None:
    shown = dry_run(out, CaptionSettings(backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                         max_pixels=40 * 40), "film")
    assert shown.panels == [((64, 64), (40, 40))] * 3
    assert "[SCENE-1], [SCENE-2], [SCENE-3]" in shown.instruction and "<Mia>" in shown.instruction
    assert style_for("film-storyboard", 3).example.panels[0] in shown.instruction  # type: ignore[union-attr]
    assert shown.response_format is not None and shown.response_format["type"] == "json_schema"
    tiny = CaptionSettings(model="tiny-random")
    local = dry_run(out, tiny, "font")
    # oracle: what qwen-vl-utils' own image preparation (the backend's) makes of one panel
    from PIL import Image

    from iclora_data.caption.transformers_backend import _process_vision_info

    min_px, max_px = tiny.resolved().pixels
    message = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (64, 64)),
                                             "min_pixels": min_px, "max_pixels": max_px}]}]
    images, _ = _process_vision_info()([message], image_patch_size=14)
    assert [sent for _, sent in local.panels] == [images[0].size] * 4
    with pytest.raises(CaptionReviewError, match="no composite of set 'nope'"):
        dry_run(out, SETTINGS, "nope")


def test_cli_review_round_trip_and_dry_run(out: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    dest = tmp_path / "review"
    result = runner.invoke(app, ["captions", "export", str(out), str(dest)])
    assert result.exit_code == 0, result.output
    data = json.loads((dest / "font.json").read_text())
    data["summary"] = "a hand-lettered script"
    (dest / "font.json").write_text(json.dumps(data))
    result = runner.invoke(app, ["captions", "import", str(out), str(dest)])
    assert result.exit_code == 0 and "imported 1 edited caption" in result.output, result.output
    assert load_edited(out)["font"].summary == "a hand-lettered script"

    result = runner.invoke(app, ["caption", str(out), "--model", "tiny-random", "--dry-run", "--set", "film"])
    assert result.exit_code == 0, result.output
    assert "set film: 3 panels" in result.output and "[SCENE-1], [SCENE-2], [SCENE-3]" in result.output
    assert "--- grammar" not in result.output  # tiny-random decodes under its bounded schema instead
    result = runner.invoke(app, ["caption", str(out), "--backend", "openai", "--model", "m", "--base-url",
                                 "http://127.0.0.1:9/v1", "--dry-run"])  # no server needed to show a request
    assert result.exit_code == 0 and '"type": "json_schema"' in result.output, result.output

    result = runner.invoke(app, ["captions", "import", str(out), str(tmp_path / "empty")])
    assert result.exit_code != 0 and "holds no .json caption files" in result.output


def test_a_failed_new_caption_keeps_the_previous_one(out: Path) -> None:
    comps = load_composites(out)
    previous = {c.set_id: CaptionRecord(**json.loads((out / "captions" / f"{c.set_id}.json").read_text()))
                for c in comps}

    class Refuses(Scripted):
        def generate(self, requests: list[CaptionRequest], attempt: int) -> list[str | Exception]:
            return [RuntimeError("server answered HTTP 503") for _ in requests]

    records = caption_sets(comps, composites_dir(out), RunStore(out / "fresh"),
                           SETTINGS.model_copy(update={"max_attempts": 2, "temperature": 0.3}), captioner=Refuses(),
                           previous=previous)
    for rec in records:
        old = previous[rec.set_id]
        assert rec.status == "ok" and rec.caption == old.caption and rec.captioner == old.captioner
        assert rec.error is not None and rec.error.startswith("kept the previous caption: the new one failed: "
                                                              "caption failed after 1 attempt")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_recaption_with_a_dead_server_fails_in_seconds_and_changes_nothing(out: Path) -> None:
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    before = _snapshot(out)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["caption", str(out), "--backend", "openai", "--model", "served",
                                      "--base-url", dead])
    assert time.monotonic() - started < 10
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the caption server at {dead}")
    assert _snapshot(out) == before


def test_outcome_says_loudly_when_most_sets_failed() -> None:
    from iclora_data.caption import caption_outcome

    def rec(i: int, status: str, source: str = "model", error: str | None = None) -> CaptionRecord:
        return CaptionRecord(set_id=f"s{i}", key="k", composite_key="c", status=status,  # type: ignore[arg-type]
                             source=source, error=error)  # type: ignore[arg-type]

    fine = caption_outcome([rec(0, "ok"), rec(1, "ok"), rec(2, "failed", error="bad"), rec(3, "ok", "human")])
    assert fine["failed"] == 1 and fine["human"] == 1 and fine["model"] == 2 and fine["warning"] is None
    bad = caption_outcome([rec(0, "ok"), rec(1, "failed", error="refusal"),
                           rec(2, "ok", error="kept the previous caption: the new one failed: x"),
                           rec(3, "ok", "human"), rec(4, "ok", "human")])
    assert bad["mostly_failed"] and bad["kept_previous"] == 1 and bad["failed_share"] == round(2 / 3, 3)
    assert bad["warning"].startswith("captioning failed for 2 of 3 sets (67%)")
