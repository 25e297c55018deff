"""The README's main job, as a new user runs it: `iclora build sample_data --model tiny-random`,
then the hand-offs: the dataset loads, the captions have the preset's structure, the export is
readable, and a tiny FLUX LoRA trains on it and samples split panels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def iclora(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "iclora_data.cli", *args], capture_output=True, text=True,
                       timeout=900, env=os.environ.copy())
    assert r.returncode == 0, f"iclora {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    iclora("build", str(SAMPLE), "--out", str(out), "--model", "tiny-random")
    return out


def test_every_sample_file_is_in_the_ledger(demo):
    report = json.loads((demo / "report.json").read_text(encoding="utf-8"))
    on_disk = {(Path(d) / f).relative_to(SAMPLE).as_posix() for d, _, fs in os.walk(SAMPLE) for f in fs}
    assert {f["path"] for f in report["files"]} == on_disk
    statuses = {s["status"] for s in report["sets"]}
    assert statuses == {"kept", "duplicate", "rejected"}  # the demo shows the ledger at work


def test_dataset_loads_with_captions_structured_by_preset(demo):
    from datasets import load_dataset

    from iclora_data.layout import preset_layout
    from iclora_data.presets import default_panel_tags, get_preset
    from iclora_data.records import file_stem

    report = json.loads((demo / "report.json").read_text(encoding="utf-8"))
    ds = load_dataset(str(demo / "dataset"), split="train")
    kept = sorted(s["set_id"] for s in report["sets"] if s["status"] == "kept")
    assert sorted(ds["set_id"]) == kept
    for row in ds:
        meta = json.loads((demo / "composites" / f"{file_stem(row['set_id'])}.json").read_text(encoding="utf-8"))
        layout = preset_layout(get_preset(meta["preset"])) if meta["preset"] else None
        tags = layout.panel_tags if layout else default_panel_tags(row["rows"] * row["cols"])
        assert len(row["panel_captions"]) == row["rows"] * row["cols"] and all(row["panel_captions"])
        assert row["summary"] and row["captioner"].startswith("transformers:tiny-random")
        positions = [row["caption"].index(tag) for tag in tags]
        assert positions == sorted(positions), row["caption"]
        if layout and layout.prefix:
            assert row["caption"].startswith(layout.prefix)
        assert row["image"].size == (row["width"], row["height"])


def test_second_build_decodes_and_captions_nothing(demo):
    from iclora_data.store import RunStore

    def captions() -> dict[Path, tuple[int, bytes]]:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (demo / "captions").glob("*.json")}

    before = captions()
    assert before  # the demo's kept sets are captioned
    iclora("build", str(SAMPLE), "--out", str(demo), "--model", "tiny-random")
    build = json.loads((demo / "build.json").read_text())
    assert build["decoded_images"] == 0
    # the same files, not rewritten (same modification times) and with the same bytes: nothing was captioned
    assert captions() == before
    assert RunStore(demo).root.exists()


def test_ai_toolkit_export_pairs_each_image_with_its_caption(demo):
    iclora("export", str(demo), "--format", "ai-toolkit")
    images = sorted((demo / "export" / "ai-toolkit").rglob("*.jpg"))
    assert images
    for img in images:
        assert img.with_suffix(".txt").read_text(encoding="utf-8").strip()


def test_tiny_flux_trains_on_the_build_and_samples_split_panels(demo, tmp_path):
    lora = tmp_path / "lora"
    iclora("train", str(demo / "dataset"), "--out", str(lora), "--base", "tiny-random", "--steps", "2",
           "--batch-size", "1", "--scale", "0.0625", "--no-progress")
    assert (lora / "pytorch_lora_weights.safetensors").exists()
    samples = tmp_path / "samples"
    iclora("sample", str(lora), "--preset", "film-storyboard", "--prompt", "[MOVIE-SHOTS] a launch",
           "--steps", "2", "--scale", "0.0625", "--out", str(samples))
    panels = sorted(samples.rglob("*panel*.png")) or sorted(samples.rglob("*panel*"))
    assert len([p for p in panels if p.is_file()]) == 3
    with Image.open([p for p in panels if p.is_file()][0]) as im:
        assert im.size == (64, 32)  # film-storyboard panel 1024x512 at 1/16 scale
