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


# a retry after a greedy answer failed must sample, or it repeats the same answer
RETRY_TEMPERATURE = 0.7


class CaptionerError(IcloraError):
    """The captioner cannot be used at all (missing model, not a vision-language model, bad backend)."""


class CaptionRunError(CaptionerError):
    """The backend itself failed (unreachable server, refused credentials, unknown model, a model that
    cannot load): a failure of the whole run, never of one set. The build stops before it changes any
    visible output; the message is one line, already scrubbed of secrets."""


@dataclass
class CaptionRequest:
    """One set to caption: its panels as separate images, in order, and the instruction."""

    set_id: str
    panels: list[Image.Image]
    instruction: str
    schema: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None  # EBNF for local constrained decoding (schema.caption_grammar); None: the schema

    @property
    def n(self) -> int:
        return len(self.panels)


class Captioner(Protocol):
    """A loaded captioner. ``generate`` answers each request with the model's raw text, or with the
    exception that stopped that request (a bad answer); it never raises for one bad set, and raises
    CaptionRunError when the backend itself fails.

    The run keeps ``concurrency`` calls of ``batch_size`` requests each in flight (a sliding window):
    a local model takes batches one at a time, a server takes many single requests at once."""

    id: str  # e.g. "transformers:Qwen/Qwen2.5-VL-7B-Instruct@main"; part of the caption key
    batch_size: int  # requests handed to one generate() call
    concurrency: int  # generate() calls in flight at once
    notes: list[str]  # what changed during the run and the ledger must say (e.g. a response_format fallback)

    def probe(self) -> None:
        """One cheap request before any work; raises CaptionRunError when the backend cannot serve."""
        ...

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
