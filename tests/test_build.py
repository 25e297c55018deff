"""The data core end to end: `build --until compose` over a SOURCE full of the bad input users
meet, and the ledger that must account for every file. The library's ``run_build``, no Prefect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._images import exif_rotated_jpeg, image_set, picture, png_declaring, save, truncated_jpeg


def _good(folder: Path, seed: int, n: int = 1) -> None:
    for i in range(n):
        save(picture(seed + i), folder / f"{10 + i}.jpg", quality=92)


@pytest.fixture(scope="module")
def messy_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy") / "SOURCE"
    image_set(root / "good-a", [1, 2, 3])
    # the same files under another name and order: an exact duplicate set
    copy = root / "good-a-copy"
    copy.mkdir()
    for src, dst in (("1.jpg", "c.jpg"), ("2.jpg", "a.jpg"), ("3.jpg", "b.jpg")):
        (copy / dst).write_bytes((root / "good-a" / src).read_bytes())
    _good(root / "zero-byte", 20)
    (root / "zero-byte" / "2.jpg").write_bytes(b"")
    _good(root / "text-as-jpg", 21)
    (root / "text-as-jpg" / "2.jpg").write_text("this is not a picture\n")
    _good(root / "truncated", 22)
    (root / "truncated" / "2.jpg").write_bytes(truncated_jpeg())
    _good(root / "huge-png", 23)
    (root / "huge-png" / "2.png").write_bytes(png_declaring(20000, 20000))
    _good(root / "tiny", 24)
    save(picture(25, (8, 8)), root / "tiny" / "2.png")
    _good(root / "single", 26)
    _good(root / "cmyk", 27)
    save(picture(28).convert("CMYK"), root / "cmyk" / "1.jpg", quality=95)
    _good(root / "deep16", 29)
    ramp = np.tile(np.linspace(0, 65535, 320, dtype=np.uint16), (288, 1))
    Image.fromarray(ramp).save(root / "deep16" / "1.png")
    _good(root / "palette", 30)
    pal = Image.new("P", (320, 288), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(1, (0, 144, 320, 288))  # bottom half green, top half index 0 = transparent
    pal.save(root / "palette" / "1.png", transparency=0)
    _good(root / "rotated", 31)
    exif_rotated_jpeg(root / "rotated" / "1.jpg")
    _good(root / "animated", 32)
    frames = [Image.new("RGB", (320, 288), c) for c in ((220, 20, 20), (20, 220, 20))]
    frames[0].save(root / "animated" / "1.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image_set(root / "日本語セット", [33, 34])
    _good(root / "link-out", 35)
    outside = root.parent / "outside.jpg"
    save(picture(36), outside)
    (root / "link-out" / "2.jpg").symlink_to(outside)
    order = root / "natural-order"
    for name, seed in (("10.jpg", 37), ("2.jpg", 38), ("1.jpg", 39)):
        save(picture(seed), order / name, quality=92)
    (root / "__MACOSX" / "good-a").mkdir(parents=True)
    (root / "__MACOSX" / "good-a" / "._1.jpg").write_bytes(b"\0\5\26\7junk")
    (root / "good-a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "loose.txt").write_text("a file outside any set\n")
    return root


@pytest.fixture(scope="module")
def built(messy_source, tmp_path_factory) -> tuple[Path, dict, dict]:
    from iclora_data.build import run_build

    out = tmp_path_factory.mktemp("out")
    result = run_build(str(messy_source), str(out), {"until": "compose"}).as_dict()
    report = json.loads((out / "report.json").read_text())
    return out, report, result


def set_of(report: dict, set_id: str) -> dict:
    return next(s for s in report["sets"] if s["set_id"] == set_id)


def file_of(report: dict, path: str) -> dict:
    return next(f for f in report["files"] if f["path"] == path)


def composite_panel(out: Path, set_id: str, index: int) -> np.ndarray:
    from iclora_data.records import file_stem

    meta = json.loads((out / "composites" / f"{file_stem(set_id)}.json").read_text())
    x0, y0, x1, y1 = meta["panel_boxes"][index]
    with Image.open(out / "composites" / meta["image"]) as im:
        return np.asarray(im.convert("RGB"))[y0:y1, x0:x1].astype(int)


def test_ledger_accounts_for_every_file_exactly_once(messy_source, built):
    _, report, _ = built
    on_disk = set()
    for dirpath, _dirs, filenames in os.walk(messy_source):
        on_disk.update((Path(dirpath) / n).relative_to(messy_source).as_posix() for n in filenames)
    paths = [f["path"] for f in report["files"]]
    assert len(paths) == len(set(paths))
    assert set(paths) == on_disk
    assert all(f["reason"] for f in report["files"])
    counts = report["counts"]
    assert counts["files"] == len(paths)
    assert counts["sets"] == len(report["sets"]) == counts["kept"] + counts["duplicate"] + counts["rejected"]
    assert sorted(s["set_id"] for s in report["sets"]) == sorted(
        p.name for p in messy_source.iterdir() if p.is_dir() and p.name != "__MACOSX")


@pytest.mark.parametrize("set_id, bad_file, expected", [
    ("zero-byte", "zero-byte/2.jpg", "empty file (0 bytes)"),
    ("text-as-jpg", "text-as-jpg/2.jpg", "not an image: the file holds text"),
    ("truncated", "truncated/2.jpg", "truncated JPEG"),
    ("huge-png", "huge-png/2.png", "too large: 400 megapixels, over the limit of 100 megapixels"),
    ("tiny", "tiny/2.png", "too small: 8x8 pixels"),
    ("link-out", "link-out/2.jpg", "symbolic link to a file outside SOURCE (not followed)"),
])
def test_bad_file_rejects_its_set_naming_file_and_cause(built, set_id, bad_file, expected):
    _, report, _ = built
    s = set_of(report, set_id)
    assert s["status"] == "rejected"
    assert bad_file in s["reason"] and expected in s["reason"]
    bad = file_of(report, bad_file)
    assert bad["status"] == "rejected" and expected in bad["reason"]
    good = file_of(report, f"{set_id}/10.jpg")
    assert good["status"] == "rejected" and f"set '{set_id}' was rejected" in good["reason"]


def test_one_image_set_is_rejected(built):
    _, report, _ = built
    s = set_of(report, "single")
    assert s["status"] == "rejected" and "at least 2 usable panels, found 1" in s["reason"]


def test_exact_duplicate_set_in_another_order_names_the_kept_one(built):
    out, report, _ = built
    dup = set_of(report, "good-a-copy")
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == "good-a"
    assert set_of(report, "good-a")["status"] == "kept"
    assert file_of(report, "good-a-copy/a.jpg")["status"] == "duplicate"
    assert not (out / "composites" / "good-a-copy.jpg").exists()


def test_junk_and_loose_files_are_ignored_with_reason(built):
    _, report, _ = built
    assert file_of(report, "__MACOSX/good-a/._1.jpg")["status"] == "ignored"
    assert file_of(report, "good-a/.DS_Store")["status"] == "ignored"
    loose = file_of(report, "loose.txt")
    assert loose["status"] == "ignored" and "not inside a set folder" in loose["reason"]


def test_composites_and_sidecars_follow_the_contract(built):
    out, report, _ = built
    kept = [s["set_id"] for s in report["sets"] if s["status"] == "kept"]
    assert {"good-a", "cmyk", "deep16", "palette", "rotated", "animated", "日本語セット", "natural-order"} <= set(kept)
    for set_id in kept:
        from iclora_data.records import file_stem

        meta = json.loads((out / "composites" / f"{file_stem(set_id)}.json").read_text(encoding="utf-8"))
        assert meta["set_id"] == set_id
        assert meta["width"] % 16 == 0 and meta["height"] % 16 == 0
        assert len(meta["panel_boxes"]) == meta["rows"] * meta["cols"] == len(meta["source_files"])
        for x0, y0, x1, y1 in meta["panel_boxes"]:
            assert (x1 - x0) % 16 == 0 and (y1 - y0) % 16 == 0
        with Image.open(out / "composites" / meta["image"]) as im:
            assert im.size == (meta["width"], meta["height"]) and im.mode == "RGB"


def test_unicode_set_name_keeps_its_id(built):
    out, report, _ = built
    assert set_of(report, "日本語セット")["status"] == "kept"
    assert (out / "composites" / "日本語セット.jpg").exists()


def test_natural_panel_order(built):
    out, report, _ = built
    assert set_of(report, "natural-order")["files"] == ["natural-order/1.jpg", "natural-order/2.jpg",
                                                        "natural-order/10.jpg"]


def test_exif_rotated_panel_comes_out_upright(built):
    out, _, _ = built
    panel = composite_panel(out, "rotated", 0)
    top, bottom = panel[: panel.shape[0] // 5].mean(axis=(0, 1)), panel[-panel.shape[0] // 5:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue at the bottom


def test_cmyk_becomes_rgb_with_its_colours(built, messy_source):
    out, report, _ = built
    assert set_of(report, "cmyk")["status"] == "kept"
    panel = composite_panel(out, "cmyk", 0)
    expected = np.asarray(picture(28).resize((panel.shape[1], panel.shape[0]))).astype(int)
    assert np.abs(panel.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 12


def test_16_bit_png_is_scaled_not_clipped(built):
    out, _, _ = built
    panel = composite_panel(out, "deep16", 0)
    # a left-to-right ramp over the full 16-bit range: dark on the left, bright on the right
    assert panel[:, :10].mean() < 40 and panel[:, -10:].mean() > 215
    assert 90 < panel.mean() < 165


def test_palette_transparency_goes_over_white(built):
    out, _, _ = built
    panel = composite_panel(out, "palette", 0)
    h = panel.shape[0]
    assert panel[: h // 3].mean() > 245  # transparent top: white, not black
    assert panel[-h // 3:, :, 1].mean() > 180 and panel[-h // 3:, :, 0].mean() < 40  # green bottom


def test_animated_gif_uses_first_frame(built):
    out, _, _ = built
    r, g, _b = composite_panel(out, "animated", 0).mean(axis=(0, 1))
    assert r > 180 and g < 60


def test_second_build_on_unchanged_source_decodes_nothing(messy_source, built):
    from iclora_data.build import run_build

    out, report, first = built
    assert first["decoded_images"] > 0
    before = {p.name: p.read_bytes() for p in (out / "composites").iterdir()}
    second = run_build(str(messy_source), str(out), {"until": "compose"}).as_dict()
    assert second["decoded_images"] == 0
    assert json.loads((out / "report.json").read_text()) == report
    assert {p.name: p.read_bytes() for p in (out / "composites").iterdir()} == before


def test_removed_set_leaves_out(tmp_path):
    from iclora_data.build import run_build

    src, out = tmp_path / "src", tmp_path / "out"
    image_set(src / "a", [50, 51])
    image_set(src / "b", [52, 53])
    run_build(str(src), str(out), {"until": "compose"}).as_dict()
    assert (out / "composites" / "b.jpg").exists()
    for p in (src / "b").iterdir():
        p.unlink()
    (src / "b").rmdir()
    result = run_build(str(src), str(out), {"until": "compose"}).as_dict()
    assert result["counts"]["sets"] == 1 and not (out / "composites" / "b.jpg").exists()
    assert sorted(p.name for p in (out / "composites").iterdir()) == ["a.jpg", "a.json"]


def test_preset_panel_count_mismatch_is_rejected_at_ingest(tmp_path):
    from iclora_data.build import run_build

    src = tmp_path / "src"
    image_set(src / "nine", list(range(60, 69)))
    image_set(src / "three", [70, 71, 72], size=(640, 320))
    result = run_build(str(src), str(tmp_path / "out"),
                       {"until": "compose", "compose": {"preset": "film-storyboard"}}).as_dict()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    nine = set_of(report, "nine")
    assert nine["status"] == "rejected"
    assert nine["reason"] == "expected 3 panels for preset film-storyboard, found 9"
    meta = json.loads((tmp_path / "out" / "composites" / "three.json").read_text())
    assert (meta["width"], meta["height"], meta["rows"], meta["cols"]) == (1024, 1536, 3, 1)
    assert result["counts"]["kept"] == 1


def test_set_json_gives_order_preset_and_hints(tmp_path):
    from iclora_data.build import run_build

    src = tmp_path / "src"
    image_set(src / "s", [80, 81], size=(600, 600))
    (src / "s" / "set.json").write_text(json.dumps({"preset": "couple-profile", "order": ["2.jpg", "1.jpg"],
                                                     "panels": ["the groom", "the bride"]}))
    (src / "s" / "caption.txt").write_text("A wedding portrait pair.\n")
    run_build(str(src), str(tmp_path / "out"), {"until": "compose"}).as_dict()
    meta = json.loads((tmp_path / "out" / "composites" / "s.json").read_text())
    assert meta["source_files"] == ["s/2.jpg", "s/1.jpg"]
    assert meta["preset"] == "couple-profile" and meta["panel_tags"] == ["[LEFT]", "[RIGHT]"]
    assert meta["panel_hints"] == ["the groom", "the bride"]
    assert meta["source_caption"] == "A wedding portrait pair."
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert file_of(report, "s/set.json")["status"] == "used"
    assert file_of(report, "s/caption.txt")["status"] == "used"


def test_manifest_rejects_escaping_and_missing_paths(tmp_path):
    from iclora_data.build import run_build

    base = tmp_path / "data"
    image_set(base / "imgs", [90, 91, 92, 93])
    save(picture(94), tmp_path / "secret.jpg")
    manifest = base / "sets.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"set_id": "ok", "images": ["imgs/1.jpg", "imgs/2.jpg"]},
        {"set_id": "escape", "images": ["imgs/3.jpg", "../secret.jpg"]},
        {"set_id": "missing", "images": ["imgs/4.jpg", "imgs/nope.jpg"]},
    ]) + "\n")
    run_build(str(manifest), str(tmp_path / "out"), {"until": "compose"}).as_dict()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set_of(report, "ok")["status"] == "kept"
    esc = set_of(report, "escape")
    assert esc["status"] == "rejected" and "../secret.jpg: path escapes the manifest's folder" in esc["reason"]
    assert file_of(report, "../secret.jpg")["status"] == "rejected"
    miss = set_of(report, "missing")
    assert miss["status"] == "rejected" and "imgs/nope.jpg: file not found" in miss["reason"]
    assert file_of(report, "sets.jsonl")["status"] == "used"


def test_csv_manifest(tmp_path):
    from iclora_data.build import run_build

    image_set(tmp_path / "imgs", [95, 96])
    (tmp_path / "sets.csv").write_text("set_id,images,preset\npair,imgs/1.jpg|imgs/2.jpg,\n")
    result = run_build(str(tmp_path / "sets.csv"), str(tmp_path / "out"), {"until": "compose"}).as_dict()
    assert result["counts"]["kept"] == 1
