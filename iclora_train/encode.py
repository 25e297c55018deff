"""Latents and text embeddings: computed once, cached on disk, then the encoders leave memory.

Cache entries are safetensors files keyed by content: a latent by the base's fingerprint, the
composite's bytes and its training size; a text embedding by the fingerprint, the caption and
the sequence length. A second run on the same data loads no VAE and no text encoder at all.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iclora_data.store import atomic_path, content_key


@dataclass
class Latent:
    """A composite's VAE posterior, already shifted and scaled for the transformer."""

    mean: Any  # torch.Tensor (16, h/8, w/8)
    std: Any


@dataclass
class TextEmbedding:
    prompt_embeds: Any  # torch.Tensor (seq, dim) from T5
    pooled: Any  # torch.Tensor (dim,) from CLIP


class EncodedCache:
    """Content-keyed safetensors files under ``root`` (shared by all runs of one machine)."""

    def __init__(self, root: Path, base_key: str, max_sequence_length: int):
        self.root = Path(root)
        self.base_key = base_key
        self.max_sequence_length = max_sequence_length

    def latent_path(self, image_sha256: str, size: tuple[int, int]) -> Path:
        key = content_key("latent", 1, self.base_key, image_sha256, list(size))
        return self.root / "latents" / key[:2] / f"{key}.safetensors"

    def text_path(self, caption: str) -> Path:
        key = content_key("text", 1, self.base_key, caption, self.max_sequence_length)
        return self.root / "text" / key[:2] / f"{key}.safetensors"

    @staticmethod
    def _save(path: Path, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (FileNotFoundError, OSError):
            return None
        except Exception:  # a damaged entry is recomputed, not trusted
            return None

    def get_latent(self, image_sha256: str, size: tuple[int, int]) -> Latent | None:
        data = self._load(self.latent_path(image_sha256, size))
        return Latent(data["mean"], data["std"]) if data else None

    def put_latent(self, image_sha256: str, size: tuple[int, int], latent: Latent) -> None:
        self._save(self.latent_path(image_sha256, size), {"mean": latent.mean, "std": latent.std})

    def get_text(self, caption: str) -> TextEmbedding | None:
        data = self._load(self.text_path(caption))
        return TextEmbedding(data["prompt_embeds"], data["pooled"]) if data else None

    def put_text(self, caption: str, emb: TextEmbedding) -> None:
        self._save(self.text_path(caption), {"prompt_embeds": emb.prompt_embeds, "pooled": emb.pooled})


def image_to_tensor(image: Image.Image) -> Any:
    """RGB PIL image -> (3, H, W) float tensor in [-1, 1]."""
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class FluxEncoders:
    """The VAE and both text encoders of a FLUX base, without its transformer."""

    def __init__(self, base: str, device: Any, dtype: Any):
        from diffusers import FluxPipeline

        self.device, self.dtype = device, dtype
        self.pipe = FluxPipeline.from_pretrained(base, transformer=None, dtype=dtype).to(device)
        self.vae = self.pipe.vae

    def encode_image(self, image: Image.Image) -> Latent:
        import torch

        pixels = image_to_tensor(image)[None].to(self.device, self.dtype)
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
        scale, shift = self.vae.config.scaling_factor, self.vae.config.shift_factor
        return Latent(mean=((dist.mean - shift) * scale)[0], std=(dist.std * scale)[0])

    def encode_prompts(self, prompts: list[str], max_sequence_length: int) -> list[TextEmbedding]:
        import torch

        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                        max_sequence_length=max_sequence_length)
        return [TextEmbedding(embeds[i], pooled[i]) for i in range(len(prompts))]

    def free(self) -> None:
        """Drop every encoder and give the memory back before the training loop."""
        import torch

        del self.pipe, self.vae
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
