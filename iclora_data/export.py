"""Trainer hand-offs: the image + ``.txt`` caption folder that LoRA trainers read, with configs.

- ``folder``: ``DEST/<set>.jpg`` + ``DEST/<set>.txt`` (also what SimpleTuner and diffusers'
  ``--instance_data_dir``-style scripts read).
- ``ai-toolkit``: ``DEST/dataset/`` as above and ``DEST/config/iclora.yaml``, a ready
  ``run.py`` job with the IC-LoRA settings (rank 16, batch 4, lr 1e-4, caption dropout 0.05,
  samples at the preset's size), written after ai-toolkit's own FLUX LoRA example config.
- ``kohya``: ``DEST/dataset/`` and ``DEST/dataset.toml`` for sd-scripts' ``--dataset_config``.

Composites are hard-linked from ``OUT/composites/`` (copied only across file systems), so an
export costs no second copy of the images. Captions are the rendered training prompts as they
are: IC-LoRA prompts carry their panel tags and need no trigger word.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from iclora_data.presets import PRESETS
from iclora_data.publish import PublishError, dataset_name, load_finished_build
from iclora_data.records import CaptionRecord, CompositeRecord, composites_dir, file_stem
from iclora_data.store import atomic_write_text, link_or_copy

ExportFormat = Literal["ai-toolkit", "kohya", "folder"]
FORMATS: tuple[str, ...] = ("ai-toolkit", "kohya", "folder")

# The IC-LoRA recipe (DESIGN.md, Training): the same numbers iclora_train uses.
LORA_RANK = 16
BATCH_SIZE = 4
LEARNING_RATE = 1e-4
CAPTION_DROPOUT = 0.05
STEPS = 5000
BASE_MODEL = "black-forest-labs/FLUX.1-dev"
SAMPLE_STEPS = 20
GUIDANCE = 3.5


def sample_size(build: dict[str, Any], records: list[CompositeRecord]) -> tuple[int, int]:
    """The preset's size (the sets' own, else the build's), else the most common composite size."""
    presets = Counter(r.preset for r in records if r.preset)
    compose = build.get("config", {}).get("compose") or {}
    name = presets.most_common(1)[0][0] if presets else compose.get("preset")
    preset = PRESETS.get(str(name or ""))
    if preset:
        return preset.width, preset.height
    sizes = Counter((r.width, r.height) for r in records)
    return min(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def write_image_folder(folder: Path, out: Path, rows: list[tuple[CompositeRecord, CaptionRecord]]) -> None:
    """``<stem>.jpg`` (hard link) + ``<stem>.txt`` per row; stale pairs of an earlier export go."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    for rec, cap in rows:
        stem = file_stem(rec.set_id)
        image = folder / f"{stem}{Path(rec.image).suffix}"
        link_or_copy(composites_dir(out) / rec.image, image)
        atomic_write_text(folder / f"{stem}.txt", cap.caption.strip() + "\n")
        wanted |= {image.name, f"{stem}.txt"}
    for stale in folder.iterdir():
        if stale.is_file() and stale.suffix.lower() in (".jpg", ".jpeg", ".png", ".txt") and stale.name not in wanted:
            stale.unlink()


def ai_toolkit_config(name: str, dataset: Path, training: Path, size: tuple[int, int],
                      prompts: list[str]) -> dict[str, Any]:
    width, height = size
    # ai-toolkit buckets each image to about resolution^2 pixels, keeping its aspect:
    # the side of a square of the composite's area, in its 64-pixel bucket steps
    resolution = max(256, int(math.sqrt(width * height)) // 64 * 64)
    return {
        "job": "extension",
        "config": {
            "name": name,
            "process": [{
                "type": "sd_trainer",
                "training_folder": str(training),
                "device": "cuda:0",
                "network": {"type": "lora", "linear": LORA_RANK, "linear_alpha": LORA_RANK},
                "save": {"dtype": "float16", "save_every": 500, "max_step_saves_to_keep": 4},
                "datasets": [{
                    "folder_path": str(dataset),
                    "caption_ext": "txt",
                    "caption_dropout_rate": CAPTION_DROPOUT,
                    "shuffle_tokens": False,  # panel order in the caption matters
                    "cache_latents_to_disk": True,
                    "resolution": [resolution],
                }],
                "train": {
                    "batch_size": BATCH_SIZE,
                    "steps": STEPS,
                    "gradient_accumulation_steps": 1,
                    "train_unet": True,
                    "train_text_encoder": False,
                    "gradient_checkpointing": True,
                    "noise_scheduler": "flowmatch",
                    "optimizer": "adamw8bit",
                    "lr": LEARNING_RATE,
                    "dtype": "bf16",
                },
                "model": {"name_or_path": BASE_MODEL, "is_flux": True, "quantize": True},
                "sample": {
                    "sampler": "flowmatch",
                    "sample_every": 500,
                    "width": width,
                    "height": height,
                    "prompts": prompts,
                    "neg": "",
                    "seed": 42,
                    "walk_seed": True,
                    "guidance_scale": GUIDANCE,
                    "sample_steps": SAMPLE_STEPS,
                },
            }],
        },
        "meta": {"name": "[name]", "version": "1.0", "made_by": "iclora export"},
    }


def toml_string(value: str) -> str:
    # a TOML basic string: JSON's escapes are valid TOML ones when non-ASCII is left as UTF-8
    return json.dumps(value, ensure_ascii=False)


def kohya_dataset_toml(dataset: Path, size: tuple[int, int]) -> str:
    width, height = size
    return "\n".join([
        "# sd-scripts dataset config (--dataset_config), written by iclora export",
        "[general]",
        "shuffle_caption = false  # panel order in the caption matters",
        'caption_extension = ".txt"',
        "keep_tokens = 0",
        "",
        "[[datasets]]",
        f"resolution = [{width}, {height}]",
        f"batch_size = {BATCH_SIZE}",
        "enable_bucket = true",
        "bucket_no_upscale = true",
        "min_bucket_reso = 256",
        f"max_bucket_reso = {max(width, height)}",
        "",
        "  [[datasets.subsets]]",
        f"  image_dir = {toml_string(str(dataset))}",
        "  num_repeats = 1",
        f"  caption_dropout_rate = {CAPTION_DROPOUT}",
        "",
    ])


def export_dataset(out: Path, fmt: ExportFormat, dest: Path | None = None) -> Path:
    """Write the trainer folder for ``fmt`` (default ``OUT/export/<fmt>``) and return it.

    Exports the kept sets that have an ok caption. Raises PublishError for an unknown format,
    an OUT without a finished build, or a build with no captioned set."""
    if fmt not in FORMATS:
        raise PublishError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    build = load_finished_build(out)
    rows = [(rec, cap) for rec in build.kept
            if (cap := build.captions.get(rec.set_id)) is not None and cap.status == "ok"]
    if not rows:
        raise PublishError(f"{out} has no kept set with a caption to export; trainers need captions, "
                           "so caption the build first")
    dest = Path(dest) if dest is not None else out / "export" / fmt
    size = sample_size(build.build, [rec for rec, _ in rows])
    if fmt == "folder":
        write_image_folder(dest, out, rows)
        return dest
    dataset = dest / "dataset"
    write_image_folder(dataset, out, rows)
    if fmt == "ai-toolkit":
        import yaml

        name = dataset_name(build)
        prompts = [cap.caption for _, cap in rows[:4]]
        config = ai_toolkit_config(file_stem(name), dataset.resolve(), (dest / "output").resolve(), size, prompts)
        atomic_write_text(dest / "config" / "iclora.yaml",
                          "---\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
    else:
        atomic_write_text(dest / "dataset.toml", kohya_dataset_toml(dataset.resolve(), size))
    return dest
