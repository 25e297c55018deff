"""Sampling image sets with a trained IC-LoRA: composite at the preset's size, cut into panels.

Reference-based generation places known panels in their slots and inpaints the rest (FLUX
inpaint pipeline, SDEdit-style ``strength``; a FLUX Fill base uses its Fill pipeline). The
known panels are pasted back over the decoded result, so they come back pixel for pixel.

Without ``--preset`` a set takes the grid and size the LoRA was trained at (its
``training_config.json``), whatever layout its dataset had. On a 24 GB GPU the pipeline can be
offloaded to the CPU model by model or layer by layer, or its transformer stored in fp8.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from iclora_data.layout import Layout, fit_panel, preset_layout, round16
from iclora_data.presets import UnknownPresetError, get_preset
from iclora_data.store import atomic_path, atomic_write_json
from iclora_train.base import is_fill_transformer, resolve_base
from iclora_train.errors import SampleError
from iclora_train.trainer import LORA_WEIGHTS, TRAINING_CONFIG

MAX_REFERENCE_PIXELS = 100_000_000  # same limit as ingest: checked from the header before decoding
TEXT_GUIDANCE = 3.5  # FLUX.1-dev's distilled guidance
FILL_GUIDANCE = 30.0  # FLUX.1-Fill-dev's model card samples at 30
OFFLOADS = ("auto", "none", "model", "sequential")


@dataclass
class SampleOutput:
    folder: Path
    composite: Path
    panels: list[Path]
    settings: Path
    settings_data: dict[str, Any] = field(default_factory=dict)


def read_prompts(path: Path) -> tuple[list[str], list[int]]:
    """Prompts of a file, one per line. Returns ``(prompts, line numbers of skipped empty lines)``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SampleError(f"prompt file {path} does not exist") from None
    except UnicodeDecodeError:
        raise SampleError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [ln.strip() for ln in lines if ln.strip()]
    skipped = [i + 1 for i, ln in enumerate(lines) if not ln.strip()]
    if not prompts:
        raise SampleError(f"prompt file {path} has no prompts (only empty lines)")
    return prompts, skipped


def parse_reference(spec: str, panels: int) -> tuple[int, Path]:
    """``"2=photo.jpg"`` -> ``(2, Path("photo.jpg"))``; panels count from 1 in reading order."""
    index, sep, file = spec.partition("=")
    if not sep or not index.strip().isdigit() or not file:
        raise SampleError(f"--reference must be PANEL=IMAGE such as 1=photo.jpg, got {spec!r}")
    number = int(index)
    if not 1 <= number <= panels:
        raise SampleError(f"--reference {spec}: panel {number} does not exist; this layout has panels 1-{panels}")
    path = Path(file).expanduser()
    if not path.is_file():
        raise SampleError(f"--reference {spec}: image {file} does not exist")
    return number, path


def _scaled(layout: Layout, scale: float) -> Layout:
    if not 0 < scale <= 1:
        raise SampleError(f"--scale must be in (0, 1], got {scale}")
    if scale == 1:
        return layout
    pw, ph = layout.panel_size
    pw, ph = max(16, round16(pw * scale)), max(16, round16(ph * scale))
    return Layout(layout.rows, layout.cols, pw * layout.cols, ph * layout.rows, panel_tags=layout.panel_tags,
                  prefix=layout.prefix, preset=layout.preset)


def sample_layout(preset: str, scale: float = 1.0) -> Layout:
    """The preset's layout, optionally scaled (same grid, panels rounded to 16 pixels)."""
    try:
        layout = preset_layout(get_preset(preset))
    except UnknownPresetError as exc:
        raise SampleError(str(exc)) from None
    return _scaled(layout, scale)


def trained_run(lora_dir: Path) -> dict[str, Any]:
    """The LoRA's ``training_config.json`` (what ``iclora train`` wrote next to the weights)."""
    try:
        return dict(json.loads((Path(lora_dir) / TRAINING_CONFIG).read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        raise SampleError(f"{lora_dir} has no readable {TRAINING_CONFIG}; pass --base and --preset") from None


def lora_layout(lora_dir: Path, preset: str | None = None, scale: float | None = None) -> Layout:
    """The layout to sample: the preset's at the scale the LoRA trained at, or else the grid and size
    it trained at most (any layout: a preset's, ``--layout RxC`` or automatic). ``scale`` overrides."""
    if preset is not None:
        trained = 1.0
        if (Path(lora_dir) / TRAINING_CONFIG).is_file():
            config = trained_run(lora_dir).get("config", {})
            trained = float(config.get("scale", 1.0)) if not config.get("resolutions") else 1.0
        return sample_layout(preset, trained if scale is None else scale)
    layouts = trained_run(lora_dir).get("layouts") or []
    if not layouts:
        raise SampleError(f"{lora_dir}/{TRAINING_CONFIG} records no trained layout (an older LoRA); pass --preset")
    first = layouts[0]
    layout = Layout(int(first["rows"]), int(first["cols"]), int(first["width"]), int(first["height"]))
    return _scaled(layout, 1.0 if scale is None else scale)


def _open_reference(path: Path) -> Image.Image:
    from PIL import ImageOps

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_REFERENCE_PIXELS:
                raise SampleError(f"reference {path} is {img.width}x{img.height}, over the pixel limit")
            img.seek(0)  # first frame of an animation
            image = ImageOps.exif_transpose(img)
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
                canvas = Image.new("RGB", image.size, (255, 255, 255))
                canvas.paste(image, mask=image.getchannel("A"))
                return canvas
            return image.convert("RGB")
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(f"reference {path} is not a readable image ({exc})") from None


def lora_base(lora_dir: Path) -> tuple[str, int]:
    """The base a LoRA was trained on and its text length, from its ``training_config.json``."""
    run = trained_run(lora_dir)
    if "base" not in run:
        raise SampleError(f"{lora_dir}/{TRAINING_CONFIG} names no base; pass --base")
    return str(run["base"]), int(run.get("config", {}).get("max_sequence_length", 512))


def _auto_offload(pipe: Any, device: Any) -> str:
    """The least offloading that leaves the GPU 4 GiB for activations and VAE decoding: none when
    the whole pipeline fits, ``model`` when its largest model does, else ``sequential``. FLUX.1-dev
    in bf16 is 31.7 GiB, its transformer 22.2 GiB (fp8: 11.1): a 24 GB card needs one of them."""
    import torch

    if device.type != "cuda":
        return "none"
    sizes = [sum(p.numel() * p.element_size() for p in m.parameters())
             for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    free, _ = torch.cuda.mem_get_info(device)
    room = free - 4 * 1024**3
    return "none" if sum(sizes) < room else "model" if max(sizes) < room else "sequential"


def reference_canvas(layout: Layout, placed: dict[int, Image.Image]) -> tuple[Image.Image, Image.Image]:
    """The inpainting input: reference panels in their slots, and the mask (diffusers: white is
    generated, black is kept), black exactly over the reference panels."""
    boxes = layout.panel_boxes()
    # masked panels start from the first reference: with strength < 1 that is SDEdit from it
    first = placed[min(placed)]
    init = Image.new("RGB", (layout.width, layout.height))
    mask = Image.new("L", (layout.width, layout.height), 255)
    for number, box in enumerate(boxes, start=1):
        init.paste(placed.get(number, first), box[:2])
        if number in placed:
            mask.paste(0, box)
    return init, mask


class Sampler:
    """A FLUX pipeline with the LoRA loaded, text-to-image or inpainting."""

    def __init__(self, lora_dir: Path, base: str | None = None, references: bool = False,
                 max_sequence_length: int | None = None, offload: str = "auto", quantize: str = "none"):
        import torch
        from diffusers import FluxFillPipeline, FluxInpaintPipeline, FluxPipeline, FluxTransformer2DModel

        self.lora_dir = Path(lora_dir)
        if not (self.lora_dir / LORA_WEIGHTS).is_file():
            raise SampleError(f"{lora_dir} holds no {LORA_WEIGHTS}; train one with iclora train")
        if base is None:
            trained_base, trained_len = lora_base(self.lora_dir)
        else:
            config = trained_run(self.lora_dir).get("config", {}) if (self.lora_dir / TRAINING_CONFIG).is_file() else {}
            trained_base, trained_len = base, int(config.get("max_sequence_length", 512))
        self.base_name = base or trained_base
        self.max_sequence_length = max_sequence_length or trained_len
        resolved = resolve_base(self.base_name)
        from accelerate import PartialState

        self.device = PartialState().device
        self.dtype = torch.bfloat16 if self.device.type != "cpu" else torch.float32
        if offload not in OFFLOADS:
            raise SampleError(f"--offload must be one of {', '.join(OFFLOADS)}, got {offload}")
        if offload not in ("none", "auto") and self.device.type == "cpu":
            raise SampleError(f"--offload {offload} moves models between the CPU and a GPU; this machine has "
                              "no GPU (on the CPU the pipeline already lives in RAM): use --offload none")
        if quantize not in ("none", "fp8"):
            raise SampleError(f"--quantize must be none or fp8, got {quantize}")
        try:
            fill = is_fill_transformer(dict(FluxTransformer2DModel.load_config(resolved, subfolder="transformer")))
        except Exception as exc:
            raise SampleError(f"cannot load base {self.base_name}: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]}") from None
        if fill and not references:
            raise SampleError(f"base {self.base_name} is a FLUX Fill model: it needs --reference PANEL=IMAGE")
        self.mode = "fill" if fill else "inpaint" if references else "text"
        cls = {"fill": FluxFillPipeline, "inpaint": FluxInpaintPipeline, "text": FluxPipeline}[self.mode]
        self.default_guidance = FILL_GUIDANCE if fill else TEXT_GUIDANCE
        self.pipe = cls.from_pretrained(resolved, dtype=self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.load_lora_weights(str(self.lora_dir), weight_name=LORA_WEIGHTS)
        if quantize == "fp8":  # the transformer's frozen weights in fp8, upcast layer by layer (LoRA kept)
            self.pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                           compute_dtype=self.dtype)
        if offload == "auto":
            offload = _auto_offload(self.pipe, self.device)
        self.offload = offload
        if offload == "model":  # one model on the GPU at a time (text encoders, transformer, VAE)
            self.pipe.enable_model_cpu_offload(device=self.device)
        elif offload == "sequential":  # layer by layer: least memory, several times slower
            self.pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            self.pipe.to(self.device)

    def generate(self, prompt: str, layout: Layout, *, seed: int, steps: int, guidance: float,
                 references: dict[int, Image.Image] | None = None, strength: float = 1.0) -> Image.Image:
        """One composite of ``layout``'s size; reference panels (1-based) come back unchanged."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        common = {"prompt": prompt, "width": layout.width, "height": layout.height,
                  "num_inference_steps": steps, "guidance_scale": guidance, "generator": generator,
                  "max_sequence_length": self.max_sequence_length}
        if not references:
            if self.mode != "text":
                raise SampleError("this sampler was made for reference-based generation; give --reference")
            return self.pipe(**common).images[0]
        if self.mode == "text":
            raise SampleError("this sampler was made without references")
        boxes = layout.panel_boxes()
        placed = {i: fit_panel(img, layout.panel_size, "crop") for i, img in references.items()}
        init, mask = reference_canvas(layout, placed)
        if self.mode == "fill":
            image = self.pipe(image=init, mask_image=mask, **common).images[0]
        else:
            image = self.pipe(image=init, mask_image=mask, strength=strength, **common).images[0]
        for number, panel in placed.items():  # the VAE round trip is lossy: restore the known pixels
            image.paste(panel, boxes[number - 1][:2])
        return image


def sample_sets(lora_dir: Path, prompts: list[str], preset: str | None, out: Path, *, seed: int = 0,
                steps: int = 20, guidance: float | None = None, scale: float | None = None,
                references: list[str] | None = None, strength: float = 1.0, base: str | None = None,
                offload: str = "auto", quantize: str = "none") -> list[SampleOutput]:
    """Generate one set per prompt into ``out/sample-NNN/`` (composite, panels, settings.json).

    ``preset`` None: the grid and size the LoRA trained at. ``guidance`` None: 3.5, or 30 on a
    FLUX Fill base. Prompt ``i`` (from 0) uses seed ``seed + i``."""
    if not prompts or any(not p.strip() for p in prompts):
        raise SampleError("every prompt must be non-empty text")
    if not 0 < strength <= 1:
        raise SampleError(f"--strength must be in (0, 1], got {strength}")
    layout = lora_layout(Path(lora_dir), preset, scale)
    refs = dict(parse_reference(spec, layout.panels) for spec in references or [])
    if len(refs) == layout.panels:
        raise SampleError(f"all {layout.panels} panels are references: leave at least one to generate")
    ref_images = {i: _open_reference(p) for i, p in refs.items()}
    sampler = Sampler(lora_dir, base=base, references=bool(refs), offload=offload, quantize=quantize)
    guidance = sampler.default_guidance if guidance is None else guidance
    results: list[SampleOutput] = []
    out = Path(out)
    for i, prompt in enumerate(prompts):
        t0 = time.perf_counter()
        image = sampler.generate(prompt.strip(), layout, seed=seed + i, steps=steps, guidance=guidance,
                                 references=ref_images or None, strength=strength)
        seconds = time.perf_counter() - t0
        folder = out / f"sample-{i + 1:03d}"
        composite = folder / "composite.png"
        with atomic_path(composite) as tmp:
            image.save(tmp, format="PNG")
        panels = []
        for number, panel in enumerate(layout.split(image), start=1):
            path = folder / f"panel-{number}.png"
            with atomic_path(path) as tmp:
                panel.save(tmp, format="PNG")
            panels.append(path)
        settings = {
            "version": 1, "prompt": prompt.strip(), "seed": seed + i, "steps": steps, "guidance": guidance,
            "preset": preset, "scale": scale, "offload": sampler.offload, "quantize": quantize, "width": layout.width,
            "height": layout.height,
            "grid": layout.grid, "panel_tags": list(layout.panel_tags),
            "panel_boxes": [list(b) for b in layout.panel_boxes()],
            "lora": str(Path(lora_dir).resolve()), "base": sampler.base_name, "mode": sampler.mode,
            "references": {str(k): str(v) for k, v in sorted(refs.items())},
            "strength": strength if refs else None, "seconds": round(seconds, 3),
            "composite": composite.name, "panels": [p.name for p in panels]}
        atomic_write_json(folder / "settings.json", settings)
        results.append(SampleOutput(folder, composite, panels, folder / "settings.json", settings))
    return results
