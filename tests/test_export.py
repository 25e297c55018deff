"""Trainer exports: the folders and configs ai-toolkit, kohya sd-scripts and folder-reading
trainers take as they are.

The trainers' rules, in our words (from sd-scripts' ``BucketManager``/``flux_train_network.py``
and ai-toolkit's ``buckets.py``/``data_loader.py``; the export's module docstring says more):

- kohya FLUX with ``bucket_no_upscale``: an image keeps its size when its area is at most the
  ``resolution``'s and both sides are multiples of ``bucket_reso_steps``, which FLUX needs to be
  a multiple of 32; with ``--cache_text_encoder_outputs`` no subset may drop, shuffle or
  warm up captions.
- ai-toolkit FLUX: each listed resolution trains every image again; an image keeps its size when
  its area is at most ``resolution**2`` and both sides are multiples of 32.

The images' real sizes (read with PIL) are the oracle, not the export's own records.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from _publish_helpers import SetSpec, kept_captioned_ids, make_finished_out
from PIL import Image

from iclora_data.export import export_dataset
from iclora_data.layout import auto_grid, auto_layout
from iclora_data.presets import PRESETS
from iclora_data.publish import PublishError
from iclora_data.records import CompositeRecord, composites_dir, file_stem, load_captions, load_composites

FLUX_STEP = 32  # what both trainers need of a FLUX image side to leave it whole
KOHYA_DEFAULT_STEP = 64

# sets whose automatic layouts differ: 2x1, 2x2, a 3-panel stack and a 5-panel stack, and presets
MIXED = [SetSpec("story", 3, "kept", preset="film-storyboard"), SetSpec("fonts", 4, "kept", preset="font-design"),
         SetSpec("pair", 2, "kept"), SetSpec("quad", 4, "kept"), SetSpec("strip", 3, "kept"),
         SetSpec("five", 5, "kept"), SetSpec("nocap", 2, "kept", caption="failed")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finished_out(tmp_path_factory.mktemp("export"))


@pytest.fixture
def out(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "out"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finished_out(tmp_path_factory.mktemp("mixed"), sets=MIXED)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def moved(dest: Path, tmp_path: Path) -> Path:
    """The export folder moved somewhere else, as a user carries it to the training machine."""
    target = tmp_path / "elsewhere" / "training machine"
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(str(dest), str(target)))


def image_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as im:
            sizes[path.name] = im.size
    return sizes


def assert_image_caption_pairs(folder: Path, out: Path) -> None:
    """One copy of each kept, captioned composite with its caption; nothing else."""
    ids = kept_captioned_ids(out)
    captions = load_captions(out)
    sidecars = {r.set_id: r for r in load_composites(out)}
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{file_stem(i)}.jpg" for i in ids] + [f"{file_stem(i)}.txt" for i in ids])
    for set_id in ids:
        image = folder / f"{file_stem(set_id)}.jpg"
        composite = out / "composites" / sidecars[set_id].image
        assert image.read_bytes() == composite.read_bytes()
        assert not os.path.samefile(image, composite) and image.stat().st_nlink == 1  # a copy, not a link
        assert (folder / f"{file_stem(set_id)}.txt").read_text().strip() == captions[set_id].caption


def kohya_command_args(script: Path) -> list[str]:
    """The arguments ``train_kohya.sh`` passes to flux_train_network.py, split as bash splits them."""
    text = script.read_text()
    command = text[text.index("exec accelerate launch"):].replace("\\\n", " ")
    words = shlex.split(command)
    return words[words.index('$SD_SCRIPTS/flux_train_network.py') + 1:]


def flag_values(args: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for i, word in enumerate(args):
        if word.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            values[word] = None if nxt is None or nxt.startswith("--") else nxt
    return values


def all_tables(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield config.get("general", {})
    for dataset in config.get("datasets", []):
        yield dataset
        yield from dataset.get("subsets", [])


# --- kohya ---------------------------------------------------------------------------------------

def test_kohya_export_moved_keeps_every_composite_whole(mixed: Path, tmp_path: Path) -> None:
    dest = moved(export_dataset(mixed, "kohya", tmp_path / "kohya"), tmp_path)
    config = tomllib.loads((dest / "dataset.toml").read_text())
    (dataset,) = config["datasets"]
    (subset,) = dataset["subsets"]
    image_dir = dest / subset["image_dir"]  # relative to the export folder: still right after the move
    assert not Path(subset["image_dir"]).is_absolute() and image_dir.is_dir()
    assert_image_caption_pairs(image_dir, mixed)
    sizes = image_sizes(image_dir)
    assert len(set(sizes.values())) >= 5  # the fixture really has different layouts
    step = dataset["bucket_reso_steps"]
    assert step % FLUX_STEP == 0
    assert dataset["enable_bucket"] is True and dataset["bucket_no_upscale"] is True
    res_w, res_h = dataset["resolution"]
    assert dataset["min_bucket_reso"] <= min(res_w, res_h) and max(res_w, res_h) <= dataset["max_bucket_reso"]
    for name, (w, h) in sizes.items():
        assert w * h <= res_w * res_h, f"{name} {w}x{h} would be scaled down to fit {res_w}x{res_h}"
        assert w % step == 0 and h % step == 0, f"{name} {w}x{h} would be cropped to {step}-px buckets"
    readme = (dest / "README.md").read_text()
    assert "no panel is cropped" in readme and "crops" not in readme.split("## Sizes")[1]


def test_kohya_command_caches_text_encoder_outputs_without_caption_dropout(mixed: Path, tmp_path: Path) -> None:
    dest = export_dataset(mixed, "kohya", tmp_path / "kohya")
    args = flag_values(kohya_command_args(dest / "train_kohya.sh"))
    assert "--cache_text_encoder_outputs" in args and "--cache_latents" in args
    assert args["--network_module"] == "networks.lora_flux"
    assert args["--network_dim"] == args["--network_alpha"] == "16"
    # with cached text-encoder outputs sd-scripts refuses each of these anywhere in the dataset config
    config = tomllib.loads((dest / "dataset.toml").read_text())
    for table in all_tables(config):
        assert table.get("caption_dropout_rate", 0) == 0
        assert table.get("caption_tag_dropout_rate", 0) == 0
        assert table.get("caption_dropout_every_n_epochs", 0) == 0
        assert table.get("token_warmup_step", 0) == 0
        assert table.get("shuffle_caption", False) is False
    assert (dest / args["--dataset_config"]).is_file()  # type: ignore[operator]
    readme = (dest / "README.md").read_text()
    assert "--cache_text_encoder_outputs" in readme and "flux_train_network.py" in readme


def test_kohya_script_runs_from_its_folder_after_a_move(mixed: Path, tmp_path: Path) -> None:
    """Run train_kohya.sh itself with an ``accelerate`` on PATH that records where and with what it ran."""
    dest = moved(export_dataset(mixed, "kohya", tmp_path / "kohya"), tmp_path)
    assert os.access(dest / "train_kohya.sh", os.X_OK)
    bin_dir, record = tmp_path / "bin", tmp_path / "launched.json"
    bin_dir.mkdir()
    fake = bin_dir / "accelerate"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'cwd': os.getcwd(), 'argv': sys.argv[1:]}}, open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    models = {"FLUX_MODEL": "/m/flux.safetensors", "CLIP_L": "/m/clip l.safetensors",
              "T5XXL": "/m/t5.safetensors", "AE": "/m/ae.safetensors"}
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SD_SCRIPTS": "/opt/sd-scripts",
           **models}
    subprocess.run(["bash", str(dest / "train_kohya.sh")], check=True, env=env, cwd=tmp_path, timeout=60)
    launched = json.loads(record.read_text())
    assert Path(launched["cwd"]) == dest
    argv = launched["argv"]
    assert argv[:4] == ["launch", "--num_cpu_threads_per_process", "1", "/opt/sd-scripts/flux_train_network.py"]
    values = flag_values(argv[4:])
    assert values["--clip_l"] == "/m/clip l.safetensors"  # a path with a space arrives as one argument
    for flag in ("--dataset_config", "--sample_prompts"):
        assert (Path(launched["cwd"]) / str(values[flag])).is_file()
    without_model = {k: v for k, v in env.items() if k != "AE"}
    failed = subprocess.run(["bash", str(dest / "train_kohya.sh")], env=without_model, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode != 0 and "AE" in failed.stderr


def test_kohya_samples_are_drawn_at_their_composites_sizes(mixed: Path, tmp_path: Path) -> None:
    dest = export_dataset(mixed, "kohya", tmp_path / "kohya")
    prompts = json.loads((dest / "sample_prompts.json").read_text())
    by_caption = {p.with_suffix(".txt").read_text().strip(): size
                  for p, size in ((dest / "dataset" / n, s) for n, s in image_sizes(dest / "dataset").items())}
    assert 1 <= len(prompts) <= 4
    for sample in prompts:
        assert (sample["width"], sample["height"]) == by_caption[sample["prompt"]]
    # one sample per distinct size first: as many sizes as there are samples
    assert len({(s["width"], s["height"]) for s in prompts}) == len(prompts)


def test_kohya_names_the_crops_of_an_older_build(out: Path, tmp_path: Path) -> None:
    """A composite from a build before 64-px layouts (816x1280) is listed with the size kohya cuts it to."""
    rec = next(r for r in load_composites(out) if r.set_id == "beta")
    legacy = resize_composite(out, rec, (816, 1280))
    dest = export_dataset(out, "kohya", tmp_path / "kohya")
    dataset = tomllib.loads((dest / "dataset.toml").read_text())["datasets"][0]
    step = dataset["bucket_reso_steps"]
    assert step % FLUX_STEP == 0 and 816 % step != 0  # no FLUX step keeps 816 whole
    cut = (816 - 816 % step, 1280 - 1280 % step)
    readme = (dest / "README.md").read_text()
    assert f"| {legacy} | 816x1280 | {cut[0]}x{cut[1]} |" in readme
    ai = export_dataset(out, "ai-toolkit", tmp_path / "ai")
    assert f"| {legacy} | 816x1280 | 800x1280 |" in (ai / "README.md").read_text()


def test_kohya_uses_step_32_when_that_keeps_every_composite_whole(out: Path, tmp_path: Path) -> None:
    rec = next(r for r in load_composites(out) if r.set_id == "beta")
    resize_composite(out, rec, (832, 1312))  # multiples of 32, not of 64
    dest = export_dataset(out, "kohya", tmp_path / "kohya")
    dataset = tomllib.loads((dest / "dataset.toml").read_text())["datasets"][0]
    assert dataset["bucket_reso_steps"] == FLUX_STEP
    for w, h in image_sizes(dest / "dataset").values():
        assert w % FLUX_STEP == 0 and h % FLUX_STEP == 0
    assert "no panel is cropped" in (dest / "README.md").read_text()


def resize_composite(out: Path, rec: CompositeRecord, size: tuple[int, int]) -> str:
    """Make ``rec``'s composite ``size`` (image and sidecar), as an older build wrote it."""
    path = composites_dir(out) / rec.image
    with Image.open(path) as im:
        im.convert("RGB").resize(size).save(path, quality=90)
    rec.width, rec.height = size
    rec.save(composites_dir(out) / f"{file_stem(rec.set_id)}.json")
    return f"{file_stem(rec.set_id)}.jpg"


# --- ai-toolkit ----------------------------------------------------------------------------------

def test_ai_toolkit_export_moved_keeps_every_composite_whole(mixed: Path, tmp_path: Path) -> None:
    dest = moved(export_dataset(mixed, "ai-toolkit", tmp_path / "ai"), tmp_path)
    config = yaml.safe_load((dest / "config" / "iclora.yaml").read_text())
    assert config["job"] == "extension"
    process = config["config"]["process"][0]
    assert process["type"] == "sd_trainer" and process["model"]["is_flux"] is True
    assert process["network"] == {"type": "lora", "linear": 16, "linear_alpha": 16}
    assert process["train"]["batch_size"] == 4 and process["train"]["lr"] == pytest.approx(1e-4)
    (data,) = process["datasets"]
    assert data["caption_ext"] == "txt" and data["caption_dropout_rate"] == pytest.approx(0.05)
    assert data["shuffle_tokens"] is False
    folder = dest / data["folder_path"]
    assert not Path(data["folder_path"]).is_absolute() and not Path(process["training_folder"]).is_absolute()
    assert_image_caption_pairs(folder, mixed)
    # one resolution: each listed resolution trains every image again, at that size
    (resolution,) = data["resolution"]
    for name, (w, h) in image_sizes(folder).items():
        assert w * h <= resolution**2, f"{name} {w}x{h} would be scaled down for resolution {resolution}"
        assert w % FLUX_STEP == 0 and h % FLUX_STEP == 0, f"{name} {w}x{h} would be cropped"
    assert "no panel is cropped" in (dest / "README.md").read_text()


def test_ai_toolkit_samples_carry_their_own_sizes(mixed: Path, tmp_path: Path) -> None:
    dest = export_dataset(mixed, "ai-toolkit", tmp_path / "ai")
    sample = yaml.safe_load((dest / "config" / "iclora.yaml").read_text())["config"]["process"][0]["sample"]
    folder = dest / "dataset"
    by_caption = {(folder / n).with_suffix(".txt").read_text().strip(): s for n, s in image_sizes(folder).items()}
    assert 1 <= len(sample["samples"]) <= 4
    for item in sample["samples"]:
        assert (item["width"], item["height"]) == by_caption[item["prompt"]]
    assert len({(s["width"], s["height"]) for s in sample["samples"]}) == len(sample["samples"]) > 1


def test_ai_toolkit_script_runs_from_its_folder(mixed: Path, tmp_path: Path) -> None:
    dest = moved(export_dataset(mixed, "ai-toolkit", tmp_path / "ai"), tmp_path)
    toolkit, record = tmp_path / "ai-toolkit", tmp_path / "ran.json"
    toolkit.mkdir()
    (toolkit / "run.py").write_text(f"import json, os, sys\njson.dump({{'cwd': os.getcwd(), 'argv': sys.argv[1:]}}, "
                                    f"open({str(record)!r}, 'w'))\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "AI_TOOLKIT": str(toolkit)}
    subprocess.run(["bash", str(dest / "train_ai_toolkit.sh")], check=True, env=env, cwd=tmp_path, timeout=60)
    ran = json.loads(record.read_text())
    assert Path(ran["cwd"]) == dest and ran["argv"] == ["config/iclora.yaml"]
    config = yaml.safe_load((Path(ran["cwd"]) / ran["argv"][0]).read_text())
    assert (Path(ran["cwd"]) / config["config"]["process"][0]["datasets"][0]["folder_path"]).is_dir()


# --- both ----------------------------------------------------------------------------------------

def test_root_writes_absolute_paths_for_the_training_machine(out: Path, tmp_path: Path) -> None:
    root = '/data/my "sets" ü'
    kohya = export_dataset(out, "kohya", tmp_path / "kohya", root=root)
    subset = tomllib.loads((kohya / "dataset.toml").read_text())["datasets"][0]["subsets"][0]
    assert subset["image_dir"] == f"{root}/dataset"
    args = flag_values(kohya_command_args(kohya / "train_kohya.sh"))
    assert args["--dataset_config"] == f"{root}/dataset.toml" and args["--output_dir"] == f"{root}/output"
    ai = export_dataset(out, "ai-toolkit", tmp_path / "ai", root=root)
    process = yaml.safe_load((ai / "config" / "iclora.yaml").read_text())["config"]["process"][0]
    assert process["datasets"][0]["folder_path"] == f"{root}/dataset"
    with pytest.raises(PublishError, match="absolute"):
        export_dataset(out, "kohya", tmp_path / "k2", root="relative/dir")


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_exports_are_copies_with_the_users_umask(out: Path, tmp_path: Path, mask: int) -> None:
    with umask(mask):
        dest = export_dataset(out, "kohya", tmp_path / "kohya")
    image = dest / "dataset" / "alpha.jpg"
    composite = out / "composites" / "alpha.jpg"
    before = composite.read_bytes()
    with open(image, "r+b") as f:  # a user edits the exported image in place
        f.write(b"edited")
    assert composite.read_bytes() == before
    for path in [image, dest / "dataset" / "alpha.txt", dest / "dataset.toml", dest / "README.md"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE((dest / "train_kohya.sh").stat().st_mode) == 0o777 & ~mask


def test_reexport_over_an_old_hard_linked_export_leaves_the_composite_alone(out: Path) -> None:
    dest = out / "export" / "folder"
    dest.mkdir(parents=True)
    os.link(out / "composites" / "alpha.jpg", dest / "alpha.jpg")  # what earlier versions wrote
    export_dataset(out, "folder")
    assert (out / "composites" / "alpha.jpg").stat().st_nlink == 1
    assert not os.path.samefile(dest / "alpha.jpg", out / "composites" / "alpha.jpg")


def test_captions_are_one_line(out: Path) -> None:
    """kohya reads only the first line of a caption file."""
    path = out / "captions" / "alpha.json"
    record = json.loads(path.read_text())
    record["caption"] = "[MOVIE-SHOTS] two\nlines  [SCENE-1] a\n[SCENE-2] b [SCENE-3] c"
    path.write_text(json.dumps(record))
    dest = export_dataset(out, "folder")
    lines = (dest / "alpha.txt").read_text().splitlines()
    assert lines == ["[MOVIE-SHOTS] two lines [SCENE-1] a [SCENE-2] b [SCENE-3] c"]


def test_folder_export_pairs(out: Path) -> None:
    dest = export_dataset(out, "folder")
    assert dest == out / "export" / "folder"
    assert_image_caption_pairs(dest, out)


def test_reexport_drops_sets_that_lost_their_caption(out: Path) -> None:
    dest = export_dataset(out, "folder")
    assert (dest / "beta.txt").exists()
    (out / "captions" / "beta.json").unlink()
    export_dataset(out, "folder")
    assert not (dest / "beta.txt").exists() and not (dest / "beta.jpg").exists()
    assert (dest / "alpha.txt").exists()


def test_uncaptioned_build_and_unknown_format_are_clear_errors(tmp_path: Path, out: Path) -> None:
    with pytest.raises(PublishError, match="unknown export format"):
        export_dataset(out, "comfy")  # type: ignore[arg-type]
    bare = make_finished_out(tmp_path / "bare", captions=False)
    with pytest.raises(PublishError, match="caption the build first"):
        export_dataset(bare, "ai-toolkit")
    (out / "report.json").unlink()
    with pytest.raises(PublishError, match="report.json"):
        export_dataset(out, "folder")


# --- the layouts the exports rely on -------------------------------------------------------------

@pytest.mark.parametrize("panels", range(2, 13))
@pytest.mark.parametrize("aspect", [0.25, 0.5, 0.75, 1.0, 4 / 3, 1.5, 16 / 9, 4.0])
def test_automatic_layouts_are_whole_in_trainer_buckets(panels: int, aspect: float) -> None:
    layout = auto_layout(*auto_grid(panels, aspect), panel_aspect=aspect)
    assert layout.width % KOHYA_DEFAULT_STEP == 0 and layout.height % KOHYA_DEFAULT_STEP == 0
    pw, ph = layout.panel_size
    assert pw % 16 == 0 and ph % 16 == 0 and pw * layout.cols == layout.width and ph * layout.rows == layout.height
    assert 0.75 < layout.width * layout.height / 2**20 < 1.35  # still about one megapixel
    assert 0.7 < (pw / ph) / min(max(aspect, 0.25), 4.0) < 1.45  # panels keep about their aspect


def test_presets_are_whole_in_trainer_buckets() -> None:
    for preset in PRESETS.values():
        assert preset.width % KOHYA_DEFAULT_STEP == 0 and preset.height % KOHYA_DEFAULT_STEP == 0, preset.name
