"""Estimate peak GPU memory of FLUX.1-dev LoRA training and sampling, without a GPU.

    python scripts/estimate_train_memory.py [--width 1024 --height 1536] [--markdown]

How (the README's memory table comes from this script):
- Weights: parameter counts of FLUX.1-dev's published configs (transformer, T5-XXL encoder,
  CLIP-L, VAE), built on the ``meta`` device (no weights), times bytes per weight: bf16 2, fp8 1
  (embedders and output head kept in bf16), int8 1 (per-channel scales are negligible), nf4
  0.5 + 1 fp32 absmax per 64 weights (linear layers; norms and biases stay bf16).
- LoRA: rank 16 on every block linear; fp32 weights 4 + gradients 4 + AdamW moments 8 bytes
  per parameter (8-bit AdamW: 2), + 4 for an EMA copy.
- Activations: the bytes autograd saves for backward, *measured* on the CPU with bf16 tensors
  for one double-stream and one single-stream block (LoRA on, frozen base) at 1, 2 and 4 heads of
  128 channels. They grow linearly with the width (the script prints them: 59 bytes per channel
  and token per double block between 256 and 512 channels, plus a small constant), so a line
  through the two widest is extrapolated to 24 heads (3072 channels) and FLUX's 19 + 38 blocks at the real token count
  (latent tokens (W/16)(H/16) + 512 text tokens). With gradient checkpointing only each block's
  inputs stay, plus one block's activations while it is recomputed.
- Not counted: the CUDA context (~0.5 GiB, outside PyTorch's allocator), allocator fragmentation
  (often 5-10 %), cuDNN/cuBLAS workspaces. Treat the figures as +-15 %.
"""

from __future__ import annotations

import argparse
from typing import Any

GIB = 1024**3
# huggingface.co/black-forest-labs/FLUX.1-dev: transformer/config.json, text_encoder_2 (T5 v1.1 XXL
# encoder), text_encoder (CLIP ViT-L/14 text), vae/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56])
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False)
TEXT_TOKENS = 512
RANK = 16
FP8_KEPT = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")


def _meta(build: Any) -> Any:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def transformer_counts() -> dict[str, int]:
    """Parameter counts of FLUX.1-dev's transformer by storage class, and its LoRA's size."""
    import torch
    from diffusers import FluxTransformer2DModel

    from iclora_train.config import TrainConfig

    model = _meta(lambda: FluxTransformer2DModel(**FLUX_DEV))
    import re

    target = re.compile(TrainConfig().target_regex())
    counts = {"total": 0, "linear": 0, "adaln": 0, "kept": 0, "lora": 0}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            counts["total"] += p.numel()
            top = name.split(".")[0]
            if top in FP8_KEPT:
                counts["kept"] += p.numel()
            if isinstance(module, torch.nn.Linear) and pname == "weight":
                counts["linear"] += p.numel()
                if ".norm" in name and name.endswith(".linear"):
                    counts["adaln"] += p.numel()
        if isinstance(module, torch.nn.Linear) and target.match(name):
            counts["lora"] += RANK * (module.in_features + module.out_features)
    return counts


def encoder_counts() -> dict[str, int]:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5 = _meta(lambda: T5EncoderModel(T5Config(**T5_XXL)))
    clip = _meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)))
    vae = _meta(lambda: AutoencoderKL(**VAE))
    return {name: sum(p.numel() for p in m.parameters()) for name, m in [("t5", t5), ("clip", clip), ("vae", vae)]}


def saved_bytes(block: Any, inputs: tuple[Any, ...], params: set[int]) -> int:
    """Bytes autograd keeps for backward in one forward of ``block`` (parameters excluded)."""
    import torch

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(*inputs)
    del out
    return sum(storages.values())


def measure_block_activations(image_tokens: int = 256, text_tokens: int = 64) -> dict[str, list[tuple[int, float]]]:
    """Saved bytes per token of one double and one single block at 1, 2, 4 heads of 128 (bf16, LoRA)."""
    import torch
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    out: dict[str, list[tuple[int, float]]] = {"double": [], "single": []}
    tokens = image_tokens + text_tokens
    for heads in (1, 2, 4):
        dim = 128 * heads
        for kind, cls in (("double", FluxTransformerBlock), ("single", FluxSingleTransformerBlock)):
            block = cls(dim=dim, num_attention_heads=heads, attention_head_dim=128).to(torch.bfloat16)
            block.requires_grad_(False)
            names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
            block = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=names), block)
            for n, p in block.named_parameters():
                p.requires_grad_("lora_" in n)
                if "lora_" in n:
                    p.data = p.data.float()
            params = {p.untyped_storage().data_ptr() for p in block.parameters()}
            hidden = torch.randn(1, image_tokens, dim, dtype=torch.bfloat16, requires_grad=True)
            context = torch.randn(1, text_tokens, dim, dtype=torch.bfloat16, requires_grad=True)
            temb = torch.randn(1, dim, dtype=torch.bfloat16)
            rope = (torch.randn(tokens, 128), torch.randn(tokens, 128))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                nbytes = saved_bytes(block, (hidden, context, temb, rope), params)
            out[kind].append((dim, nbytes / tokens))
    return out


def estimate(width: int, height: int) -> dict[str, Any]:
    counts = transformer_counts()
    enc = encoder_counts()
    acts = measure_block_activations()
    dim, tokens = 3072, (width // 16) * (height // 16) + TEXT_TOKENS
    # a straight line through the two widest measurements (bytes/token = a + b * width), extrapolated
    per_token = {k: v[-1][1] + (v[-1][1] - v[-2][1]) / (v[-1][0] - v[-2][0]) * (dim - v[-1][0])
                 for k, v in acts.items()}
    block_full = {k: per_token[k] * tokens for k in per_token}
    full = FLUX_DEV["num_layers"] * block_full["double"] + FLUX_DEV["num_single_layers"] * block_full["single"]
    inputs = (FLUX_DEV["num_layers"] + FLUX_DEV["num_single_layers"]) * tokens * dim * 2  # bf16 block inputs
    checkpointed = inputs + max(block_full.values())
    n, linear, kept = counts["total"], counts["linear"], counts["kept"]
    weights = {"bf16": 2 * n, "fp8": (n - kept) + 2 * kept, "int8": linear + 2 * (n - linear),
               "nf4": linear * (0.5 + 4 / 64) + 2 * (n - linear)}
    lora = counts["lora"]
    return {"counts": counts, "encoders": enc, "activations": acts, "tokens": tokens, "weights": weights,
            "lora_adamw": lora * (4 + 4 + 8), "lora_adamw8bit": lora * (4 + 4 + 2), "ema": lora * 4,
            "act_full_per_sample": full, "act_ckpt_per_sample": checkpointed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1536)
    args = parser.parse_args()
    e = estimate(args.width, args.height)
    c = e["counts"]
    print(f"transformer {c['total'] / 1e9:.2f}B params (linear {c['linear'] / 1e9:.2f}B, AdaLN "
          f"{c['adaln'] / 1e9:.2f}B, kept bf16 under fp8 {c['kept'] / 1e6:.0f}M), LoRA r{RANK} {c['lora'] / 1e6:.1f}M")
    print("encoders: " + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in e["encoders"].items()))
    for kind, rows in e["activations"].items():
        print(f"{kind} block saved bytes/token by width: "
              + ", ".join(f"{d}: {b:.0f} ({b / d:.2f}/ch)" for d, b in rows))
    print(f"tokens at {args.width}x{args.height}: {e['tokens']}")
    print(f"activations per sample: {e['act_full_per_sample'] / GIB:.2f} GiB without checkpointing, "
          f"{e['act_ckpt_per_sample'] / GIB:.2f} GiB with")
    print("\n| base | batch | checkpointing | optimizer | EMA | weights | LoRA+optimizer | activations | peak (est.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for base in ("bf16", "fp8", "int8", "nf4"):
        for batch in (1, 4):
            for ckpt in (True, False):
                for opt in ("adamw8bit", "adamw"):
                    if opt == "adamw" and base != "bf16":
                        continue
                    w = e["weights"][base]
                    lo = e[f"lora_{opt}"] + e["ema"]
                    act = batch * (e["act_ckpt_per_sample"] if ckpt else e["act_full_per_sample"])
                    print(f"| {base} | {batch} | {'on' if ckpt else 'off'} | {opt} | 0.99 | {w / GIB:.1f} | "
                          f"{lo / GIB:.2f} | {act / GIB:.1f} | **{(w + lo + act) / GIB:.1f} GiB** |")
    enc = e["encoders"]
    t5, clip, vae = (2 * enc[k] for k in ("t5", "clip", "vae"))
    print("\nsampling weights (bf16): "
          f"none {(e['weights']['bf16'] + t5 + clip + vae) / GIB:.1f} GiB, "
          f"model offload {max(e['weights']['bf16'], t5) / GIB:.1f} GiB, "
          f"model offload + fp8 {max(e['weights']['fp8'], t5) / GIB:.1f} GiB, "
          f"sequential: the largest layer (~{2 * 3072 * 12288 / GIB:.2f} GiB) at a time")


if __name__ == "__main__":
    main()
