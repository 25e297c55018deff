"""A tiny random-weight FLUX pipeline for tests and the offline demo (``--base tiny-random``).

Built from configs (transformer, 16-channel VAE, CLIP and T5 encoders with tokenizers made
locally), saved once per machine in the user cache, and then loaded through the same
``from_pretrained`` path as a real base. Its images are noise; it exercises every code path.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

from iclora_data.store import cache_dir

TINY_BASE = "tiny-random"
TINY_VERSION = "2"  # bump when the architecture below changes: the cache folder is keyed by it


def tiny_flux_path() -> Path:
    """The tiny pipeline's folder, built on first use (atomically: temp dir, then rename)."""
    models = cache_dir("models")
    dest = models / f"tiny-random-flux-{TINY_VERSION}"
    if (dest / "model_index.json").is_file():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=models, prefix=".tiny-random-flux-"))
    try:
        build_tiny_flux_pipeline().save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "model_index.json").is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _clip_tokenizer() -> Any:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # byte-level BPE with CLIP's end-of-word suffix and no merges: one token per byte
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> Any:
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -4.0) for c in string.ascii_letters + string.digits]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_flux_pipeline(seed: int = 0) -> Any:
    """A ``FluxPipeline`` of about 1 MB with random weights fixed by ``seed``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
            bos_token_id=0, eos_token_id=1, pad_token_id=1))
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))  # type: ignore[call-arg]
        # FLUX's VAE: 16 latent channels, 8x downsampling (four blocks), same scale and shift
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[16, 16, 16, 16], layers_per_block=1, norm_num_groups=8,
            use_quant_conv=False, use_post_quant_conv=False, sample_size=64,
            scaling_factor=0.3611, shift_factor=0.1159)
        # like a trained VAE (and unlike random weights): a near-deterministic posterior (std
        # about 0.007) and latents of about unit spread, so a LoRA can learn one composite
        model: Any = vae  # (diffusers' stubs hide nn.Module's attributes)
        conv_out = model.encoder.conv_out
        with torch.no_grad():
            conv_out.weight[:16] *= 4.0
            conv_out.bias[16:] = -10.0
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=8, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=[4, 6, 6])
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer)
