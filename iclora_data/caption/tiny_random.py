"""``tiny-random``: a Qwen2-VL (or Qwen2.5-VL) of a few hundred thousand random weights, built offline.

It exists so that the demo and CI run the real captioning path (processor, chat template,
multi-image message, batched generation, grammar-constrained decoding) on machines without the
model hub. The tokenizer is a byte-level BPE trained here on a small corpus: byte-level, so it can
spell any JSON the caption schema allows, and constrained decoding keeps the noise well-formed.

The model is built once per machine into ``cache_dir("models", ...)`` (in a temporary folder renamed
into place, so a crash leaves no half-built model) and loaded like any other with ``from_pretrained``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from iclora_data.store import cache_dir

TINY_VERSION = "1"  # bump when the build below changes: the folder name and caption keys change with it
Variant = Literal["qwen2_vl", "qwen2_5_vl"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat template (images as <|vision_start|><|image_pad|><|vision_end|>), trimmed of tools.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    '{"summary": "A set of photos", "panels": ["A cat on a mat.", "A dog in the park."]}',
    "You write precise, visual captions for image-generation training data. You answer in JSON.",
    "These images are the panels of one set, in reading order. The set shows a scene.",
    "Write a joint caption as a JSON object with two fields: summary and panels.",
    "Describe the subject, style, setting, palette, mood, composition, camera and lighting.",
    "[IMAGE1] [IMAGE2] [SCENE-1] [SCENE-2] [SCENE-3] [TOP-LEFT] [BOTTOM-RIGHT] <Mia> <Leo>",
]

# Small panels keep the tiny model fast on a CPU: 56x56 to 112x112 pixels per panel.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112
TINY_MAX_CHARS = 24  # per text field: bounds the noise so every answer closes within max_new_tokens


def tiny_model_dir(variant: Variant = "qwen2_vl") -> Path:
    """Folder of the tiny model, built on first use."""
    name = {"qwen2_vl": "tiny-random-qwen2-vl", "qwen2_5_vl": "tiny-random-qwen2.5-vl"}[variant]
    path = cache_dir("models") / f"{name}-{TINY_VERSION}"
    if not (path / "config.json").exists():
        _build_into(path, variant)
    return path


def _build_into(path: Path, variant: Variant) -> None:
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        build_tiny_model(tmp, variant)
        try:
            os.replace(tmp, path)
        except OSError:
            # another process finished the same build first: its copy is as good as ours
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tokenizer(vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Qwen2TokenizerFast  # type: ignore[attr-defined]

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # the full byte alphabet first: every byte string, hence every JSON text, has a spelling
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None, padding_side="left",
                              chat_template=CHAT_TEMPLATE)


def build_tiny_model(path: Path, variant: Variant = "qwen2_vl", seed: int = 0, hidden_size: int = 64,
                     layers: int = 2) -> Path:
    """Write a tiny random model + processor to ``path`` with ``save_pretrained``.

    ``hidden_size``/``layers`` make a bigger random text model (benchmarks: where arithmetic, not call
    overhead, dominates); the defaults are the ``tiny-random`` model."""
    import torch
    from transformers import Qwen2VLImageProcessorPil

    from iclora_data.caption.transformers_backend import processor_class_for

    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vision: dict[str, Any]
    if variant == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden_size, num_heads=4, mlp_ratio=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    elif variant == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config  # type: ignore[assignment]
        from transformers import Qwen2_5_VLForConditionalGeneration as Model  # type: ignore[assignment]
        vision = dict(depth=2, hidden_size=32, out_hidden_size=hidden_size, intermediate_size=64, num_heads=4,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1])
    else:
        raise ValueError(f"unknown tiny variant {variant!r}")
    heads = hidden_size // 16  # head_dim 16: mrope sections sum to head_dim / 2 = 8
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    config = Config(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                    video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                    vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Model(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(path)

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},
        patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_cls = processor_class_for(config.model_type)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(path)
    return path
