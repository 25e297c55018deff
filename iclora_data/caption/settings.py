"""The ``caption:`` section of the build config: which captioner, how it generates, how it retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
TINY_RANDOM = "tiny-random"
# For real models; None in the settings means "the model's default" (tiny-random has its own, see resolved())
DEFAULT_MIN_PIXELS = 128 * 28 * 28
DEFAULT_MAX_PIXELS = 768 * 28 * 28
DEFAULT_MAX_NEW_TOKENS = 768


class CaptionSettings(BaseModel):
    """How sets are captioned. Everything that changes a caption is part of its cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["transformers", "openai"] = "transformers"
    # hub id, local folder, or "tiny-random" (the built-in offline model); for openai, the served model name
    model: str = DEFAULT_MODEL
    revision: str | None = None
    base_url: str | None = None  # openai backend: e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # name of the env var that holds the key; the key itself is never stored
    prompt_file: Path | None = None  # replaces the built-in instruction template (see prompts.py)
    batch_size: int = Field(4, ge=1, le=1024)
    max_new_tokens: int | None = Field(None, ge=16, le=32768)  # None: 768 (tiny-random: what its answers need)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff_s: float = Field(1.0, ge=0.0, le=600.0)  # openai: first wait, doubled per attempt
    constrained: bool = True  # grammar-constrained decoding to the JSON schema
    # caption.txt / per-panel text a set brought: keep it as the caption, give it to the model as a hint,
    # or ignore it
    sidecar: Literal["keep", "hint", "ignore"] = "hint"
    # openai: requests kept in flight (a sliding window); vLLM batches them on the GPU, 16 keeps it busy
    concurrency: int = Field(16, ge=1, le=256)
    timeout_s: float = Field(120.0, gt=0.0, le=3600.0)  # openai: per request
    probe_timeout_s: float = Field(10.0, gt=0.0, le=600.0)  # openai: the check before any work
    # openai: server-specific request fields merged into every request body, e.g. vLLM's
    # {"repetition_penalty": 1.05, "mm_processor_kwargs": {...}, "structured_outputs": {"grammar": ...}}
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # the trainer's text encoder reads this many tokens (FLUX's T5: 512); a longer caption is rejected
    max_tokens: int = Field(512, ge=16, le=4096)
    # a T5 tokenizer (folder or hub id in the local cache) to count them; None: a conservative estimate
    tokenizer: str | None = None
    language: str | None = "en"  # captions in another language fail the language check; None: any
    # which checks an answer must pass: "all" (quality checks too) or "structure" (shape and length only);
    # None: "all", except "structure" for tiny-random whose words are noise
    checks: Literal["all", "structure"] | None = None
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # per panel, as qwen-vl-utils counts them; None: 128*28*28 and 768*28*28 (tiny-random: 56*56 and 112*112)
    min_pixels: int | None = Field(None, ge=28 * 28)
    max_pixels: int | None = Field(None, ge=28 * 28)
    # cap on each text field in the schema (characters); None: only the 512-word check after generation
    max_chars: int | None = Field(None, ge=8)
    trust_remote_code: bool = False

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("caption model must be a hub id, a local folder or 'tiny-random'")
        return v.strip()

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        head = v.split(":", 1)[0]
        if head not in {"auto", "cpu", "cuda", "mps", "xpu"}:
            raise ValueError(f"device must be auto, cpu, cuda[:N], mps or xpu, got {v!r}")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CaptionSettings:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("the openai backend needs base_url, e.g. http://localhost:8000/v1")
        if self.backend == "openai" and self.model == TINY_RANDOM:
            raise ValueError("tiny-random is a local model: use backend transformers")
        return self

    def resolved(self) -> CaptionSettings:
        """Settings with every model default filled in, as the captioners use them. ``tiny-random`` gets
        small panels and short, bounded texts, so it runs fast on a CPU and every answer closes."""
        from iclora_data.caption.schema import max_answer_tokens

        max_chars: int | None
        if self.model == TINY_RANDOM:
            from iclora_data.caption.tiny_random import TINY_MAX_CHARS, TINY_MAX_PIXELS, TINY_MIN_PIXELS

            min_px, max_px, max_chars = TINY_MIN_PIXELS, TINY_MAX_PIXELS, self.max_chars or TINY_MAX_CHARS
            # enough for every answer of up to 16 panels to close
            new_tokens = max_answer_tokens(16, max_chars)
        else:
            min_px, max_px, max_chars, new_tokens = (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, self.max_chars,
                                                     DEFAULT_MAX_NEW_TOKENS)
        min_px = self.min_pixels or min_px
        max_px = self.max_pixels or max(max_px, min_px)
        checks = self.checks or ("structure" if self.model == TINY_RANDOM else "all")
        return self.model_copy(update={"min_pixels": min_px, "max_pixels": max_px, "max_chars": max_chars,
                                       "max_new_tokens": self.max_new_tokens or new_tokens, "checks": checks})

    @property
    def new_tokens(self) -> int:
        if self.max_new_tokens is None:
            raise ValueError("caption settings not resolved: call resolved() first")
        return self.max_new_tokens

    @property
    def pixels(self) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` of a panel, once resolved."""
        if self.min_pixels is None or self.max_pixels is None:
            raise ValueError("caption settings not resolved: call resolved() first")
        return self.min_pixels, self.max_pixels

    def generation_key(self) -> dict[str, object]:
        """The settings that change what a captioner writes (part of the caption key; call on resolved())."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "constrained": self.constrained,
            "sidecar": self.sidecar,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "max_chars": self.max_chars,
            "extra_body": self.extra_body,
            "max_tokens": self.max_tokens,
            "tokenizer": self.tokenizer,
            "language": self.language,
            "checks": self.checks,
        }
