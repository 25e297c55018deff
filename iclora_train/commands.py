"""``iclora train`` and ``iclora sample``: typer command functions the CLI registers.

Heavy libraries load inside the functions (through the modules they call) so that
``iclora --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iclora_train.errors import SampleError


def train(
    dataset: Annotated[str, typer.Argument(help="Dataset of a build (OUT/dataset) or a hub dataset id.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the LoRA, checkpoints, samples and log.")],
    base: Annotated[str | None, typer.Option(
        help="FLUX base: hub id, local pipeline folder, or tiny-random. (default black-forest-labs/FLUX.1-dev)")]
    = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of training settings.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="Named settings under the config: ic-lora-24gb (the released IC-LoRA recipe on one 24 GB GPU).")]
    = None,
    steps: Annotated[int | None, typer.Option(help="Training steps. (default 5000)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per process and micro-batch. (default 4)")]
    = None,
    gradient_accumulation: Annotated[int | None, typer.Option(
        help="Micro-batches per optimizer step. (default 1)")] = None,
    optimizer: Annotated[str | None, typer.Option(
        help="adamw or adamw8bit (bitsandbytes, CUDA; an error where it cannot run). (default adamw)")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank. (default 16)")] = None,
    alpha: Annotated[int | None, typer.Option(help="LoRA alpha. (default 16)")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Learning rate. (default 1e-4)")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of batches, noise and dropout. (default 0)")] = None,
    scale: Annotated[float | None, typer.Option(
        help="Train at this fraction of the composite size (same grid). (default 1)")] = None,
    quantize: Annotated[str | None, typer.Option(
        help="Frozen base storage: none, fp8 (diffusers layerwise casting), int8 (torchao) or nf4 "
             "(bitsandbytes, CUDA).")]
    = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (0: off).")] = None,
    validation_every: Annotated[int | None, typer.Option(
        help="Sample held-out captions every N steps (0: off).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")]
    = False,
    resume_from: Annotated[Path | None, typer.Option(help="Continue from this checkpoint folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    num_processes: Annotated[int, typer.Option(
        help="Data-parallel processes (one per GPU; CPU processes use gloo), launched with torchrun.")] = 1,
) -> None:
    """Train an IC-LoRA on FLUX from the dataset a build wrote."""
    from iclora_train.config import load_train_config
    from iclora_train.trainer import train_lora

    cfg = load_train_config(config, preset=preset, base=base, steps=steps, batch_size=batch_size, rank=rank,
                            alpha=alpha, learning_rate=learning_rate, seed=seed, scale=scale, quantize=quantize,
                            checkpoint_every=checkpoint_every, validation_every=validation_every,
                            gradient_accumulation=gradient_accumulation, optimizer=optimizer)
    if num_processes > 1:
        from iclora_train.launch import launch_training

        launch_training(dataset, out, cfg, num_processes, resume=resume_from or resume)
        typer.echo(f"trained with {num_processes} processes; LoRA: {out / 'pytorch_lora_weights.safetensors'}")
        return
    result = train_lora(dataset, out, cfg, resume=resume_from or resume, progress=progress,
                        log=lambda msg: typer.echo(msg, err=True))
    losses = result.losses
    tail = f", last loss {losses[-1]:.4f}" if losses else ""
    typer.echo(f"trained to step {result.step}{tail}; LoRA: {result.weights}")


def sample(
    lora_dir: Annotated[Path, typer.Argument(help="Folder of a trained LoRA (iclora train --out).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for composites, panels and settings.")],
    preset: Annotated[str | None, typer.Option(
        help="Preset whose size and grid the set takes. (default: the grid and size the LoRA trained at)")]
    = None,
    prompt: Annotated[str | None, typer.Option(help="The joint caption of the set to generate.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="File of prompts, one per line (empty lines are skipped and reported).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; the next ones count up.")] = 0,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 20,
    guidance: Annotated[float | None, typer.Option(
        help="Guidance scale. (default 3.5; 30 on a FLUX Fill base)")] = None,
    scale: Annotated[float | None, typer.Option(
        help="Fraction of the size (same grid). (default: the scale the LoRA trained at)")] = None,
    reference: Annotated[list[str] | None, typer.Option(
        help="PANEL=IMAGE: a known panel (1-based, reading order); the others are inpainted. Repeatable.")]
    = None,
    strength: Annotated[float, typer.Option(
        help="Inpainting strength with references (1: masked panels from noise).")] = 1.0,
    base: Annotated[str | None, typer.Option(
        help="Base to load instead of the LoRA's training base (e.g. a FLUX Fill model).")] = None,
    offload: Annotated[str, typer.Option(
        help="auto (the least offloading that fits the GPU), none, model (one model on the GPU at a time) "
             "or sequential (layer by layer, least memory).")] = "auto",
    quantize: Annotated[str, typer.Option(help="none or fp8 (the transformer's weights stored in fp8).")] = "none",
) -> None:
    """Generate image sets with a trained IC-LoRA and cut them into panels."""
    from iclora_train.sample import read_prompts, sample_sets

    if (prompt is None) == (prompts is None):
        raise SampleError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompts is not None:
        texts, skipped = read_prompts(prompts)
        for line in skipped:
            typer.echo(f"skipped empty line {line} of {prompts}", err=True)
    else:
        assert prompt is not None
        if not prompt.strip():
            raise SampleError("--prompt is empty")
        texts = [prompt]
    results = sample_sets(lora_dir, texts, preset, out, seed=seed, steps=steps, guidance=guidance, scale=scale,
                          references=reference or [], strength=strength, base=base, offload=offload,
                          quantize=quantize)
    for result in results:
        typer.echo(f"{result.composite} + {len(result.panels)} panels")
