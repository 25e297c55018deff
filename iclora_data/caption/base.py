"""What every captioner backend offers, and what it is asked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from iclora_data.errors import IcloraError
from iclora_data.store import content_key

if TYPE_CHECKING:
    from PIL import Image

    from iclora_data.caption.settings import CaptionSettings


class CaptionerError(IcloraError):
    """The captioner cannot be used at all (missing model, not a vision-language model, bad backend)."""


@dataclass
class CaptionRequest:
    """One set to caption: its panels as separate images, in order, and the instruction."""

    set_id: str
    panels: list[Image.Image]
    instruction: str
    schema: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.panels)


class Captioner(Protocol):
    """A loaded captioner. ``generate`` answers each request with the model's raw text, or with the
    exception that stopped that request (a transport error); it never raises for one bad set."""

    id: str  # e.g. "transformers:Qwen/Qwen2.5-VL-7B-Instruct@main"; part of the caption key
    batch_size: int  # requests handed to one generate() call

    def generate(self, requests: Sequence[CaptionRequest], attempt: int) -> list[str | Exception]: ...


def captioner_id(settings: CaptionSettings) -> str:
    """The captioner's identity from settings alone, so a caption key needs no loaded model."""
    from iclora_data.caption.settings import TINY_RANDOM

    if settings.model == TINY_RANDOM:
        from iclora_data.caption.tiny_random import TINY_VERSION

        return f"transformers:{TINY_RANDOM}@{TINY_VERSION}"
    if settings.backend == "openai":
        return f"openai:{settings.model}@{settings.base_url}"
    folder = Path(settings.model).expanduser()
    if folder.is_dir():
        # a local folder has no revision: its config and weight files' sizes stand in for one
        parts = [(p.name, p.stat().st_size) for p in sorted(folder.glob("*.safetensors"))]
        config = folder / "config.json"
        digest = content_key(config.read_text(encoding="utf-8") if config.is_file() else "", parts)[:12]
        return f"transformers:{settings.model}@local-{digest}"
    return f"transformers:{settings.model}@{settings.revision or 'main'}"
