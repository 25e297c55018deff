"""Fixtures for training/sampling tests: a small IC-LoRA dataset in the published format."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iclora_data.layout import Layout

PANEL = 64


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def composite(seed: int, rows: int = 1, cols: int = 3, panel: int = PANEL) -> Image.Image:
    """A composite with smooth, distinct panels (random colour gradients)."""
    rng = np.random.default_rng(seed)
    layout = Layout(rows, cols, panel * cols, panel * rows)
    canvas = Image.new("RGB", (layout.width, layout.height))
    yy, xx = np.mgrid[0:panel, 0:panel] / panel
    for box in layout.panel_boxes():
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pix = a[None, None] * xx[..., None] + b[None, None] * (1 - yy[..., None])
        canvas.paste(Image.fromarray(np.clip(pix, 0, 255).astype(np.uint8)), box[:2])
    return canvas


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(out: Path, n: int = 4, *, rows: int = 1, cols: int = 3, panel: int = PANEL,
                  captions: list[str | None] | None = None, images: list[Image.Image] | None = None) -> Path:
    """Write ``out/data/train-00000-of-00001.parquet`` with the dataset's columns (docs/ARCHITECTURE.md,
    "The dataset"); returns ``out``."""
    import datasets

    imgs = images or [composite(i, rows, cols, panel) for i in range(n)]
    caps = captions if captions is not None else [
        f"[IMAGE1] shot {i} wide [IMAGE2] shot {i} close [IMAGE3] shot {i} detail" for i in range(len(imgs))]
    records = []
    for i, (img, cap) in enumerate(zip(imgs, caps, strict=True)):
        lay = Layout(rows, cols, img.width, img.height) if img.width % (16 * cols) == 0 and \
            img.height % (16 * rows) == 0 else None
        records.append({
            "image": {"bytes": _png(img), "path": f"set{i}.png"},
            "caption": cap, "summary": f"set {i}", "panel_captions": [f"panel {k}" for k in range(rows * cols)],
            "set_id": f"set{i}", "task": "test", "rows": rows, "cols": cols,
            "width": img.width, "height": img.height,
            "panel_boxes": [list(b) for b in lay.panel_boxes()] if lay else [],
            "source_files": [f"set{i}/{k}.jpg" for k in range(rows * cols)], "captioner": "test"})
    features = datasets.Features({
        "image": datasets.Image(), "caption": datasets.Value("string"), "summary": datasets.Value("string"),
        "panel_captions": datasets.Sequence(datasets.Value("string")), "set_id": datasets.Value("string"),
        "task": datasets.Value("string"), "rows": datasets.Value("int32"), "cols": datasets.Value("int32"),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "panel_boxes": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "source_files": datasets.Sequence(datasets.Value("string")), "captioner": datasets.Value("string")})
    ds = datasets.Dataset.from_list(records, features=features)
    (out / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(out / "data" / "train-00000-of-00001.parquet"))
    return out


def save_tiny_fill_base(dest: Path) -> Path:
    """A tiny FLUX Fill pipeline (the tiny FLUX parts, with a 384-channel Fill transformer)."""
    import torch
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    from iclora_train.tiny_flux import build_tiny_flux_pipeline

    keep = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    parts = {k: v for k, v in build_tiny_flux_pipeline().components.items() if k in keep}
    torch.manual_seed(1)
    cfg = {k: v for k, v in parts["transformer"].config.items() if not k.startswith("_")}
    cfg.update(in_channels=384, out_channels=64)
    parts["transformer"] = FluxTransformer2DModel.from_config(cfg)
    FluxFillPipeline(**parts).save_pretrained(dest)
    return dest
