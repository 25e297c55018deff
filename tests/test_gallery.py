"""``OUT/gallery.html``: what a person sees, checked in a real headless Chromium.

The page is loaded from disk (file://) in Debian's ``chromium`` driven by Playwright (its
bundled browsers are not used: ``executable_path`` points at the system binary). Any request
that is not a local file is recorded and aborted, so the page must be self-contained. A
screenshot is taken of the full page and of the panel-box overlay.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _publish_helpers import XSS_ID, make_finished_out
from PIL import Image

from iclora_data.gallery import highlight_caption, write_gallery
from iclora_data.publish import PublishError
from iclora_data.records import file_stem, load_captions, load_composites

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def gallery_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_finished_out(tmp_path_factory.mktemp("gallery"))
    write_gallery(out)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser: Any, gallery_out: Path) -> Iterator[Any]:
    page = browser.new_page()
    page.external_requests = []
    page.dialogs = []

    def guard(route: Any) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            page.external_requests.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto((gallery_out / "gallery.html").as_uri())
    page.set_default_timeout(15_000)
    page.wait_for_load_state("load")
    yield page
    page.close()


def visible_boxes(figure: Any) -> list[Any]:
    return [b for b in figure.locator(".box").all() if b.is_visible()]


def test_kept_composites_show_with_captions_and_tag_highlights(page: Any, gallery_out: Path, tmp_path: Path) -> None:
    report = json.loads((gallery_out / "report.json").read_text())
    kept = sorted(s["set_id"] for s in report["sets"] if s["status"] == "kept")
    figures = page.locator("figure.set.kept")
    assert figures.count() == len(kept)
    assert [f.get_attribute("data-set-id") for f in figures.all()] == kept
    captions = load_captions(gallery_out)
    sidecars = {r.set_id: r for r in load_composites(gallery_out)}
    for fig in figures.all():
        set_id = fig.get_attribute("data-set-id")
        img = fig.locator("img.thumb")
        assert img.is_visible()
        # the thumbnail really loads (lazily, once in view) and is small, not the full composite
        img.scroll_into_view_if_needed()
        natural = img.evaluate("i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])")
        assert 0 < max(natural) <= 512
        assert fig.locator(".set-id").inner_text() == set_id
        rec = sidecars[set_id]
        cap = captions.get(set_id)
        text = fig.locator(".caption").inner_text()
        if cap is not None and cap.status == "ok":
            assert text == cap.caption  # shown in full, as plain text (the <script> in it is text)
            marks = [m.inner_text() for m in fig.locator(".caption mark.tag").all()]
            assert marks == [t for t in [rec.prefix, *rec.panel_tags] if t]
            assert fig.locator(".caption mark.tag").first.evaluate(
                "m => getComputedStyle(m).backgroundColor") != "rgba(0, 0, 0, 0)"
        else:
            assert "caption failed" in text and cap is not None and (cap.error or "") in text
    assert page.dialogs == [] and page.external_requests == []
    shot = tmp_path / "gallery.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height > 900  # the whole page, not a blank viewport


def test_panel_boxes_overlay_on_hover_and_toggle(page: Any, gallery_out: Path, tmp_path: Path) -> None:
    fig = page.locator('figure.set.kept[data-set-id="alpha"]')
    rec = next(r for r in load_composites(gallery_out) if r.set_id == "alpha")
    assert visible_boxes(fig) == []  # hidden until asked for
    fig.locator(".frame").hover()
    boxes = visible_boxes(fig)
    assert len(boxes) == len(rec.panel_boxes) == 3
    img = fig.locator("img.thumb").bounding_box()
    scale = img["width"] / rec.width
    for box, (x0, y0, x1, y1), tag in zip(boxes, rec.panel_boxes, rec.panel_tags, strict=True):
        bb = box.bounding_box()
        assert abs(bb["x"] - (img["x"] + x0 * scale)) <= 2 and abs(bb["y"] - (img["y"] + y0 * scale)) <= 2
        assert abs(bb["width"] - (x1 - x0) * scale) <= 2 and abs(bb["height"] - (y1 - y0) * scale) <= 2
        assert box.locator(".tag-label").inner_text() == tag
    fig.screenshot(path=str(tmp_path / "boxes.png"))
    page.mouse.move(0, 0)
    assert visible_boxes(fig) == []
    page.locator("#show-boxes").check()
    assert all(b.is_visible() for b in page.locator("figure.set.kept .box").all())


def test_duplicates_and_rejects_show_reasons_and_thumbnails(page: Any, gallery_out: Path) -> None:
    report = json.loads((gallery_out / "report.json").read_text())
    others = [s for s in report["sets"] if s["status"] != "kept"]
    articles = page.locator("article.set")
    assert articles.count() == len(others)
    for entry in others:
        art = page.locator(f'article.set[data-set-id="{entry["set_id"].replace(chr(34), chr(92) + chr(34))}"]')
        assert art.is_visible()
        assert art.locator("h3").inner_text().startswith(entry["set_id"])
        assert art.locator(".reason").inner_text() == entry["reason"]
        assert art.locator("ul.files li").count() == len(entry["files"])
    dup = page.locator('article.set.duplicate[data-set-id="delta"]')
    assert dup.locator(".dup a").inner_text() == "beta"
    assert dup.locator(".dup a").get_attribute("href") == f"#set-{file_stem('beta')}"
    assert dup.locator("ul.files img").count() == 2  # decodable files get thumbnails
    for img in dup.locator("ul.files img").all():
        img.scroll_into_view_if_needed()
        assert img.evaluate("i => i.decode().then(() => i.naturalWidth)") > 0
    # the truncated file cannot be decoded: a placeholder, and the file's own reason
    bad = page.locator("article.set.rejected").filter(has_text="truncated JPEG")
    items = bad.locator("ul.files li")
    assert [li.locator(".placeholder").count() for li in items.all()] == [0, 1]
    assert "truncated JPEG" in items.nth(1).inner_text()
    # ignored files are listed with their reason
    assert "system junk file" in page.locator("table.ignored").inner_text()


def test_user_html_is_shown_as_text_not_run(page: Any) -> None:
    assert page.locator(f"text={XSS_ID}").count() >= 1
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("figure script, article script").count() == 0
    assert page.dialogs == []


def test_highlight_caption_escapes_and_marks() -> None:
    html = highlight_caption("[LEFT] a <b>cat</b> & [RIGHT] a dog [LEFT]", ["[LEFT]", "[RIGHT]"])
    assert html == ('<mark class="tag">[LEFT]</mark> a &lt;b&gt;cat&lt;/b&gt; &amp; '
                    '<mark class="tag">[RIGHT]</mark> a dog <mark class="tag">[LEFT]</mark>')


def test_gallery_needs_a_report(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="report.json"):
        write_gallery(tmp_path)


def test_source_paths_cannot_escape_source(tmp_path: Path) -> None:
    out = make_finished_out(tmp_path)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (300, 300), "red").save(secret)
    report = json.loads((out / "report.json").read_text())
    rejected = next(s for s in report["sets"] if s["status"] == "rejected")
    rejected["files"].append("../secret.jpg")
    (out / "report.json").write_text(json.dumps(report))
    write_gallery(out)
    page = (out / "gallery.html").read_text()
    assert "../secret.jpg" in page  # listed by name
    thumbs = sorted((out / "gallery/files").glob("*.jpg"))
    assert all(Image.open(t).getpixel((5, 5)) != (255, 0, 0) for t in thumbs)  # but never previewed
