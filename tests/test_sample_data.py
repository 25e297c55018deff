"""The shipped demo input (sample_data/) is what its README promises, and the script regenerates it."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import imagehash
import numpy as np
import pytest
from natsort import natsorted
from PIL import Image, ImageOps

from iclora_data.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
KEPT = {"cafe-moodboard", "café-séries", "font-sheet", "launch-storyboard", "portrait-pair", "slide-deck"}
DUPLICATE, ORIGINAL = "cafe-moodboard-reupload", "cafe-moodboard"
REJECTED, TRUNCATED = "upload-broken", "upload-broken/3.jpg"
JUNK = {".DS_Store", "__MACOSX/cafe-moodboard/._1.jpg", "cafe-moodboard/.DS_Store", "portrait-pair/._2.jpg"}
LOOSE = {"README.md", "LICENSES.md"}
NEAR_DUPLICATE = 4  # pHash bits: the duplicate set's panels must be this close to their originals
DISTINCT = 16  # ... and every other pair of panels this far apart, well clear of any dedup threshold


def load_script():
    script = ROOT / "scripts" / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("make_sample_data", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel(path: Path, root: Path = SAMPLE) -> str:
    return path.relative_to(root).as_posix()


def is_junk(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return path.startswith("__MACOSX/") or name.startswith("._") or name == ".DS_Store"


def panels(set_id: str) -> list[Path]:
    return natsorted((p for p in (SAMPLE / set_id).iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and not is_junk(rel(p))), key=lambda p: p.name)


def as_rgb(path: Path) -> Image.Image:
    """Decode as the pipeline must: EXIF orientation applied, alpha over white, RGB."""
    with Image.open(path) as file:
        image: Image.Image = ImageOps.exif_transpose(file)
        if image.mode in ("P", "RGBA", "LA"):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        return image.convert("RGB")


@pytest.fixture(scope="module")
def hashes() -> dict[str, imagehash.ImageHash]:
    return {rel(p): imagehash.phash(as_rgb(p))
            for set_id in KEPT | {DUPLICATE} for p in panels(set_id)}


def test_sets_and_files_are_the_ones_the_readme_lists():
    sets = {p.name for p in SAMPLE.iterdir() if p.is_dir() and p.name != "__MACOSX"}
    assert sets == KEPT | {DUPLICATE, REJECTED}
    files = {rel(p) for p in SAMPLE.rglob("*") if p.is_file()}
    assert files >= JUNK | LOOSE
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    for set_id in sets:
        assert f"`{set_id}/`" in readme, f"README does not describe {set_id}"
    licences = (SAMPLE / "LICENSES.md").read_text(encoding="utf-8")
    drawn = ("font-sheet/", "café-séries/", "slide-deck/")  # made with Pillow, no third-party source
    for path in files - JUNK - LOOSE:
        if path.endswith(".jpg") and not path.startswith(drawn):
            assert f"`{path}`" in licences, f"{path} is a photograph without a licence line"


def test_every_usable_panel_decodes_within_the_default_limits():
    for set_id in KEPT | {DUPLICATE, REJECTED}:
        for path in panels(set_id):
            if rel(path) == TRUNCATED:
                continue
            image = as_rgb(path)
            assert min(image.size) >= 256, f"{rel(path)} is {image.size}, under the 256 px minimum"
            assert image.width * image.height <= 1_100_000, f"{rel(path)} is over about one megapixel"


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 5_000_000


def test_truncated_jpeg_opens_but_cannot_decode():
    with Image.open(SAMPLE / TRUNCATED) as im:
        assert im.format == "JPEG" and min(im.size) >= 256  # the header is fine: caught only at decode
        with pytest.raises(OSError, match="truncated"):
            im.load()
    assert len(panels(REJECTED)) == 3  # the other panels are good: the bad file alone rejects the set


def test_set_json_presets_fit_their_panel_counts():
    presets = {}
    for meta in SAMPLE.glob("*/set.json"):
        data = json.loads(meta.read_text(encoding="utf-8"))
        set_id = meta.parent.name
        preset = get_preset(data["preset"])
        assert len(panels(set_id)) == preset.panels, set_id
        assert data["task"].strip()
        if "panels" in data:
            assert len(data["panels"]) == preset.panels and all(h.strip() for h in data["panels"])
        presets[set_id] = data["preset"]
    assert presets == {"launch-storyboard": "film-storyboard", "font-sheet": "font-design",
                       "portrait-pair": "couple-profile", "slide-deck": "ppt-templates"}
    assert "panels" in json.loads((SAMPLE / "slide-deck/set.json").read_text(encoding="utf-8"))
    assert (SAMPLE / "slide-deck/caption.txt").read_text(encoding="utf-8").strip()


def test_layout_cases_the_readme_promises():
    # natural sort: 10.jpg is the fourth panel, not the second as a plain sort would have it
    names = [p.name for p in panels(ORIGINAL)]
    assert names == ["1.jpg", "2.jpg", "3.jpg", "10.jpg"] and sorted(names) != names
    assert not (SAMPLE / ORIGINAL / "set.json").exists()  # auto layout from the count
    assert not (SAMPLE / "café-séries" / "set.json").exists()
    assert all(not p.name.isascii() for p in panels("café-séries"))
    # font-sheet exercises every mode the pipeline must turn into RGB
    modes = []
    for p in panels("font-sheet"):
        with Image.open(p) as im:
            modes.append(im.mode)
    assert modes == ["P", "RGBA", "RGB", "L"]


def test_sideways_panel_comes_upright_only_through_exif():
    import skimage.data

    upright = Image.fromarray(skimage.data.camera()).crop((64, 0, 448, 512)).convert("RGB")
    path = SAMPLE / "portrait-pair" / "2.jpg"
    with Image.open(path) as raw:
        assert raw.getexif().get(0x0112) == 6
        raw_rgb = raw.convert("RGB")
    fixed = as_rgb(path)
    assert fixed.size == upright.size != raw_rgb.size
    assert imagehash.phash(fixed) - imagehash.phash(upright) <= NEAR_DUPLICATE
    assert imagehash.phash(raw_rgb.resize(upright.size)) - imagehash.phash(upright) > DISTINCT


def test_duplicate_set_matches_its_original_one_to_one(hashes):
    assert ORIGINAL < DUPLICATE  # the original's id sorts first, so it is the one kept
    original, copy = panels(ORIGINAL), panels(DUPLICATE)
    assert len(original) == len(copy)
    matches = {}
    for c in copy:
        close = [o for o in original if hashes[rel(o)] - hashes[rel(c)] <= NEAR_DUPLICATE]
        assert len(close) == 1, f"{rel(c)} matches {close}"
        matches[c.name] = close[0].name
        assert c.read_bytes() != close[0].read_bytes()
        assert as_rgb(c).size != as_rgb(close[0]).size  # resized, not only re-encoded
    assert sorted(matches.values()) == sorted(p.name for p in original)  # one to one
    assert list(matches.values()) != [p.name for p in original]  # in another order


def test_no_other_panels_are_near_duplicates(hashes):
    pair_of = {f"{DUPLICATE}/{c}": f"{ORIGINAL}/{o}" for c, o in load_script().REUPLOAD.items()}
    for a, b in itertools.combinations(sorted(hashes), 2):
        if pair_of.get(a) == b or pair_of.get(b) == a:
            continue
        assert hashes[a] - hashes[b] >= DISTINCT, f"{a} and {b} are too alike"


def test_script_regenerates_the_shipped_files(tmp_path):
    written = load_script().generate(tmp_path)
    shipped = {rel(p) for p in SAMPLE.rglob("*") if p.is_file()} - LOOSE
    assert {rel(p, tmp_path) for p in written} == shipped
    for name in sorted(shipped):
        new, old = (tmp_path / name).read_bytes(), (SAMPLE / name).read_bytes()
        if new == old:
            continue
        # another libjpeg or zlib may encode differently; the image must still be the same
        assert name.endswith((".jpg", ".png")) and name != TRUNCATED, f"{name} differs"
        a = np.asarray(as_rgb(tmp_path / name), dtype=np.int16)
        b = np.asarray(as_rgb(SAMPLE / name), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).mean() < 1.0, f"{name} differs"


def test_ingest_finds_the_sets_and_ignores_the_junk():
    from iclora_data.ingest import ingest

    result = ingest(SAMPLE)
    sets = {s.set_id: s for s in result.sets}
    assert set(sets) == KEPT | {DUPLICATE, REJECTED}
    assert [f.rsplit("/", 1)[1] for f in sets[ORIGINAL].files] == ["1.jpg", "2.jpg", "3.jpg", "10.jpg"]
    assert sets["slide-deck"].caption and sets["slide-deck"].panel_hints
    assert len(sets["slide-deck"].panel_hints or []) == 4
    assert sets["launch-storyboard"].preset == "film-storyboard"
    ignored = {f.path for f in result.files if f.status == "ignored"}
    assert ignored == JUNK | LOOSE


@pytest.mark.slow
def test_build_until_compose_keeps_six_and_names_the_duplicate_and_the_bad_file(tmp_path):
    """What README.md promises for ``iclora build sample_data --until compose``."""
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("iclora") or str(Path(sys.executable).with_name("iclora"))
    out = tmp_path / "out"
    proc = subprocess.run([exe, "build", str(SAMPLE), "--out", str(out), "--until", "compose"],
                          capture_output=True, text=True, env={**os.environ, "DO_NOT_TRACK": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    n_files = sum(1 for p in SAMPLE.rglob("*") if p.is_file())
    assert report["counts"] == {"files": n_files, "sets": 8, "kept": 6, "duplicate": 1, "rejected": 1}
    sets = {s["set_id"]: s for s in report["sets"]}
    assert {k for k, s in sets.items() if s["status"] == "kept"} == KEPT
    assert sets[DUPLICATE]["duplicate_of"] == ORIGINAL
    assert "3.jpg" in sets[REJECTED]["reason"] and "truncated" in sets[REJECTED]["reason"]
    files = {f["path"]: f for f in report["files"]}
    assert files[TRUNCATED]["status"] == "rejected"
    assert {p for p, f in files.items() if f["status"] == "ignored"} == JUNK | LOOSE
    from iclora_data.records import file_stem

    for set_id in KEPT:
        sidecar = json.loads((out / "composites" / f"{file_stem(set_id)}.json").read_text(encoding="utf-8"))
        with Image.open(out / "composites" / f"{file_stem(set_id)}.jpg") as composite:
            assert composite.size == (sidecar["width"], sidecar["height"])
    storyboard = json.loads((out / "composites" / "launch-storyboard.json").read_text(encoding="utf-8"))
    assert (storyboard["rows"], storyboard["cols"], storyboard["width"], storyboard["height"]) == (3, 1, 1024, 1536)


def test_benchmark_photo_sets_are_deterministic_and_all_distinct(tmp_path):
    """benchmarks/_photos.py: same seed, same bytes; no two panels near-duplicates; EXIF upright."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _photos import PhotoSpec, make_photo_sets
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    spec = PhotoSpec(sets=4, panels=(3, 4), megapixels=0.3, seed=7)
    first = make_photo_sets(tmp_path / "a", spec)
    again = make_photo_sets(tmp_path / "b", spec)
    files = [p for folder in first for p in natsorted(folder.iterdir(), key=lambda p: p.name)]
    assert [len(list(f.iterdir())) for f in first] == [3, 4, 3, 4]
    for path in files:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    assert [p.name for p in again] == [p.name for p in first]
    digests = [imagehash.phash(as_rgb(p)) for p in files]
    for a, b in itertools.combinations(range(len(files)), 2):
        assert digests[a] - digests[b] > 8, f"{files[a]} and {files[b]} are near-duplicates"
    def orientation(path: Path) -> int | None:
        with Image.open(path) as im:
            return im.getexif().get(0x0112)

    sideways = [p for p in files if orientation(p) == 6]
    assert sideways  # this seed stores some panels sideways, as phones do
    for folder in first:  # panels of a set share one orientation once EXIF is applied
        shapes = {as_rgb(p).width > as_rgb(p).height for p in folder.iterdir()}
        assert len(shapes) == 1
