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
    optimizer: Literal["auto", "adamw", "adamw8bit"] = "auto"  # auto: 8-bit with bitsandbytes on CUDA
    caption_dropout: float = Field(0.05, ge=0, le=1)
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    # flow matching
    timestep_sampling: Literal["logit_normal", "shifted_sigmoid", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    guidance: float = Field(1.0, ge=0)  # guidance embedding value for guidance-distilled bases (FLUX.1-dev)
    max_sequence_length: int = Field(512, ge=1, le=512)
    # memory
    mixed_precision: Literal["bf16", "no"] = "bf16"  # no fp16: FLUX activations overflow it
    gradient_checkpointing: bool = True
    quantize: Literal["none", "fp8", "nf4"] = "none"  # storage of the frozen base; the LoRA trains in bf16/fp32
    cache_latents: bool = True  # encode once, then free VAE and text encoders
    # data
    scale: float = Field(1.0, gt=0, le=1)  # train at a fraction of the composite size (same grid)
    buckets: list[tuple[int, int]] | None = None  # allowed (width, height); default: the dataset's sizes
    split: str = "train"
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = Field(500, ge=0)  # 0: only the final save
    keep_checkpoints: int = Field(3, ge=1)
    validation_every: int = Field(500, ge=0)  # 0: no validation samples
    validation_holdout: int = Field(1, ge=0)  # rows whose captions are held out as validation prompts
    validation_prompts: list[str] = Field(default_factory=list)  # explicit prompts; replace the held-out ones
    validation_steps: int = Field(20, ge=1)
    validation_guidance: float = Field(3.5, ge=0)
    log_every: int = Field(1, ge=1)

    @field_validator("buckets")
    @classmethod
    def _buckets_multiple_of_16(cls, v: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        for w, h in v or []:
            if w % 16 or h % 16 or w <= 0 or h <= 0:
                raise ValueError(f"bucket {w}x{h} is not a positive multiple of 16 pixels")
        return v

    def target_regex(self) -> str:
        """A peft ``target_modules`` pattern limited to the transformer blocks' layers."""
        names = "|".join(re.escape(n) for n in self.target_modules)
        return rf"^(?:transformer_blocks|single_transformer_blocks)\.\d+\.(?:{names})$"


def load_train_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file, then the ``overrides`` that are not None (CLI flags)."""
    data = read_yaml_mapping(path, TrainConfigError) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "config"
        raise TrainConfigError(f"bad training setting {where}: {first['msg']}"
                               + (f" (from {path})" if path else "")) from None
