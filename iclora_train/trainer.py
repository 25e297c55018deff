"""FLUX LoRA training on IC-LoRA composites (flow matching on packed latents, peft LoRA).

The loop follows diffusers' FLUX LoRA scripts: latents ``x0`` and noise ``x1`` are mixed at a
sampled sigma, the transformer predicts the velocity ``x1 - x0`` on 2x2-packed latents, and
the guidance embedding gets a fixed value for guidance-distilled bases. Runs are resumable:
every checkpoint holds the LoRA, the optimizer and EMA state, and the step, and the batch
order and noise of step ``s`` depend only on the seed and ``s``.

Noise is drawn on the CPU from the step's generator and moved to the latents' device, so a run
gives the same numbers on any device and any number of processes: every process draws the
whole global batch and keeps its own slice of it (``accelerate`` DDP averages the gradients).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclora_data.store import OutputLockedError, RunStore, atomic_write_json, atomic_write_text, cache_dir
from iclora_train.base import base_fingerprint, is_fill_transformer, resolve_base
from iclora_train.config import TrainConfig
from iclora_train.data import Size, TrainData, TrainItem, load_train_data
from iclora_train.encode import EncodedCache, FluxEncoders, Latent, TextEmbedding
from iclora_train.errors import BaseModelError, OutputBusyError, ResumeError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
TRAINING_CONFIG = "training_config.json"
TRAIN_LOG = "train_log.json"
CHECKPOINTS = "checkpoints"
# settings a checkpoint must share with the run that resumes from it
RESUME_KEYS = ("rank", "alpha", "target_modules", "base")
# layers kept in the compute dtype under fp8 storage: the embedders and the output head
# (a few million weights that every token passes through once)
FP8_KEEP_MODULES = ("pos_embed", "x_embedder", "context_embedder", "time_text_embed", r"^norm_out", r"^proj_out$")


@dataclass
class TrainResult:
    lora_dir: Path
    weights: Path
    step: int  # global step reached
    losses: list[float]  # losses of the steps this call ran
    step_seconds: list[float]
    encoded_images: int  # cache misses this call (0 on a fully cached second run)
    encoded_prompts: int
    resumed_from: int | None = None
    samples: list[Path] = field(default_factory=list)


def _epoch_batches(buckets: dict[Size, list[TrainItem]], batch_size: int, seed: int,
                   epoch: int) -> list[list[TrainItem]]:
    """The global batches of one epoch: each from one bucket, shuffled by (seed, epoch) only.

    A bucket's last batch is filled up from the start of its order, so every batch has
    ``batch_size`` items and splits evenly over processes and accumulation steps."""
    rng = random.Random(f"iclora:{seed}:{epoch}")
    batches: list[list[TrainItem]] = []
    for items in buckets.values():
        order = list(items)
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            while len(batch) < batch_size:
                batch += order[:batch_size - len(batch)]
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def process_state() -> Any:
    """accelerate's view of this process: rank, process count, device. Without a GPU it runs on the
    CPU, and several processes of a launch then join one gloo group (accelerate needs ``cpu=True``)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))


def randn_on(shape: Any, generator: Any, device: Any) -> Any:
    """Normal noise drawn with a CPU ``generator`` and placed on ``device`` (the same on every device)."""
    import torch

    return torch.randn(shape, generator=generator).to(device)


def sample_sigmas(cfg: TrainConfig, batch: int, image_seq_len: int, scheduler_config: dict[str, Any],
                  generator: Any) -> Any:
    """Noise levels in (0, 1) for a batch, as diffusers' FLUX scripts and ai-toolkit sample them.

    Drawn by diffusers' ``compute_density_for_timestep_sampling`` from the step's generator, so
    resume and every process see the same draws."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    scheme = "uniform" if cfg.timestep_sampling == "uniform" else "logit_normal"
    u = compute_density_for_timestep_sampling(scheme, batch, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
                                              generator=generator)
    if cfg.timestep_sampling == "shifted_sigmoid":
        # FLUX's resolution-dependent shift: larger images spend more steps at high noise
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(image_seq_len, scheduler_config.get("base_image_seq_len", 256),
                             scheduler_config.get("max_image_seq_len", 4096),
                             scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15))
        u = math.exp(mu) / (math.exp(mu) + (1.0 / u - 1.0))
    return u.clamp(1e-5, 1.0 - 1e-5)


def checkpoint_dirs(lora_dir: Path) -> list[Path]:
    root = Path(lora_dir) / CHECKPOINTS
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


def _check_resume(ckpt: Path, cfg: TrainConfig) -> dict[str, Any]:
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    saved = state.get("config", {})
    for key in RESUME_KEYS:
        mine = getattr(cfg, key)
        theirs = saved.get(key)
        if theirs != mine:
            raise ResumeError(f"cannot resume from {ckpt}: it was trained with {key} {theirs}, this run asks "
                              f"for {mine}; use the same {key} or start a fresh --out")
    if int(state["step"]) > cfg.steps:
        raise ResumeError(f"cannot resume from {ckpt}: it is at step {state['step']}, past the {cfg.steps} "
                          "steps this run asks for; raise --steps")
    return state


class LoraTrainer:
    """One training run into ``lora_dir``. ``run()`` does the work; the parts are methods."""

    def __init__(self, dataset: str, lora_dir: Path, cfg: TrainConfig, resume: bool | Path = False,
                 progress: bool = True, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.lora_dir = Path(lora_dir)
        self.progress = progress
        self.log = log or (lambda msg: None)
        # everything that can fail on the inputs happens before a model loads
        self.data: TrainData = load_train_data(dataset, cfg)
        # this process of an accelerate/torchrun launch (or the only one): its rank and device
        self.state = process_state()
        self.device = self.state.device
        self._check_hardware()
        self.base = resolve_base(cfg.base)
        self.transformer_config = self._transformer_config()
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler_config = dict(FlowMatchEulerDiscreteScheduler.load_config(self.base, subfolder="scheduler"))
        self.resume_from: Path | None = self._find_resume(resume)
        self.resume_state = _check_resume(self.resume_from, cfg) if self.resume_from else None
        import torch

        self.compute_dtype = {"bf16": torch.bfloat16, "no": torch.float32}[
            cfg.mixed_precision]
        # frozen weights in the compute dtype on an accelerator; on CPU fp32 weights under bf16 autocast
        self.weight_dtype = self.compute_dtype if self.device.type != "cpu" else torch.float32
        if cfg.quantize == "int8":  # torchao's int8 layers keep bf16 scales and take bf16 inputs
            self.weight_dtype = torch.bfloat16
        self.cache = EncodedCache(cache_dir("train-cache"), base_fingerprint(self.base), cfg.max_sequence_length)
        self.latents: dict[TrainItem, Latent] = {}
        self.texts: dict[str, TextEmbedding] = {}
        self.encoders: FluxEncoders | None = None
        self.encoded_images = 0
        self.encoded_prompts = 0
        self.transformer: Any = None  # the peft-wrapped transformer, once run() loads it

    # ---- inputs ---------------------------------------------------------------------------
    def _transformer_config(self) -> dict[str, Any]:
        from diffusers import FluxTransformer2DModel

        try:
            config = dict(FluxTransformer2DModel.load_config(self.base, subfolder="transformer"))
        except Exception as exc:
            raise BaseModelError(f"cannot load the FLUX transformer of base {self.cfg.base}: "
                                 f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from None
        if config.get("_class_name") != "FluxTransformer2DModel":
            raise BaseModelError(f"base {self.cfg.base} has a {config.get('_class_name')} transformer, not FLUX")
        if is_fill_transformer(config):
            raise BaseModelError(f"base {self.cfg.base} is a FLUX Fill model; train on FLUX.1-dev and give the "
                                 "Fill model only to iclora sample --base")
        return config

    def _check_hardware(self) -> None:
        """Settings this machine cannot run fail here, before any model loads."""
        if self.cfg.optimizer == "adamw8bit" and (self.device.type != "cuda" or not _has_bitsandbytes()):
            raise BaseModelError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes) and a "
                                 f"CUDA GPU (this run is on {self.device.type}); set optimizer: adamw")
        if self.cfg.quantize == "nf4":
            _nf4_config(self.device)
        if self.cfg.quantize == "int8":
            _int8_config()

    @property
    def global_batch(self) -> int:
        """Items per optimizer step, over all processes and accumulation steps."""
        return self.cfg.batch_size * self.cfg.gradient_accumulation * self.state.num_processes

    def _find_resume(self, resume: bool | Path) -> Path | None:
        if resume is False or resume is None:
            if checkpoint_dirs(self.lora_dir):
                raise ResumeError(f"{self.lora_dir} already holds checkpoints; pass --resume to continue "
                                  "that run or choose another --out")
            return None
        if resume is True:
            found = checkpoint_dirs(self.lora_dir)
            if not found:
                raise ResumeError(f"--resume: no checkpoint in {self.lora_dir / CHECKPOINTS}; "
                                  "run without --resume to start")
            return found[-1]
        ckpt = Path(resume)
        if not (ckpt / "state.json").is_file():
            raise ResumeError(f"--resume {ckpt}: not a checkpoint folder (no state.json)")
        return ckpt

    def validation_prompts(self) -> list[tuple[str, Size]]:
        if not self.cfg.validation_every:
            return []
        largest = max(self.data.buckets(), key=lambda size: size[0] * size[1])
        if self.cfg.validation_prompts:
            return [(p, largest) for p in self.cfg.validation_prompts]
        return [(it.caption, it.bucket) for it in self.data.holdout]

    # ---- encoding -------------------------------------------------------------------------
    def _encoders(self) -> FluxEncoders:
        if self.encoders is None:
            self.encoders = FluxEncoders(self.base, self.device, self.weight_dtype)
        return self.encoders

    def _latent(self, item: TrainItem) -> Latent:
        if item in self.latents:
            return self.latents[item]
        latent = self.cache.get_latent(item.image_sha256, item.bucket) if self.cfg.cache_latents else None
        if latent is None:
            latent = self._encoders().encode_image(self.data.image(item))
            self.encoded_images += 1
            if self.cfg.cache_latents:
                # what is cached lives on the CPU: the accelerator keeps only the batch in use
                latent = Latent(latent.mean.cpu(), latent.std.cpu())
                self.cache.put_latent(item.image_sha256, item.bucket, latent)
        if self.cfg.cache_latents:
            self.latents[item] = latent
        return latent

    def _texts(self, captions: list[str]) -> list[TextEmbedding]:
        out: dict[str, TextEmbedding] = {}
        missing: list[str] = []
        for caption in dict.fromkeys(captions):
            emb = self.texts.get(caption) or (self.cache.get_text(caption) if self.cfg.cache_latents else None)
            if emb is None:
                missing.append(caption)
            else:
                out[caption] = emb
        if missing:
            for caption, emb in zip(missing, self._encoders().encode_prompts(missing, self.cfg.max_sequence_length),
                                    strict=True):
                if self.cfg.cache_latents:
                    emb = TextEmbedding(emb.prompt_embeds.cpu(), emb.pooled.cpu())
                out[caption] = emb
                self.encoded_prompts += 1
                if self.cfg.cache_latents:
                    self.cache.put_text(caption, emb)
        if self.cfg.cache_latents:
            self.texts.update(out)
        return [out[c] for c in captions]

    def prepare_cache(self) -> None:
        """Encode what the cache lacks, keep it in memory, and free the encoders."""
        if not self.cfg.cache_latents:
            return
        # one process encodes what the disk cache lacks, the others then read it
        with self.state.main_process_first():
            self._fill_cache()
        self.log(f"cache: {self.encoded_images} composites and {self.encoded_prompts} captions encoded, "
                 f"{len(self.data.train) - self.encoded_images} composites reused")

    def _fill_cache(self) -> None:
        for item in self.data.train:
            self._latent(item)
        captions = [it.caption for it in self.data.train] + [""] + [p for p, _ in self.validation_prompts()]
        for start in range(0, len(captions), 16):
            self._texts(captions[start:start + 16])
        if self.encoders is not None:
            self.encoders.free()
            self.encoders = None

    # ---- model ----------------------------------------------------------------------------
    def load_transformer(self) -> Any:
        import torch
        from diffusers import FluxTransformer2DModel
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        kwargs: dict[str, Any] = {"dtype": self.weight_dtype}
        if self.cfg.quantize == "nf4":
            kwargs["quantization_config"] = _nf4_config(self.device)
        if self.cfg.quantize == "int8":  # torchao int8 weight-only (per-channel scales), every linear
            kwargs["quantization_config"] = _int8_config()
        transformer = FluxTransformer2DModel.from_pretrained(self.base, subfolder="transformer", **kwargs)
        transformer.requires_grad_(False)
        if self.cfg.quantize == "fp8":
            # fp8 storage of the frozen base, upcast layer by layer for compute (diffusers hooks);
            # cast before moving, so the full-precision base never sits on the GPU
            # diffusers' enable_layerwise_casting always skips every "norm" layer, which leaves the AdaLN
            # modulation linears (3.2B of FLUX.1-dev's 11.9B weights) in bf16; its hook applied
            # directly stores those in fp8 too
            from diffusers.hooks import apply_layerwise_casting

            apply_layerwise_casting(transformer, storage_dtype=torch.float8_e4m3fn,
                                    compute_dtype=self.compute_dtype if self.compute_dtype != torch.float32
                                    else torch.bfloat16, skip_modules_pattern=FP8_KEEP_MODULES)
        if self.cfg.quantize != "nf4":  # bitsandbytes places its weights itself
            transformer.to(self.device)
        if self.cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.lora_config = LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, init_lora_weights="gaussian",
                                      target_modules=self.cfg.target_regex())
        with torch.random.fork_rng(devices=[]):  # the LoRA's random init follows the run's seed
            torch.manual_seed(self.cfg.seed)
            transformer.add_adapter(self.lora_config)
        cast_training_params(transformer, dtype=torch.float32)  # the LoRA itself trains in fp32 master weights
        return transformer

    def _optimizer(self, params: list[Any]) -> Any:
        import torch

        if self.cfg.optimizer == "adamw8bit":
            # asked for 8-bit Adam: it runs or the run stops, never a silent swap to 32-bit AdamW
            if not _has_bitsandbytes() or self.device.type != "cuda":
                raise BaseModelError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes) and a "
                                     f"CUDA GPU (this run is on {self.device.type}); set optimizer: adamw")
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        return torch.optim.AdamW(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)

    # ---- one step ---------------------------------------------------------------------------
    def batch_inputs(self, batch: list[TrainItem], generator: Any, part: slice | None = None) -> dict[str, Any]:
        """Model inputs and target of one batch (noise and dropout drawn from ``generator``).

        ``batch`` is the global batch; every draw is made for all of it, then ``part`` (this
        process's micro-batch) is kept, so the split never changes the numbers."""
        import torch
        from diffusers import FluxPipeline

        part = part or slice(None)
        latents = [self._latent(it) for it in batch]
        mean = torch.stack([lt.mean for lt in latents]).float()
        std = torch.stack([lt.std for lt in latents]).float()
        x0 = mean + std * randn_on(mean.shape, generator, mean.device)  # a sample of the VAE posterior
        keep = torch.rand(len(batch), generator=generator) >= self.cfg.caption_dropout
        noise = randn_on(x0.shape, generator, x0.device)
        sigmas = sample_sigmas(self.cfg, len(batch), (x0.shape[2] // 2) * (x0.shape[3] // 2), self.scheduler_config,
                               generator).to(x0.device)
        x0, noise, sigmas, items = x0[part], noise[part], sigmas[part], batch[part]
        captions = [it.caption if k else "" for it, k in zip(items, keep[part].tolist(), strict=True)]
        texts = self._texts(captions)
        bsz, channels, h, w = x0.shape
        s = sigmas.view(-1, 1, 1, 1)
        noisy = (1.0 - s) * x0 + s * noise
        velocity = noise - x0
        dev = self.device
        inputs = {
            "hidden_states": FluxPipeline._pack_latents(noisy, bsz, channels, h, w).to(dev, self.weight_dtype),
            "timestep": sigmas.to(dev, self.weight_dtype),  # the transformer takes sigma (t / 1000)
            "pooled_projections": torch.stack([t.pooled for t in texts]).to(dev, self.weight_dtype),
            "encoder_hidden_states": torch.stack([t.prompt_embeds for t in texts]).to(dev, self.weight_dtype),
            "txt_ids": torch.zeros(texts[0].prompt_embeds.shape[0], 3, device=dev, dtype=self.weight_dtype),
            "img_ids": FluxPipeline._prepare_latent_image_ids(bsz, h // 2, w // 2, dev, self.weight_dtype),
            "guidance": (torch.full((bsz,), self.cfg.guidance, device=dev, dtype=self.weight_dtype)
                         if self.transformer_config.get("guidance_embeds") else None),
        }
        target = FluxPipeline._pack_latents(velocity, bsz, channels, h, w).to(dev)
        return {"inputs": inputs, "target": target, "x0": x0, "noise": noise, "sigmas": sigmas}

    def loss(self, transformer: Any, batch: dict[str, Any]) -> Any:
        import torch

        autocast = (torch.autocast(self.device.type, dtype=self.compute_dtype)
                    if self.cfg.mixed_precision != "no" else nullcontext())
        with autocast:
            pred = transformer(**batch["inputs"], return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), batch["target"].float())

    def step_generator(self, step: int) -> Any:
        import torch

        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)

    # ---- the run ----------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``cfg.steps`` (or ``stop_after`` more steps: for tests and benchmarks)."""
        import torch
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        cfg = self.cfg
        main = self.state.is_main_process
        if main:
            self.lora_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_cache()
        transformer = self.transformer = self.load_transformer()
        params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = self._optimizer(params)
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                     num_training_steps=cfg.steps)
        ema = EMAModel(params, decay=cfg.ema_decay) if cfg.ema else None
        start = 0
        log_entries: list[dict[str, Any]] = []
        if self.resume_from is not None:
            set_peft_model_state_dict(transformer, load_file(str(self.resume_from / "adapter.safetensors")),
                                      adapter_name="default")
            optimizer.load_state_dict(torch.load(self.resume_from / "optimizer.pt", weights_only=True))
            if (self.resume_from / "scheduler.pt").is_file():
                lr_scheduler.load_state_dict(torch.load(self.resume_from / "scheduler.pt", weights_only=True))
            if ema is not None and (self.resume_from / "ema.pt").is_file():
                ema.load_state_dict(torch.load(self.resume_from / "ema.pt", weights_only=True))
            start = int(self.resume_state["step"]) if self.resume_state else 0
            log_entries = [e for e in self._read_log() if e["step"] <= start]
            self.log(f"resumed from {self.resume_from} at step {start}")
        if main:
            atomic_write_json(self.lora_dir / TRAINING_CONFIG, self._run_config())
        # DDP over the processes of a launch (one process: the model as it is); autocast and device
        # placement are ours (a bitsandbytes model must not be moved again)
        accelerator = Accelerator(mixed_precision="no", cpu=self.device.type == "cpu", device_placement=False)
        model, optimizer = accelerator.prepare(transformer, optimizer)

        buckets = self.data.buckets()
        per_epoch = len(_epoch_batches(buckets, self.global_batch, cfg.seed, 0))
        end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
        losses: list[float] = []
        seconds: list[float] = []
        samples: list[Path] = []
        bar = _progress(start, cfg.steps, self.progress and main)
        model.train()
        epoch_cache: tuple[int, list[list[TrainItem]]] = (-1, [])
        micro = cfg.gradient_accumulation
        for step in range(start, end):
            t0 = time.perf_counter()
            epoch, pos = divmod(step, per_epoch)
            if epoch_cache[0] != epoch:
                epoch_cache = (epoch, _epoch_batches(buckets, self.global_batch, cfg.seed, epoch))
            global_batch = epoch_cache[1][pos]
            step_loss = 0.0
            for m in range(micro):
                # micro-batch m of this process: rows [first, first + batch_size) of the global batch
                first = (m * self.state.num_processes + self.state.process_index) * cfg.batch_size
                batch = self.batch_inputs(global_batch, self.step_generator(step),
                                          slice(first, first + cfg.batch_size))
                sync = accelerator.no_sync(model) if m < micro - 1 else nullcontext()
                with sync:
                    loss = self.loss(model, batch) / micro
                    accelerator.backward(loss)
                step_loss += float(loss.detach())
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            if self.state.num_processes > 1:  # the loss of the global batch, as one process would see it
                step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=self.device), "mean"))
            done = step + 1
            dt = time.perf_counter() - t0
            losses.append(step_loss)
            seconds.append(dt)
            if done % cfg.log_every == 0 or done == end:
                log_entries.append({"step": done, "loss": losses[-1], "lr": lr_scheduler.get_last_lr()[0],
                                    "seconds": round(dt, 4)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", step_s=f"{dt:.2f}")
            last = done == end
            if main and cfg.validation_every and (done % cfg.validation_every == 0 or done == cfg.steps):
                samples = self.validate(transformer, done, ema, params)
            if main and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or (last and done < cfg.steps)):
                self.save_checkpoint(transformer, optimizer, lr_scheduler, ema, done, log_entries)
            if main and last:
                self._write_log(log_entries)
        if bar is not None:
            bar.close()
        if main and end == start:
            self._write_log(log_entries)
        weights = self.lora_dir / LORA_WEIGHTS
        if main:
            weights = self.save_lora(transformer, ema, params)
            self.write_model_card(end, samples)
        accelerator.wait_for_everyone()
        return TrainResult(self.lora_dir, weights, end, losses, seconds, self.encoded_images,
                           self.encoded_prompts, resumed_from=start if self.resume_from else None, samples=samples)

    # ---- outputs ----------------------------------------------------------------------------
    def _run_config(self) -> dict[str, Any]:
        return {"version": 1, "dataset": self.data.source, "base": self.cfg.base,
                "train_rows": len({it.row for it in self.data.train}), "holdout_rows": len(self.data.holdout),
                "buckets": [f"{w}x{h}" for w, h in self.data.buckets()], "layouts": trained_layouts(self.data),
                "config": self.cfg.model_dump(mode="json")}

    def _read_log(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.lora_dir / TRAIN_LOG).read_text(encoding="utf-8"))["steps"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []

    def _write_log(self, entries: list[dict[str, Any]]) -> None:
        atomic_write_json(self.lora_dir / TRAIN_LOG, {"version": 1, "steps": entries})

    def save_checkpoint(self, transformer: Any, optimizer: Any, lr_scheduler: Any, ema: Any, step: int,
                        log_entries: list[dict[str, Any]]) -> Path:
        import tempfile

        import torch
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        root = self.lora_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        dest = root / f"step-{step:06d}"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:06d}."))
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer).items()}
            save_file(state, str(tmp / "adapter.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
            if ema is not None:
                torch.save(ema.state_dict(), tmp / "ema.pt")
            atomic_write_json(tmp / "state.json", {"version": 1, "step": step,
                                                   "config": self.cfg.model_dump(mode="json")})
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)  # a checkpoint is whole or absent
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._write_log(log_entries)
        for old in checkpoint_dirs(self.lora_dir)[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    def save_lora(self, transformer: Any, ema: Any, params: list[Any]) -> Path:
        from peft.utils import get_peft_model_state_dict

        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        # clone: on CPU .cpu() is the live parameter, which ema.restore overwrites
        layers = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(transformer).items()}
        if ema is not None:
            ema.restore(params)
        return save_lora_file(self.lora_dir, layers, self.lora_config, self.cfg.save_dtype)

    def validate(self, transformer: Any, step: int, ema: Any, params: list[Any]) -> list[Path]:
        """Sample the validation prompts with the current LoRA into ``samples/``."""
        import torch
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

        prompts = self.validation_prompts()
        if not prompts:
            return []
        vae = AutoencoderKL.from_pretrained(self.base, subfolder="vae", dtype=self.weight_dtype).to(self.device)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(self.base, subfolder="scheduler")
        pipe: Any = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,  # type: ignore[arg-type]
                            text_encoder_2=None, tokenizer_2=None, transformer=transformer)  # type: ignore[arg-type]
        pipe.set_progress_bar_config(disable=True)
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        transformer.eval()
        paths: list[Path] = []
        try:
            for i, ((_, (w, h)), emb) in enumerate(zip(prompts, self._texts([p for p, _ in prompts]),
                                                          strict=True)):
                with torch.no_grad(), torch.autocast(self.device.type, dtype=self.compute_dtype,
                                                     enabled=self.cfg.mixed_precision != "no"):
                    image = pipe(prompt_embeds=emb.prompt_embeds[None].to(self.device, self.weight_dtype),
                                 pooled_prompt_embeds=emb.pooled[None].to(self.device, self.weight_dtype),
                                 width=w, height=h, num_inference_steps=self.cfg.validation_steps,
                                 guidance_scale=self.cfg.validation_guidance,
                                 generator=torch.Generator().manual_seed(self.cfg.seed + i)).images[0]
                path = self.lora_dir / "samples" / f"step-{step:06d}-{i + 1}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
                paths.append(path)
            atomic_write_json(self.lora_dir / "samples" / f"step-{step:06d}.json",
                              [{"image": p.name, "prompt": pr} for p, (pr, _) in zip(paths, prompts, strict=True)])
        finally:
            transformer.train()
            if ema is not None:
                ema.restore(params)
            del pipe, vae
        return paths

    def write_model_card(self, step: int, samples: list[Path]) -> Path:
        return write_model_card(self.lora_dir, step, samples)


SAVE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def save_lora_file(lora_dir: Path, layers: dict[str, Any], lora_config: Any, save_dtype: str) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` that diffusers, ComfyUI and kohya-style loaders read alike.

    Weights in ``save_dtype``; next to every module's ``lora_A``/``lora_B`` an ``<module>.alpha``
    scalar, where ComfyUI and kohya look for it (without it they scale by 1, not alpha / rank).
    diffusers reads the same scalars as its ``network_alphas`` (it refuses peft adapter metadata
    beside them, and without either it would scale by 1 too)."""
    import torch
    from diffusers import FluxPipeline

    dtype = getattr(torch, SAVE_DTYPES[save_dtype])
    tensors = {k: v.to(dtype).contiguous() for k, v in layers.items()}
    for key in layers:
        if key.endswith(".lora_A.weight"):
            tensors[key[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(float(lora_config.lora_alpha))
    FluxPipeline.save_lora_weights(lora_dir, transformer_lora_layers=tensors, weight_name=LORA_WEIGHTS)
    return Path(lora_dir) / LORA_WEIGHTS


def write_model_card(lora_dir: Path, step: int, samples: list[Path]) -> Path:
    """The LoRA folder's ``README.md``, from the ``training_config.json`` its run wrote."""
    lora_dir = Path(lora_dir)
    run = json.loads((lora_dir / TRAINING_CONFIG).read_text(encoding="utf-8"))
    cfg = TrainConfig.model_validate(run["config"])
    gallery = "\n".join(f"![sample {i + 1}]({p.relative_to(lora_dir).as_posix()})"
                        for i, p in enumerate(samples))
    rows = "\n".join(f"| {k} | {v} |" for k, v in [
        ("base model", cfg.base), ("dataset", run["dataset"]), ("training rows", run["train_rows"]),
        ("buckets", ", ".join(run["buckets"])), ("steps", step),
        ("rank / alpha", f"{cfg.rank} / {cfg.alpha}"),
        ("batch size", f"{cfg.batch_size} x {cfg.gradient_accumulation} accumulated"),
        ("optimizer", cfg.optimizer), ("LR schedule", f"{cfg.lr_scheduler}, {cfg.lr_warmup_steps} warmup steps"),
        ("learning rate", f"{cfg.learning_rate:g}"), ("caption dropout", cfg.caption_dropout),
        ("timestep sampling", cfg.timestep_sampling), ("mixed precision", cfg.mixed_precision),
        ("quantized base", cfg.quantize), ("EMA", cfg.ema), ("seed", cfg.seed)])
    base_model = cfg.base if cfg.base.count("/") == 1 and not cfg.base.startswith((".", "/")) else None
    front = ["---", "library_name: diffusers", "tags: [flux, lora, ic-lora, text-to-image, iclora]"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    text = "\n".join(front) + f"""

# In-Context LoRA for FLUX

A LoRA trained with `iclora train` on composites of image sets (In-Context LoRA, arXiv 2410.23775).
Prompt it with a joint caption: a summary and one description per panel, as in the training data.

| setting | value |
|---|---|
{rows}

## Samples

{gallery or "No validation samples were made (validation_every is 0 or there were no held-out captions)."}

## Use

```python
import torch
from diffusers import FluxPipeline

pipe = FluxPipeline.from_pretrained("{cfg.base}", dtype=torch.bfloat16).to("cuda")
pipe.load_lora_weights("path/to/this/folder")  # reads {LORA_WEIGHTS}
image = pipe("<joint caption>", num_inference_steps=20, guidance_scale=3.5).images[0]
```

or `iclora sample THIS_FOLDER --prompt TEXT --out DIR`, which draws the grid and size it trained at,
cuts the composite into panels and fills panels around reference images (`--reference 1=photo.jpg`).
ComfyUI and kohya-style loaders read the `<module>.alpha` tensors in the file (strength alpha / rank).
"""
    atomic_write_text(lora_dir / "README.md", text)
    return lora_dir / "README.md"


def trained_layouts(data: TrainData) -> list[dict[str, int]]:
    """The grids and sizes a LoRA trained at, most sets first: what the sampler draws by default."""
    from collections import Counter

    counts = Counter((it.rows, it.cols, *it.bucket) for it in data.train)
    return [{"rows": r, "cols": c, "width": w, "height": h, "sets": n}
            for (r, c, w, h), n in sorted(counts.items(), key=lambda kv: (-kv[1], -kv[0][2] * kv[0][3]))]


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _int8_config() -> Any:
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        raise BaseModelError("quantize int8 needs torchao (pip install torchao); use --quantize fp8 or none")
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _nf4_config(device: Any) -> Any:
    import torch

    if device.type != "cuda" or not _has_bitsandbytes():
        raise BaseModelError("quantize nf4 needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU; "
                             "use --quantize fp8 or none")
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def _progress(start: int, total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def train_lora(dataset: str, lora_dir: Path, cfg: TrainConfig, resume: bool | Path = False,
               progress: bool = True, stop_after: int | None = None,
               log: Callable[[str], None] | None = None) -> TrainResult:
    """Train an IC-LoRA on ``dataset`` (local path or hub id) into ``lora_dir``.

    Holds the folder's lock for the whole run: a second run on it is refused, never interleaved."""
    with ExitStack() as stack:
        if process_state().is_main_process:  # one writer per folder: the main process of a launch
            try:
                stack.enter_context(RunStore(Path(lora_dir)).lock())
            except OutputLockedError as exc:
                raise OutputBusyError(str(exc)) from None
        return LoraTrainer(dataset, lora_dir, cfg, resume=resume, progress=progress, log=log).run(stop_after)
