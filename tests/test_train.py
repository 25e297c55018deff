"""Training: loss goes down, LoRA round trip, resume, latent cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from _train_helpers import composite, single_thread, write_dataset  # noqa: F401  (fixture)

from iclora_train.config import TrainConfig, TrainConfigError, load_train_config
from iclora_train.errors import BaseModelError, ResumeError, TrainDatasetError
from iclora_train.tiny_flux import tiny_flux_path
from iclora_train.trainer import LoraTrainer, checkpoint_dirs, train_lora

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(**kw) -> TrainConfig:
    settings = dict(base="tiny-random", steps=4, batch_size=2, learning_rate=1e-3, checkpoint_every=0,
                    validation_every=0, max_sequence_length=32, mixed_precision="no",
                    gradient_checkpointing=False)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return str(write_dataset(tmp_path_factory.mktemp("ds"), 4))


def _generate(pipe, seed: int = 0) -> np.ndarray:
    return pipe("[IMAGE1] a [IMAGE2] b [IMAGE3] c", height=64, width=192, num_inference_steps=2,
                guidance_scale=3.5, max_sequence_length=32, generator=torch.Generator().manual_seed(seed),
                output_type="np").images[0]


def test_training_lowers_loss_on_a_fixed_batch(dataset, tmp_path):
    trainer = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(caption_dropout=0.0), progress=False)
    trainer.prepare_cache()
    transformer = trainer.load_transformer()
    params = [p for p in transformer.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    batch = trainer.batch_inputs(trainer.data.train[:2], trainer.step_generator(0))

    def loss() -> float:
        with torch.no_grad():
            return float(trainer.loss(transformer, batch))

    before = loss()
    for _ in range(12):
        trainer.loss(transformer, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = loss()
    assert after < 0.9 * before, (before, after)


def test_saved_lora_reloads_into_a_fresh_pipeline_exactly(dataset, tmp_path):
    from diffusers import FluxPipeline

    # alpha != rank: a reload that ignored the adapter metadata would scale the LoRA wrongly
    trainer = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(rank=4, alpha=8, steps=3, learning_rate=1e-2,
                                                                   save_dtype="fp32"),
                          progress=False)
    result = trainer.run()
    assert result.weights.name == "pytorch_lora_weights.safetensors" and result.weights.is_file()
    assert result.step == 3 and len(result.losses) == 3

    base = FluxPipeline.from_pretrained(tiny_flux_path(), dtype=torch.float32)
    base_image = _generate(base)
    trainer.transformer.eval()
    in_memory = FluxPipeline.from_pretrained(tiny_flux_path(), transformer=trainer.transformer,
                                             dtype=torch.float32)
    trained_image = _generate(in_memory)
    fresh = FluxPipeline.from_pretrained(tiny_flux_path(), dtype=torch.float32)
    fresh.load_lora_weights(str(result.lora_dir))
    loaded_image = _generate(fresh)
    assert np.abs(trained_image - base_image).max() > 1e-4  # the LoRA changes the output ...
    np.testing.assert_allclose(loaded_image, trained_image, atol=1e-6)  # ... and reloads as trained

    card = (result.lora_dir / "README.md").read_text()
    assert "tiny-random" in card and "rank / alpha | 4 / 8" in card
    log = json.loads((result.lora_dir / "train_log.json").read_text())
    assert [e["step"] for e in log["steps"]] == [1, 2, 3]
    assert [e["loss"] for e in log["steps"]] == pytest.approx(result.losses)


def test_resume_continues_step_count_and_optimizer_state(dataset, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_cfg(steps=4, checkpoint_every=2)
    straight = train_lora(dataset, tmp_path / "straight", cfg, progress=False)

    first = train_lora(dataset, tmp_path / "split", cfg, progress=False, stop_after=3)
    assert first.step == 3
    assert [p.name for p in checkpoint_dirs(tmp_path / "split")] == ["step-000002", "step-000003"]
    with pytest.raises(ResumeError, match="--resume"):  # a fresh start must not clobber the run
        train_lora(dataset, tmp_path / "split", cfg, progress=False)
    second = train_lora(dataset, tmp_path / "split", cfg, progress=True, resume=True)
    assert second.resumed_from == 3 and second.step == 4 and len(second.losses) == 1

    optim = torch.load(checkpoint_dirs(tmp_path / "split")[-1] / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in optim["state"].values()} == {4.0}
    log = json.loads((tmp_path / "split" / "train_log.json").read_text())
    assert [e["step"] for e in log["steps"]] == [1, 2, 3, 4]
    # batches and noise depend on (seed, step) only, and Adam's moments were restored: same weights
    a = load_file(str(straight.weights))
    b = load_file(str(second.weights))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_from_a_checkpoint_of_another_rank_is_refused(dataset, tmp_path):
    train_lora(dataset, tmp_path / "lora", tiny_cfg(steps=2, checkpoint_every=1, rank=4), progress=False,
               stop_after=1)
    with pytest.raises(ResumeError, match="rank 4.*asks for 8"):
        LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(steps=2, rank=8), resume=True, progress=False)
    with pytest.raises(ResumeError, match="not a checkpoint folder"):
        LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(steps=2, rank=4), resume=tmp_path, progress=False)
    with pytest.raises(ResumeError, match="no checkpoint in"):
        LoraTrainer(dataset, tmp_path / "other", tiny_cfg(steps=2, rank=4), resume=True, progress=False)


def test_cached_latents_and_embeddings_are_reused_on_a_second_run(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("ICLORA_CACHE", str(tmp_path / "cache"))
    first = train_lora(dataset, tmp_path / "a", tiny_cfg(steps=1), progress=False)
    assert first.encoded_images == 4 and first.encoded_prompts == 5  # 4 captions + the empty one
    assert len(list((tmp_path / "cache" / "train-cache" / "latents").rglob("*.safetensors"))) == 4

    import iclora_train.trainer as trainer_module

    def no_encoders(*args, **kwargs):
        raise AssertionError("the second run must not load the VAE or text encoders")

    monkeypatch.setattr(trainer_module, "FluxEncoders", no_encoders)
    second = train_lora(dataset, tmp_path / "b", tiny_cfg(steps=1), progress=False)
    assert second.encoded_images == 0 and second.encoded_prompts == 0
    assert second.losses == pytest.approx(first.losses)  # same cached inputs, same seed


def test_uncached_training_matches_cached_training(dataset, tmp_path):
    cached = train_lora(dataset, tmp_path / "a", tiny_cfg(steps=2), progress=False)
    uncached = train_lora(dataset, tmp_path / "b", tiny_cfg(steps=2, cache_latents=False), progress=False)
    assert uncached.losses == pytest.approx(cached.losses, rel=1e-4)


# ---- bad input ----------------------------------------------------------------------------------

@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any FLUX component is loaded."""
    from diffusers import FluxTransformer2DModel

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the dataset was checked")

    monkeypatch.setattr(FluxTransformer2DModel, "load_config", refuse)
    monkeypatch.setattr(FluxTransformer2DModel, "from_pretrained", refuse)


def test_dataset_without_captions_fails_before_the_model_loads(tmp_path, no_model_loads):
    ds = write_dataset(tmp_path / "ds", 3, captions=["a caption", "", None])
    with pytest.raises(TrainDatasetError, match=r"2 of 3 rows have no caption \(set1, set2\)"):
        LoraTrainer(str(ds), tmp_path / "lora", tiny_cfg(), progress=False)


def test_sizes_that_no_bucket_fits_fail_before_the_model_loads(tmp_path, no_model_loads):
    odd = composite(0).resize((200, 64))
    ds = write_dataset(tmp_path / "odd", images=[composite(1), odd])
    with pytest.raises(TrainDatasetError, match="set1: composite is 200x64, which fits no bucket"):
        LoraTrainer(str(ds), tmp_path / "lora", tiny_cfg(), progress=False)
    mixed = write_dataset(tmp_path / "mixed", images=[composite(1), composite(2, panel=32)])
    with pytest.raises(TrainDatasetError, match="set1: composite size 96x32 fits no bucket"):
        LoraTrainer(str(mixed), tmp_path / "lora", tiny_cfg(buckets=[(192, 64)]), progress=False)


def test_mixed_sizes_train_in_separate_buckets(tmp_path):
    ds = write_dataset(tmp_path / "mixed", images=[composite(1), composite(2, panel=32), composite(3)])
    trainer = LoraTrainer(str(ds), tmp_path / "lora", tiny_cfg(validation_every=0), progress=False)
    assert {size: len(items) for size, items in trainer.data.buckets().items()} == {(96, 32): 1, (192, 64): 2}
    result = trainer.run()
    assert result.step == 4 and all(np.isfinite(result.losses))


def test_missing_dataset_and_missing_caption_column(tmp_path):
    with pytest.raises(TrainDatasetError, match="does not exist"):
        LoraTrainer(str(tmp_path / "nope"), tmp_path / "lora", tiny_cfg(), progress=False)


def test_base_path_missing_or_not_flux(dataset, tmp_path):
    with pytest.raises(BaseModelError, match="does not exist"):
        LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(base=str(tmp_path / "no-such-base")), progress=False)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(BaseModelError, match="StableDiffusionPipeline pipeline, not FLUX"):
        LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(base=str(tmp_path / "sd")), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no model_index.json"):
        LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(base=str(tmp_path / "empty")), progress=False)


def test_config_defaults_yaml_and_flag_overrides(tmp_path):
    cfg = TrainConfig()
    assert (cfg.rank, cfg.alpha, cfg.batch_size, cfg.steps, cfg.learning_rate, cfg.caption_dropout) == \
        (16, 16, 4, 5000, 1e-4, 0.05)
    assert cfg.base == "black-forest-labs/FLUX.1-dev" and cfg.mixed_precision == "bf16" and cfg.gradient_checkpointing
    assert (cfg.checkpoint_every, cfg.validation_every, cfg.ema_decay, cfg.save_dtype) == (250, 250, 0.99, "bf16")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"rank": 8, "steps": 100, "ema": True}))
    loaded = load_train_config(path, steps=7, rank=None)
    assert (loaded.rank, loaded.steps, loaded.ema) == (8, 7, True)
    path.write_text(yaml.safe_dump({"rnak": 8}))
    with pytest.raises(TrainConfigError, match="rnak"):
        load_train_config(path)
    with pytest.raises(TrainConfigError, match="quantize"):
        load_train_config(None, quantize="int3")


def test_fp8_base_trains_a_full_precision_lora(dataset, tmp_path):
    trainer = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(steps=2, quantize="fp8", mixed_precision="bf16"),
                          progress=False)
    result = trainer.run()
    weights = {n: p.dtype for n, p in trainer.transformer.named_parameters()}
    assert torch.float8_e4m3fn in {d for n, d in weights.items() if "lora_" not in n}  # frozen base stored in fp8
    # the AdaLN modulation layers too (diffusers' default skips every "norm"), but not the output head
    for name in ("transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
                 "single_transformer_blocks.0.norm.linear", "transformer_blocks.0.attn.to_q"):
        assert weights[f"{name}.base_layer.weight"] == torch.float8_e4m3fn, name
    assert weights["norm_out.linear.weight"] == weights["proj_out.weight"] == torch.float32
    assert {d for n, d in weights.items() if "lora_" in n} == {torch.float32}
    assert all(np.isfinite(result.losses)) and result.weights.is_file()


def test_int8_base_trains_a_full_precision_lora(dataset, tmp_path):
    pytest.importorskip("torchao")
    trainer = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(steps=2, quantize="int8", mixed_precision="bf16"),
                          progress=False)
    result = trainer.run()
    blocks = trainer.transformer.transformer_blocks[0]
    for layer in (blocks.norm1.linear, blocks.attn.to_q, blocks.ff.net[2]):  # AdaLN included
        assert "Int8" in type(layer.get_base_layer().weight).__name__
    lora = {p.dtype for n, p in trainer.transformer.named_parameters() if "lora_" in n}
    assert lora == {torch.float32} and all(np.isfinite(result.losses)) and result.weights.is_file()


def test_nf4_and_8bit_adam_without_cuda_are_refused_not_swapped(dataset, tmp_path, no_model_loads):
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    with pytest.raises(BaseModelError, match="nf4 needs bitsandbytes"):
        train_lora(dataset, tmp_path / "lora", tiny_cfg(quantize="nf4"), progress=False)
    with pytest.raises(BaseModelError, match="adamw8bit needs bitsandbytes .* CUDA GPU .*on cpu"):
        train_lora(dataset, tmp_path / "lora", tiny_cfg(optimizer="adamw8bit"), progress=False)


def test_caption_dropout_trains_on_the_empty_caption(dataset, tmp_path):
    trainer = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(caption_dropout=1.0), progress=False)
    trainer.prepare_cache()
    batch = trainer.batch_inputs(trainer.data.train[:2], trainer.step_generator(0))["inputs"]
    (empty,) = trainer._texts([""])
    for row in batch["encoder_hidden_states"]:
        torch.testing.assert_close(row, empty.prompt_embeds)
    kept = LoraTrainer(dataset, tmp_path / "lora2", tiny_cfg(caption_dropout=0.0), progress=False)
    kept.prepare_cache()
    batch = kept.batch_inputs(kept.data.train[:2], kept.step_generator(0))["inputs"]
    assert not torch.allclose(batch["encoder_hidden_states"][0], empty.prompt_embeds)


def test_shifted_sigmoid_sampling_moves_noise_up_for_larger_images():
    from iclora_train.trainer import sample_sigmas

    sched = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
    cfg = tiny_cfg(timestep_sampling="shifted_sigmoid")
    small = sample_sigmas(cfg, 4000, 256, sched, torch.Generator().manual_seed(0))
    large = sample_sigmas(cfg, 4000, 4096, sched, torch.Generator().manual_seed(0))
    assert float(small.min()) > 0 and float(large.max()) < 1
    assert float(large.mean()) > float(small.mean()) + 0.05
    plain = sample_sigmas(tiny_cfg(), 4000, 4096, sched, torch.Generator().manual_seed(0))
    assert abs(float(plain.mean()) - 0.5) < 0.02  # logit-normal(0, 1) is centred


def test_ema_weights_are_saved_and_resumed(dataset, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_cfg(steps=3, ema=True, ema_decay=0.5, checkpoint_every=2, learning_rate=1e-2, save_dtype="fp32")
    trainer = LoraTrainer(dataset, tmp_path / "lora", cfg, progress=False)
    result = trainer.run(stop_after=2)
    assert (checkpoint_dirs(tmp_path / "lora")[-1] / "ema.pt").is_file()
    from peft.utils import get_peft_model_state_dict

    raw = get_peft_model_state_dict(trainer.transformer)
    saved = load_file(str(result.weights))
    key = next(k for k in raw if "lora_B" in k)
    saved_key = next(k for k in saved if k.endswith(key))
    assert not torch.allclose(saved[saved_key], raw[key])  # the EMA, not the last step's weights
    resumed = train_lora(dataset, tmp_path / "lora", cfg, progress=False, resume=True)
    assert resumed.step == 3


def test_trains_on_the_dataset_that_publish_writes(tmp_path):
    """The real writer (iclora_data.publish) on a finished build, read through load_dataset."""
    from _publish_helpers import kept_captioned_ids, make_finished_out

    from iclora_data.publish import write_dataset as publish_dataset
    from iclora_train.data import load_train_data

    out = make_finished_out(tmp_path)
    publish_dataset(out)
    cfg = tiny_cfg(steps=1, scale=0.0625, validation_every=0)
    data = load_train_data(str(out / "dataset"), cfg)
    assert sorted(it.set_id for it in data.train) == sorted(kept_captioned_ids(out))
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in data.buckets())
    result = train_lora(str(out / "dataset"), tmp_path / "lora", cfg, progress=False)
    assert result.step == 1 and result.weights.is_file()


@pytest.mark.slow
def test_gradient_checkpointing_trades_memory_not_results(dataset, tmp_path):
    from safetensors.torch import load_file

    plain = train_lora(dataset, tmp_path / "a", tiny_cfg(steps=2, learning_rate=1e-2), progress=False)
    ckpt = train_lora(dataset, tmp_path / "b", tiny_cfg(steps=2, learning_rate=1e-2, gradient_checkpointing=True),
                      progress=False)
    a, b = load_file(str(plain.weights)), load_file(str(ckpt.weights))
    assert any(float(v.abs().max()) > 0 for k, v in b.items() if "lora_B" in k)  # gradients reached the LoRA
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_a_second_run_on_the_same_folder_is_refused(dataset, tmp_path):
    from iclora_data.store import RunStore
    from iclora_train.errors import OutputBusyError

    with RunStore(tmp_path / "lora").lock(), pytest.raises(OutputBusyError, match="in use by another"):
        train_lora(dataset, tmp_path / "lora", tiny_cfg(), progress=False)


def test_gradient_accumulation_and_batch_split_give_the_same_run(dataset, tmp_path):
    """A global batch of 4 as 4x1, 2x2 or 1x4 micro-batches: same losses, same LoRA."""
    from safetensors.torch import load_file

    runs = [train_lora(dataset, tmp_path / f"b{b}", tiny_cfg(steps=2, batch_size=b, gradient_accumulation=4 // b,
                                                              learning_rate=1e-2, save_dtype="fp32"), progress=False)
            for b in (4, 2, 1)]
    weights = [load_file(str(r.weights)) for r in runs]
    for run, w in zip(runs[1:], weights[1:], strict=True):
        assert run.losses == pytest.approx(runs[0].losses, rel=1e-4)
        for key in weights[0]:  # Adam magnifies float-order noise in near-zero gradients
            torch.testing.assert_close(w[key], weights[0][key], rtol=1e-3, atol=1e-4)


def test_learning_rate_warmup_and_schedule_follow_diffusers(dataset, tmp_path):
    result = train_lora(dataset, tmp_path / "lora", tiny_cfg(steps=4, learning_rate=1e-3, lr_scheduler="linear",
                                                             lr_warmup_steps=2), progress=False)
    log = json.loads((result.lora_dir / "train_log.json").read_text())
    # linear warmup over 2 steps to 1e-3, then linear decay to 0 at step 4 (lr after each step)
    assert [e["lr"] for e in log["steps"]] == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])


def test_multi_resolution_buckets_keep_the_grid_and_never_upscale(tmp_path):
    from iclora_train.data import load_train_data

    ds = write_dataset(tmp_path / "ds", 2)  # 192x64, 1x3 panels of 64
    data = load_train_data(str(ds), tiny_cfg(resolutions=[32, 64, 512]))
    buckets = data.buckets()
    assert sorted(buckets) == [(48, 16), (96, 32), (192, 64)]  # ~32^2, ~64^2, own size (512^2 is larger)
    for (w, h), items in buckets.items():
        assert len(items) == 2 and w % 3 == 0 and (w // 3) % 16 == 0 and h % 16 == 0
    assert load_train_config(None, preset="ic-lora-24gb").resolutions == [512, 768, 1024, 1280, 1536]


def test_the_lora_file_applies_the_same_delta_in_diffusers_and_comfyui(dataset, tmp_path):
    """diffusers' loader and ComfyUI's convention (delta = up @ down * alpha / rank, alpha from the
    ``<module>.alpha`` tensor) must change every weight alike; alpha != rank makes a wrong scale show."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    result = train_lora(dataset, tmp_path / "lora", tiny_cfg(steps=2, rank=4, alpha=8, learning_rate=1e-2),
                        progress=False)
    state = load_file(str(result.weights))
    downs = {k[: -len(".lora_A.weight")]: v for k, v in state.items() if k.endswith(".lora_A.weight")}
    assert downs and {v.dtype for k, v in state.items() if not k.endswith(".alpha")} == {torch.bfloat16}
    base = FluxPipeline.from_pretrained(tiny_flux_path(), dtype=torch.float32).transformer
    pipe = FluxPipeline.from_pretrained(tiny_flux_path(), dtype=torch.float32)
    pipe.load_lora_weights(str(result.lora_dir))
    pipe.fuse_lora()
    for module, down in downs.items():
        up, alpha = state[f"{module}.lora_B.weight"], state[f"{module}.alpha"].item()
        assert alpha == 8.0
        comfy = up.float() @ down.float() * alpha / down.shape[0]
        name = module.removeprefix("transformer.")
        fused = pipe.transformer.get_submodule(name).get_base_layer().weight
        torch.testing.assert_close(fused - base.get_submodule(name).weight, comfy, rtol=1e-3, atol=1e-6)
