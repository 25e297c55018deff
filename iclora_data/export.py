"""Trainer hand-offs: the image + ``.txt`` caption folder that LoRA trainers read, with configs.

- ``folder``: ``DEST/<set>.jpg`` + ``DEST/<set>.txt`` (also what SimpleTuner and diffusers'
  ``--instance_data_dir``-style scripts read).
- ``ai-toolkit``: ``DEST/dataset/`` as above, ``DEST/config/iclora.yaml`` (a ``run.py`` job with
  the IC-LoRA settings, after ai-toolkit's own FLUX LoRA example), ``DEST/train_ai_toolkit.sh``
  and ``DEST/README.md``.
- ``kohya``: ``DEST/dataset/``, ``DEST/dataset.toml`` (``--dataset_config``),
  ``DEST/sample_prompts.json``, ``DEST/train_kohya.sh`` (the ``flux_train_network.py`` command)
  and ``DEST/README.md``.

Every path in a config is relative to DEST (the scripts ``cd`` there first), so the folder can be
moved to the training machine as it is; ``root`` writes absolute paths under a given folder
instead. Composites are copied (a reflink where the file system offers copy-on-write), never
hard-linked: editing an exported image must not change the build. Captions are the rendered
training prompts, on one line: IC-LoRA prompts carry their panel tags and need no trigger word.

What the trainers do with an image's size, from their own code (sd-scripts
``library/train_util.py`` ``BucketManager`` and ``flux_train_network.py``; ai-toolkit
``toolkit/buckets.py``, ``toolkit/data_loader.py``, ``toolkit/config_modules.py``):

- kohya, with ``bucket_no_upscale``: an image whose area is at most ``resolution``'s keeps its
  size, and each side is cut down to a multiple of ``bucket_reso_steps`` (centre crop). FLUX
  needs that step to be a multiple of 32; sd-scripts' default is 64. Caching text-encoder
  outputs (the documented FLUX command) refuses caption dropout, caption shuffling, tag dropout
  and token warm-up, so the kohya export has none.
- ai-toolkit: a dataset entry is trained once per listed resolution; an image whose area is at
  most ``resolution**2`` keeps its size when both sides are multiples of the model's bucket
  step (32 for FLUX, which replaces the config's ``bucket_tolerance``), else it is scaled and
  cropped to that step.

Automatic layouts and presets are multiples of 64 (``layout.TRAINER_MULTIPLE``), so a build of
this version reaches both trainers whole; a composite that is not (an older build) is listed in
the export's README with the size the trainer cuts it to.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from iclora_data.publish import PublishError, dataset_name, load_finished_build
from iclora_data.records import CaptionRecord, CompositeRecord, composites_dir, file_stem

ExportFormat = Literal["ai-toolkit", "kohya", "folder"]
FORMATS: tuple[str, ...] = ("ai-toolkit", "kohya", "folder")

# The IC-LoRA recipe (README, "Training and sampling"): the same numbers iclora_train uses.
LORA_RANK = 16
BATCH_SIZE = 4
LEARNING_RATE = 1e-4
CAPTION_DROPOUT = 0.05
STEPS = 5000
SAVE_EVERY = 500
BASE_MODEL = "black-forest-labs/FLUX.1-dev"
SAMPLE_STEPS = 20
GUIDANCE = 3.5
SEED = 42
SAMPLES = 4

KOHYA_BUCKET_STEP = 64  # sd-scripts' default bucket_reso_steps
KOHYA_FLUX_MIN_STEP = 32  # flux_train_network refuses a bucket_reso_steps that 32 does not divide
AI_TOOLKIT_FLUX_STEP = 32  # ai-toolkit's bucket divisibility for FLUX (VAE 8 x patch 2 x 2)
MIN_BUCKET_RESO = 256

Size = tuple[int, int]
Row = tuple[CompositeRecord, CaptionRecord]


# --- files: copies with the user's umask ------------------------------------------------------

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _umask() -> int:
    """The process umask, read without changing it (Linux shows it in /proc), else by swapping."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def copy_file(src: Path, dst: Path, mode: int) -> None:
    """Copy ``src`` to ``dst`` atomically: a reflink where the file system shares blocks on write
    (btrfs, XFS), else a byte copy. Never a hard link, so ``dst`` is a file of its own."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=dst.suffix)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            except OSError:  # no copy-on-write here (or across file systems): copy the bytes
                shutil.copyfileobj(fin, fout, 1 << 20)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, mode: int) -> None:
    """Write ``text`` atomically with ``mode`` (temporary files are 0600 until chmod)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Writer:
    """Writes an export's files: plain files at 0666 and scripts at 0777, less the umask."""

    file_mode: int
    script_mode: int

    @classmethod
    def for_user(cls) -> Writer:
        mask = _umask()
        return cls(0o666 & ~mask, 0o777 & ~mask)

    def text(self, path: Path, text: str) -> None:
        write_text(path, text, self.file_mode)

    def script(self, path: Path, text: str) -> None:
        write_text(path, text, self.script_mode)

    def copy(self, src: Path, dst: Path) -> None:
        copy_file(src, dst, self.file_mode)


def one_line(caption: str) -> str:
    # kohya reads only the first line of a caption file
    return " ".join(caption.split())


def write_image_folder(folder: Path, out: Path, rows: Sequence[Row], writer: Writer) -> None:
    """``<stem>.jpg`` (a copy) + ``<stem>.txt`` per row; stale pairs of an earlier export go."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    for rec, cap in rows:
        stem = file_stem(rec.set_id)
        image = folder / f"{stem}{Path(rec.image).suffix}"
        writer.copy(composites_dir(out) / rec.image, image)
        writer.text(folder / f"{stem}.txt", one_line(cap.caption) + "\n")
        wanted |= {image.name, f"{stem}.txt"}
    for stale in folder.iterdir():
        if stale.is_file() and stale.suffix.lower() in (".jpg", ".jpeg", ".png", ".txt") and stale.name not in wanted:
            stale.unlink()


# --- sizes: what each trainer does with a composite ---------------------------------------------

def round_up(x: float, step: int) -> int:
    return math.ceil(x / step) * step


def cut_to_step(size: Size, step: int) -> Size:
    """The size a bucket of ``step`` keeps of an image that is not scaled."""
    return size[0] - size[0] % step, size[1] - size[1] % step


def covering_resolution(sizes: Iterable[Size], step: int) -> int:
    """The side of the smallest square (a multiple of ``step``) with at least the area of every
    size: trainers downscale an image larger in area than their resolution, and none smaller."""
    return round_up(math.sqrt(max(w * h for w, h in sizes)), step)


def kohya_step(sizes: Iterable[Size]) -> int:
    """sd-scripts' default 64 when every composite is a multiple of it, else 32 (the least FLUX
    allows) when that keeps every composite whole; else 64, and the README names the crops."""
    sizes = list(sizes)
    for step in (KOHYA_BUCKET_STEP, KOHYA_FLUX_MIN_STEP):
        if all(cut_to_step(s, step) == s for s in sizes):
            return step
    return KOHYA_BUCKET_STEP


@dataclass(frozen=True)
class Crop:
    image: str
    size: Size
    trained: Size


def crops(rows: Sequence[Row], step: int) -> list[Crop]:
    """Composites the trainer cuts because a side is not a multiple of its bucket step."""
    found = []
    for rec, _ in rows:
        size = (rec.width, rec.height)
        if cut_to_step(size, step) != size:
            found.append(Crop(f"{file_stem(rec.set_id)}{Path(rec.image).suffix}", size, cut_to_step(size, step)))
    return found


@dataclass(frozen=True)
class Sample:
    prompt: str
    width: int
    height: int


def samples(rows: Sequence[Row], count: int = SAMPLES) -> list[Sample]:
    """Sample prompts drawn at their own composite's size: one per distinct size first, so each
    layout in the dataset is sampled, then more in set order up to ``count``."""
    picked: list[Row] = []
    seen: set[Size] = set()
    for row in rows:
        if (row[0].width, row[0].height) not in seen and len(picked) < count:
            seen.add((row[0].width, row[0].height))
            picked.append(row)
    picked += [row for row in rows if row not in picked][:count - len(picked)]
    return [Sample(one_line(cap.caption), rec.width, rec.height) for rec, cap in picked]


def size_table(rows: Sequence[Row]) -> list[str]:
    counts: dict[Size, int] = {}
    for rec, _ in rows:
        counts[(rec.width, rec.height)] = counts.get((rec.width, rec.height), 0) + 1
    lines = ["| composite size | sets |", "|---|---:|"]
    lines += [f"| {w}x{h} | {n} |" for (w, h), n in sorted(counts.items())]
    return lines


def crop_notes(trainer: str, step: int, found: Sequence[Crop]) -> list[str]:
    if not found:
        return [f"Every composite is a multiple of {step} px on both sides and no larger than the "
                f"resolution, so {trainer} trains each one whole, at its own size: no panel is cropped "
                "or scaled."]
    lines = [f"**{trainer} crops {len(found)} composite(s)**: it trains images in buckets of {step} px "
             "and cuts the rest off centred, so panels at the edges lose pixels. Rebuild with this "
             "iclora version (automatic layouts are multiples of 64) to keep them whole.", "",
             "| image | composite | trained as |", "|---|---|---|"]
    lines += [f"| {c.image} | {c.size[0]}x{c.size[1]} | {c.trained[0]}x{c.trained[1]} |" for c in found]
    return lines


# --- paths ------------------------------------------------------------------------------------

def place(root: str | None, relative: str) -> str:
    """A path as a config writes it: relative to the export folder, or under ``root``."""
    return str(PurePosixPath(root, relative)) if root else relative


# --- ai-toolkit -------------------------------------------------------------------------------

def ai_toolkit_config(name: str, root: str | None, resolution: int, sample_list: Sequence[Sample]) -> dict[str, Any]:
    return {
        "job": "extension",
        "config": {
            "name": name,
            "process": [{
                "type": "sd_trainer",
                "training_folder": place(root, "output"),
                "device": "cuda:0",
                "network": {"type": "lora", "linear": LORA_RANK, "linear_alpha": LORA_RANK},
                "save": {"dtype": "float16", "save_every": SAVE_EVERY, "max_step_saves_to_keep": 4},
                "datasets": [{
                    "folder_path": place(root, "dataset"),
                    "caption_ext": "txt",
                    "caption_dropout_rate": CAPTION_DROPOUT,
                    "shuffle_tokens": False,  # panel order in the caption matters
                    "cache_latents_to_disk": True,
                    # one resolution: each listed one trains every image again at that size
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
                    "sample_every": SAVE_EVERY,
                    "width": sample_list[0].width,
                    "height": sample_list[0].height,
                    "samples": [{"prompt": s.prompt, "width": s.width, "height": s.height} for s in sample_list],
                    "neg": "",
                    "seed": SEED,
                    "walk_seed": True,
                    "guidance_scale": GUIDANCE,
                    "sample_steps": SAMPLE_STEPS,
                },
            }],
        },
        "meta": {"name": "[name]", "version": "1.0", "made_by": "iclora export"},
    }


AI_TOOLKIT_SCRIPT = """#!/usr/bin/env bash
# Train an IC-LoRA on this folder with ai-toolkit (FLUX.1-dev); written by iclora export.
# AI_TOOLKIT: your ai-toolkit checkout (with its requirements installed).
set -euo pipefail
: "${AI_TOOLKIT:?set AI_TOOLKIT to your ai-toolkit checkout}"
cd "$(dirname "$0")"  # the config's paths are relative to this folder
exec python "$AI_TOOLKIT/run.py" config/iclora.yaml
"""


def ai_toolkit_readme(name: str, rows: Sequence[Row], resolution: int, root: str | None) -> str:
    found = crops(rows, AI_TOOLKIT_FLUX_STEP)
    where = (f"Paths in the config are absolute, under `{root}`: copy this folder there."
             if root else "Paths in the config are relative to this folder: move it as one piece, "
             "and start training from inside it.")
    return "\n".join([
        f"# {name}: ai-toolkit export", "",
        f"{len(rows)} composites with `.txt` captions in `dataset/`, and `config/iclora.yaml`, a FLUX.1-dev "
        f"LoRA job (rank {LORA_RANK}, batch {BATCH_SIZE}, lr {LEARNING_RATE:g}, {STEPS} steps, caption dropout "
        f"{CAPTION_DROPOUT}). {where}", "",
        "```bash",
        "AI_TOOLKIT=/path/to/ai-toolkit bash train_ai_toolkit.sh",
        "# which runs, from this folder:",
        'python "$AI_TOOLKIT/run.py" config/iclora.yaml',
        "```", "",
        "## Sizes", "",
        *size_table(rows), "",
        f"`resolution: [{resolution}]` is the smallest square with the area of the largest composite, so "
        f"ai-toolkit scales none down; it buckets FLUX images in steps of {AI_TOOLKIT_FLUX_STEP} px.", "",
        *crop_notes("ai-toolkit", AI_TOOLKIT_FLUX_STEP, found), "",
        "Each sample prompt is drawn at the size of the composite it comes from.", "",
    ])


# --- kohya sd-scripts -------------------------------------------------------------------------

def toml_string(value: str) -> str:
    # a TOML basic string: JSON's escapes are valid TOML ones when non-ASCII is left as UTF-8
    return json.dumps(value, ensure_ascii=False)


def kohya_dataset_toml(image_dir: str, resolution: int, step: int, max_side: int) -> str:
    return "\n".join([
        "# sd-scripts dataset config (--dataset_config), written by iclora export",
        "[general]",
        "shuffle_caption = false  # panel order in the caption matters",
        'caption_extension = ".txt"',
        "keep_tokens = 0",
        "",
        "[[datasets]]",
        "# the smallest square with the largest composite's area: no composite is scaled down",
        f"resolution = [{resolution}, {resolution}]",
        f"batch_size = {BATCH_SIZE}",
        "enable_bucket = true",
        "bucket_no_upscale = true  # each composite is its own bucket, at its own size",
        f"bucket_reso_steps = {step}",
        f"min_bucket_reso = {MIN_BUCKET_RESO}",
        f"max_bucket_reso = {max(resolution, round_up(max_side, step))}",
        "",
        "  [[datasets.subsets]]",
        f"  image_dir = {toml_string(image_dir)}",
        "  num_repeats = 1",
        "  # no caption_dropout_rate: --cache_text_encoder_outputs refuses it",
        "",
    ])


# Model files the kohya script takes from the environment (sd-scripts wants local files).
KOHYA_MODELS = (("--pretrained_model_name_or_path", "FLUX_MODEL", "flux1-dev.safetensors"),
                ("--clip_l", "CLIP_L", "clip_l.safetensors"),
                ("--t5xxl", "T5XXL", "t5xxl_fp16.safetensors"),
                ("--ae", "AE", "ae.safetensors"))


def kohya_train_args(name: str, root: str | None) -> list[tuple[str, str | None]]:
    """``flux_train_network.py``'s arguments after the model files: (flag, value or None)."""
    return [
        ("--dataset_config", place(root, "dataset.toml")),
        ("--output_dir", place(root, "output")),
        ("--output_name", name),
        ("--save_model_as", "safetensors"),
        ("--network_module", "networks.lora_flux"),
        ("--network_dim", str(LORA_RANK)),
        ("--network_alpha", str(LORA_RANK)),
        ("--network_train_unet_only", None),
        ("--learning_rate", f"{LEARNING_RATE:g}"),
        ("--optimizer_type", "AdamW8bit"),
        ("--lr_scheduler", "constant"),
        ("--sdpa", None),
        ("--max_train_steps", str(STEPS)),
        ("--save_every_n_steps", str(SAVE_EVERY)),
        ("--mixed_precision", "bf16"),
        ("--gradient_checkpointing", None),
        ("--guidance_scale", "1.0"),
        ("--timestep_sampling", "flux_shift"),
        ("--model_prediction_type", "raw"),
        ("--cache_text_encoder_outputs", None),
        ("--cache_text_encoder_outputs_to_disk", None),
        ("--cache_latents", None),
        ("--cache_latents_to_disk", None),
        ("--sample_prompts", place(root, "sample_prompts.json")),
        ("--sample_every_n_steps", str(SAVE_EVERY)),
        ("--seed", str(SEED)),
    ]


def kohya_command(name: str, root: str | None) -> str:
    """The ``accelerate launch ... flux_train_network.py`` command, one argument per line."""
    lines = ['accelerate launch --num_cpu_threads_per_process 1 "$SD_SCRIPTS/flux_train_network.py"']
    lines += [f'{flag} "${var}"' for flag, var, _ in KOHYA_MODELS]
    lines += [flag if value is None else f"{flag} {shlex.quote(value)}" for flag, value in kohya_train_args(name, root)]
    return " \\\n  ".join(lines)


def kohya_script(name: str, root: str | None) -> str:
    checks = [f': "${{{var}:?set {var} to {example}}}"' for _, var, example in KOHYA_MODELS]
    return "\n".join([
        "#!/usr/bin/env bash",
        "# Train an IC-LoRA on this folder with kohya sd-scripts (FLUX.1); written by iclora export.",
        "# SD_SCRIPTS: your sd-scripts checkout; FLUX_MODEL, CLIP_L, T5XXL, AE: the model files.",
        "set -euo pipefail",
        ': "${SD_SCRIPTS:?set SD_SCRIPTS to your sd-scripts checkout}"',
        *checks,
        'cd "$(dirname "$0")"  # dataset.toml and the arguments are relative to this folder',
        "exec " + kohya_command(name, root),
        "",
    ])


def kohya_sample_prompts(sample_list: Sequence[Sample]) -> str:
    # the JSON form of --sample_prompts: no parsing of " --w" options out of the caption text
    return json.dumps([{"prompt": s.prompt, "width": s.width, "height": s.height, "sample_steps": SAMPLE_STEPS,
                        "guidance_scale": GUIDANCE, "seed": SEED} for s in sample_list],
                      indent=2, ensure_ascii=False) + "\n"


def kohya_readme(name: str, rows: Sequence[Row], resolution: int, step: int, root: str | None) -> str:
    found = crops(rows, step)
    where = (f"Paths in `dataset.toml` and the command are absolute, under `{root}`: copy this folder there."
             if root else "Paths in `dataset.toml` and the command are relative to this folder: move it as "
             "one piece, and start training from inside it.")
    return "\n".join([
        f"# {name}: kohya sd-scripts export", "",
        f"{len(rows)} composites with `.txt` captions in `dataset/`, `dataset.toml` for `--dataset_config`, "
        f"`sample_prompts.json` and `train_kohya.sh`, a FLUX.1-dev LoRA (rank {LORA_RANK}, batch {BATCH_SIZE}, "
        f"lr {LEARNING_RATE:g}, {STEPS} steps). {where}", "",
        "```bash",
        "SD_SCRIPTS=/path/to/sd-scripts FLUX_MODEL=/models/flux1-dev.safetensors CLIP_L=/models/clip_l.safetensors \\",
        "  T5XXL=/models/t5xxl_fp16.safetensors AE=/models/ae.safetensors bash train_kohya.sh",
        "```", "",
        "which runs, from this folder:", "",
        "```bash",
        kohya_command(name, root),
        "```", "",
        "The text-encoder outputs are cached (`--cache_text_encoder_outputs`, what fits FLUX in 24 GB), "
        "and sd-scripts refuses caption dropout, caption shuffling, tag dropout and token warm-up "
        "with that cache, so this dataset has none of them. To train with caption dropout, remove "
        "both `--cache_text_encoder_outputs` flags and add `caption_dropout_rate = "
        f"{CAPTION_DROPOUT}` to the subset in `dataset.toml`. On a 24 GB card add `--blocks_to_swap 18`.", "",
        "## Sizes", "",
        *size_table(rows), "",
        f"`resolution = [{resolution}, {resolution}]` is the smallest square with the area of the largest "
        f"composite, and `bucket_no_upscale` keeps each composite at its own size; buckets step "
        f"{step} px (`bucket_reso_steps`).", "",
        *crop_notes("kohya", step, found), "",
        "Each sample prompt is drawn at the size of the composite it comes from.", "",
    ])


# --- the export -------------------------------------------------------------------------------

def export_dataset(out: Path, fmt: ExportFormat, dest: Path | None = None, root: str | None = None) -> Path:
    """Write the trainer folder for ``fmt`` (default ``OUT/export/<fmt>``) and return it.

    Exports the kept sets that have an ok caption. Config paths are relative to the folder, or
    absolute under ``root`` (where the folder will be on the training machine). Raises
    PublishError for an unknown format, an OUT without a finished build, or no captioned set."""
    if fmt not in FORMATS:
        raise PublishError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if root is not None and not PurePosixPath(root).is_absolute():
        raise PublishError(f"--root must be an absolute path on the training machine, got {root!r}")
    out = Path(out)
    build = load_finished_build(out)
    rows = [(rec, cap) for rec in build.kept
            if (cap := build.captions.get(rec.set_id)) is not None and cap.status == "ok"]
    if not rows:
        raise PublishError(f"{out} has no kept set with a caption to export; trainers need captions, "
                           "so caption the build first")
    dest = Path(dest) if dest is not None else out / "export" / fmt
    writer = Writer.for_user()
    if fmt == "folder":
        write_image_folder(dest, out, rows, writer)
        return dest
    write_image_folder(dest / "dataset", out, rows, writer)
    name = file_stem(dataset_name(build))
    sizes = [(rec.width, rec.height) for rec, _ in rows]
    sample_list = samples(rows)
    if fmt == "ai-toolkit":
        import yaml

        resolution = covering_resolution(sizes, AI_TOOLKIT_FLUX_STEP)
        config = ai_toolkit_config(name, root, resolution, sample_list)
        writer.text(dest / "config" / "iclora.yaml",
                    "---\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
        writer.script(dest / "train_ai_toolkit.sh", AI_TOOLKIT_SCRIPT)
        writer.text(dest / "README.md", ai_toolkit_readme(name, rows, resolution, root))
    else:
        step = kohya_step(sizes)
        resolution = covering_resolution(sizes, step)
        max_side = max(max(s) for s in sizes)
        writer.text(dest / "dataset.toml", kohya_dataset_toml(place(root, "dataset"), resolution, step, max_side))
        writer.text(dest / "sample_prompts.json", kohya_sample_prompts(sample_list))
        writer.script(dest / "train_kohya.sh", kohya_script(name, root))
        writer.text(dest / "README.md", kohya_readme(name, rows, resolution, step, root))
    return dest

