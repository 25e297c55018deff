"""Trainer exports: the folders and configs ai-toolkit, kohya sd-scripts and folder-reading
trainers take without glue."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from _publish_helpers import SetSpec, kept_captioned_ids, make_finished_out

from iclora_data.export import export_dataset
from iclora_data.publish import PublishError
from iclora_data.records import file_stem, load_captions, load_composites


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finished_out(tmp_path_factory.mktemp("export"))


@pytest.fixture
def out(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "out"))


def assert_image_caption_pairs(folder: Path, out: Path) -> None:
    ids = kept_captioned_ids(out)
    captions = load_captions(out)
    sidecars = {r.set_id: r for r in load_composites(out)}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{file_stem(i)}.jpg" for i in ids] + [f"{file_stem(i)}.txt" for i in ids])
    for set_id in ids:
        image = folder / f"{file_stem(set_id)}.jpg"
        composite = out / "composites" / sidecars[set_id].image
        assert os.path.samefile(image, composite)  # linked, not copied a second time
        assert (folder / f"{file_stem(set_id)}.txt").read_text().strip() == captions[set_id].caption


def test_ai_toolkit_folder_and_config(out: Path) -> None:
    dest = export_dataset(out, "ai-toolkit")
    assert dest == out / "export" / "ai-toolkit"
    assert_image_caption_pairs(dest / "dataset", out)
    config = yaml.safe_load((dest / "config" / "iclora.yaml").read_text())
    assert config["job"] == "extension"
    process = config["config"]["process"][0]
    assert process["type"] == "sd_trainer"
    assert process["network"] == {"type": "lora", "linear": 16, "linear_alpha": 16}
    assert process["train"]["batch_size"] == 4 and process["train"]["lr"] == pytest.approx(1e-4)
    data = process["datasets"][0]
    assert data["caption_dropout_rate"] == pytest.approx(0.05) and data["caption_ext"] == "txt"
    assert Path(data["folder_path"]) == (dest / "dataset").resolve()
    assert process["model"]["is_flux"] is True
    # the fixture's kept sets include one film-storyboard set: its preset size is the sample size
    assert (process["sample"]["width"], process["sample"]["height"]) == (1024, 1536)
    captions = load_captions(out)
    assert process["sample"]["prompts"][0] == captions[kept_captioned_ids(out)[0]].caption


def test_kohya_dataset_toml(out: Path, tmp_path: Path) -> None:
    dest = export_dataset(out, "kohya", tmp_path / "kohya")
    assert_image_caption_pairs(dest / "dataset", out)
    config = tomllib.loads((dest / "dataset.toml").read_text())
    assert config["general"]["caption_extension"] == ".txt"
    assert config["general"]["shuffle_caption"] is False
    dataset = config["datasets"][0]
    assert dataset["batch_size"] == 4 and dataset["resolution"] == [1024, 1536]
    subset = dataset["subsets"][0]
    assert Path(subset["image_dir"]) == (dest / "dataset").resolve()
    assert subset["caption_dropout_rate"] == pytest.approx(0.05)


def test_folder_export_without_preset_uses_composite_size(tmp_path: Path) -> None:
    out = make_finished_out(tmp_path, sets=[SetSpec("a", 2, "kept"), SetSpec("b", 2, "kept")])
    dest = export_dataset(out, "folder")
    assert_image_caption_pairs(dest, out)
    kohya = tomllib.loads((export_dataset(out, "kohya") / "dataset.toml").read_text())
    rec = load_composites(out)[0]
    assert kohya["datasets"][0]["resolution"] == [rec.width, rec.height]


def test_reexport_drops_sets_that_lost_their_caption(out: Path) -> None:
    dest = export_dataset(out, "folder")
    assert (dest / "beta.txt").exists()
    (out / "captions" / "beta.json").unlink()
    export_dataset(out, "folder")
    assert not (dest / "beta.txt").exists() and not (dest / "beta.jpg").exists()
    assert (dest / "alpha.txt").exists()


def test_path_with_quotes_round_trips_in_toml(out: Path, tmp_path: Path) -> None:
    dest = export_dataset(out, "kohya", tmp_path / 'my "sets" ü')
    subset = tomllib.loads((dest / "dataset.toml").read_text())["datasets"][0]["subsets"][0]
    assert Path(subset["image_dir"]).is_dir()


def test_uncaptioned_build_and_unknown_format_are_clear_errors(tmp_path: Path, out: Path) -> None:
    with pytest.raises(PublishError, match="unknown export format"):
        export_dataset(out, "comfy")  # type: ignore[arg-type]
    bare = make_finished_out(tmp_path / "bare", captions=False)
    with pytest.raises(PublishError, match="caption the build first"):
        export_dataset(bare, "ai-toolkit")
    (out / "report.json").unlink()
    with pytest.raises(PublishError, match="report.json"):
        export_dataset(out, "folder")
