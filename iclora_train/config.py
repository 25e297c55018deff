"""Training settings: the IC-LoRA recipe as defaults, loadable from YAML, overridable by flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iclora_data.config import read_yaml_mapping
from iclora_data.errors import IcloraError

DEFAULT_BASE = "black-forest-labs/FLUX.1-dev"

# Every linear layer inside FLUX's double-stream and single-stream blocks (names relative to a block)
BLOCK_LINEAR_LAYERS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "norm1.linear", "norm1_context.linear", "norm.linear", "proj_mlp", "proj_out",
]


class TrainConfigError(IcloraError):
    pass


class TrainConfig(BaseModel):
    """One training run. Defaults are the released IC-LoRA (ai-toolkit) settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base: str = DEFAULT_BASE
    # LoRA
    rank: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    target_modules: list[str] = Field(default_factory=lambda: list(BLOCK_LINEAR_LAYERS), min_length=1)
    # optimisation
    batch_size: int = Field(4, ge=1)
    steps: int = Field(5000, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_accumulation: int = Field(1, ge=1)  # micro-batches per optimizer step
    # adamw8bit: bitsandbytes on CUDA; asked for where it cannot run, it is an error, never a swap
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = "constant_with_warmup"  # diffusers.optimization.get_scheduler
    lr_warmup_steps: int = Field(0, ge=0)
    caption_dropout: float = Field(0.05, ge=0, le=1)
    ema: bool = False
    ema_decay: float = Field(0.99, gt=0, lt=1)  # the IC-LoRA config's ema_decay
    # flow matching
    timestep_sampling: Literal["logit_normal", "shifted_sigmoid", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    guidance: float = Field(1.0, ge=0)  # guidance embedding value for guidance-distilled bases (FLUX.1-dev)
    max_sequence_length: int = Field(512, ge=1, le=512)
    # memory
    mixed_precision: Literal["bf16", "no"] = "bf16"  # no fp16: FLUX activations overflow it
    gradient_checkpointing: bool = True
    # storage of the frozen base (the LoRA trains in fp32): fp8 weights upcast layer by layer
    # (diffusers layerwise casting, AdaLN layers included), int8 weight-only with per-channel
    # scales (torchao, every linear), or nf4 (bitsandbytes, CUDA)
    quantize: Literal["none", "fp8", "int8", "nf4"] = "none"
    cache_latents: bool = True  # encode once, then free VAE and text encoders
    # data
    scale: float = Field(1.0, gt=0, le=1)  # train at a fraction of the composite size (same grid)
    buckets: list[tuple[int, int]] | None = None  # allowed (width, height); default: the dataset's sizes
    # multi-resolution training as in the IC-LoRA config: every composite also trains at about
    # r x r pixels for each r (same grid, never upscaled); None: only at its own size (times ``scale``)
    resolutions: list[int] | None = None
    split: str = "train"
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = Field(250, ge=0)  # 0: only the final save
    keep_checkpoints: int = Field(4, ge=1)
    validation_every: int = Field(250, ge=0)  # 0: no validation samples
    validation_holdout: int = Field(1, ge=0)  # rows whose captions are held out as validation prompts
    validation_prompts: list[str] = Field(default_factory=list)  # explicit prompts; replace the held-out ones
    validation_steps: int = Field(20, ge=1)
    validation_guidance: float = Field(3.5, ge=0)
    log_every: int = Field(1, ge=1)
    save_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # of the LoRA file (ai-toolkit saves fp16)

    @field_validator("buckets")
    @classmethod
    def _buckets_multiple_of_16(cls, v: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        for w, h in v or []:
            if w % 16 or h % 16 or w <= 0 or h <= 0:
                raise ValueError(f"bucket {w}x{h} is not a positive multiple of 16 pixels")
        return v

    @field_validator("resolutions")
    @classmethod
    def _resolutions_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(r < 16 for r in v)):
            raise ValueError("resolutions must be a non-empty list of sides of at least 16 pixels")
        return v

    def target_regex(self) -> str:
        """A peft ``target_modules`` pattern limited to the transformer blocks' layers."""
        names = "|".join(re.escape(n) for n in self.target_modules)
        return rf"^(?:transformer_blocks|single_transformer_blocks)\.\d+\.(?:{names})$"


# Named settings on top of the defaults. ``ic-lora-24gb`` is ali-vilab/In-Context-LoRA's released
# config (config/movie-shots.yml: ai-toolkit, quantized base, adamw8bit, EMA 0.99, resolutions
# 512-1536, save and sample every 250 steps) fitted to one 24 GB GPU: its batch of 4 becomes
# 1 x 4 accumulated micro-batches (README, "Memory").
PRESETS: dict[str, dict[str, Any]] = {
    "ic-lora-24gb": {
        "quantize": "fp8", "optimizer": "adamw8bit", "batch_size": 1, "gradient_accumulation": 4,
        "resolutions": [512, 768, 1024, 1280, 1536], "ema": True, "ema_decay": 0.99,
        "gradient_checkpointing": True, "mixed_precision": "bf16", "lr_warmup_steps": 100,
        "checkpoint_every": 250, "validation_every": 250, "save_dtype": "fp16",
    },
}


def load_train_config(path: Path | None = None, preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the named ``preset``, then the YAML file, then the ``overrides`` that are not None."""
    from_file = dict(read_yaml_mapping(path, TrainConfigError)) if path is not None else {}
    preset = preset or from_file.pop("preset", None)
    from_file.pop("preset", None)
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise TrainConfigError(f"unknown training preset {preset!r}; known: {', '.join(PRESETS)}")
        data.update(PRESETS[preset])
    data.update(from_file)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "config"
        raise TrainConfigError(f"bad training setting {where}: {first['msg']}"
                               + (f" (from {path})" if path else "")) from None
