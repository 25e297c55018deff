"""The training math against diffusers' own functions, and an end-to-end overfit.

Each test names the one-line mistake it catches (scripts/mutation_check.py applies them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_helpers import composite, single_thread, write_dataset  # noqa: F401  (fixture)

from iclora_train.config import TrainConfig
from iclora_train.tiny_flux import tiny_flux_path
from iclora_train.trainer import LoraTrainer, train_lora

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(**kw) -> TrainConfig:
    settings = dict(base="tiny-random", steps=2, batch_size=2, learning_rate=1e-3, checkpoint_every=0,
                    validation_every=0, max_sequence_length=32, mixed_precision="no", caption_dropout=0.0)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    # 1x3 panels of 64x32: a non-square latent, so swapped height and width show
    return str(write_dataset(tmp_path_factory.mktemp("ds"), 2, rows=3, cols=1, panel=32))


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory) -> LoraTrainer:
    trainer = LoraTrainer(dataset, tmp_path_factory.mktemp("lora"), tiny_cfg(), progress=False)
    trainer.prepare_cache()
    return trainer


def test_noisy_latents_and_velocity_target_follow_the_flow_match_scheduler(prepared):
    """Catches a flipped target sign and a wrong noise interpolation: diffusers' Euler step with the
    target as the model's output must land exactly on the clean latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    batch = prepared.batch_inputs(prepared.data.train[:2], prepared.step_generator(3))
    x0, noise, sigmas = batch["x0"], batch["noise"], batch["sigmas"]
    _, _, h, w = x0.shape
    noisy = FluxPipeline._unpack_latents(batch["inputs"]["hidden_states"].float(), h * 8, w * 8, 8)
    target = FluxPipeline._unpack_latents(batch["target"].float(), h * 8, w * 8, 8)
    assert float(sigmas.min()) > 0 and float(sigmas.max()) < 1
    for i, sigma in enumerate(sigmas.tolist()):
        scheduler = FlowMatchEulerDiscreteScheduler()  # shift 1: the given sigma is used as it is
        scheduler.set_timesteps(sigmas=[sigma])
        t = scheduler.timesteps[:1]
        torch.testing.assert_close(scheduler.sigmas[0].item(), sigma)
        expected = scheduler.scale_noise(x0[i:i + 1], t, noise[i:i + 1])
        torch.testing.assert_close(noisy[i:i + 1], expected, rtol=1e-5, atol=1e-5)
        stepped = scheduler.step(target[i:i + 1], t[0], noisy[i:i + 1]).prev_sample  # sigma -> 0
        torch.testing.assert_close(stepped, x0[i:i + 1], rtol=1e-4, atol=1e-4)


def test_transformer_gets_the_timestep_ids_and_guidance_that_flux_pipeline_gives_it(prepared, monkeypatch):
    """Catches a timestep scale (sigma vs t), swapped image-id axes and a wrong guidance value: the
    trainer's inputs must equal what diffusers' FluxPipeline passes its transformer at that sigma."""
    from diffusers import FluxPipeline

    import iclora_train.trainer as trainer_module

    pipe = FluxPipeline.from_pretrained(tiny_flux_path(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    seen: dict = {}

    def spy(module, args, kwargs):
        seen.setdefault("kwargs", kwargs)

    handle = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    item = prepared.data.train[0]
    width, height = item.bucket
    pipe(prompt="x", width=width, height=height, num_inference_steps=1, sigmas=[0.7],
         guidance_scale=prepared.cfg.guidance, max_sequence_length=32, output_type="latent")
    handle.remove()
    piped = seen["kwargs"]
    pipe_sigma = float(pipe.scheduler.sigmas[0])  # after FLUX's resolution shift
    monkeypatch.setattr(trainer_module, "sample_sigmas", lambda cfg, n, *a: torch.full((n,), pipe_sigma))
    ours = prepared.batch_inputs([item], prepared.step_generator(0))["inputs"]
    torch.testing.assert_close(ours["timestep"].float(), piped["timestep"].float())
    torch.testing.assert_close(ours["img_ids"].float(), piped["img_ids"].float())
    torch.testing.assert_close(ours["guidance"].float(), piped["guidance"].float())
    assert ours["hidden_states"].shape == piped["hidden_states"].shape


def test_latents_are_the_vae_posterior_with_the_configs_shift_and_scale(prepared, dataset, tmp_path):
    """Catches a wrong or missing VAE shift/scale: the cached latent must be what diffusers' own image
    processor and VAE give, shifted and scaled by the VAE config (FluxPipeline decodes with its inverse)."""
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    vae = AutoencoderKL.from_pretrained(tiny_flux_path(), subfolder="vae", dtype=torch.float32)
    item = prepared.data.train[0]
    pixels = VaeImageProcessor(vae_scale_factor=8).preprocess(prepared.data.image(item))
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
    expected = (dist.mean[0] - vae.config.shift_factor) * vae.config.scaling_factor
    assert prepared._latent(item).mean.device.type == "cpu"  # what is cached lives on the CPU
    # encoded now, not read from the disk cache of an earlier run
    fresh = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(cache_latents=False), progress=False)
    latent = fresh._latent(item)
    torch.testing.assert_close(latent.mean.float(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(latent.std.float(), dist.std[0] * vae.config.scaling_factor, rtol=1e-4, atol=1e-6)


def test_first_step_with_latents_on_another_device_than_the_generator(dataset, tmp_path):
    """The first run on a GPU: freshly encoded latents on the accelerator, noise from a CPU generator.
    The ``meta`` device stands in for CUDA (any tensor there mixed with a CPU tensor fails the same way)."""
    trainer = LoraTrainer(dataset, tmp_path / "lora", tiny_cfg(cache_latents=False), progress=False)
    trainer.device = torch.device("meta")  # encoders, latents, transformer all there
    transformer = trainer.load_transformer()
    batch = trainer.batch_inputs(trainer.data.train[:2], trainer.step_generator(0))
    assert batch["x0"].device.type == "meta"
    assert {v.device.type for v in batch["inputs"].values() if v is not None} == {"meta"}
    loss = trainer.loss(transformer, batch)
    loss.backward()
    assert loss.device.type == "meta"


def test_gradient_checkpointing_is_on_by_default_and_used(dataset, tmp_path):
    """Catches checkpointing switched off: every transformer block must run through the checkpoint."""
    cfg = tiny_cfg()
    assert TrainConfig().gradient_checkpointing and cfg.gradient_checkpointing
    trainer = LoraTrainer(dataset, tmp_path / "lora", cfg, progress=False)
    trainer.prepare_cache()
    transformer = trainer.load_transformer()
    assert transformer.is_gradient_checkpointing
    calls = []
    inner = transformer._gradient_checkpointing_func
    transformer._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or inner(*a, **k)
    trainer.loss(transformer, trainer.batch_inputs(trainer.data.train[:1], trainer.step_generator(0))).backward()
    blocks = len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    assert len(calls) == blocks


def test_sigma_sampling_is_diffusers_logit_normal(prepared):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from iclora_train.trainer import sample_sigmas

    ours = sample_sigmas(tiny_cfg(logit_mean=0.3, logit_std=0.8), 4096, 64, {}, torch.Generator().manual_seed(1))
    theirs = compute_density_for_timestep_sampling("logit_normal", 4096, logit_mean=0.3, logit_std=0.8,
                                                   generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, theirs.clamp(1e-5, 1 - 1e-5))


def test_a_lora_overfit_on_one_composite_is_reproduced_by_diffusers_flux_pipeline(tmp_path):
    """End to end: train on one composite, then diffusers' FluxPipeline with the saved LoRA (and not the
    base) generates latents near that composite's, which the test encodes itself with diffusers' VAE."""
    from diffusers import AutoencoderKL, FluxPipeline
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    image = composite(5, panel=32)
    other = Image.fromarray(255 - np.asarray(image))  # the negative: another composite, far from this one
    caption = "[IMAGE1] red [IMAGE2] green [IMAGE3] blue"
    ds = write_dataset(tmp_path / "ds", images=[image], captions=[caption])
    cfg = tiny_cfg(steps=150, batch_size=4, learning_rate=1e-2, rank=16, alpha=16, save_dtype="fp32")
    result = train_lora(str(ds), tmp_path / "lora", cfg, progress=False)
    assert result.losses[-1] < 0.7 * result.losses[0]

    vae = AutoencoderKL.from_pretrained(tiny_flux_path(), subfolder="vae", dtype=torch.float32)
    processor = VaeImageProcessor(vae_scale_factor=8)

    def latent(img):
        with torch.no_grad():
            mean = vae.encode(processor.preprocess(img)).latent_dist.mean
        return (mean - vae.config.shift_factor) * vae.config.scaling_factor

    wanted, unrelated = latent(image), latent(other)
    pipe = FluxPipeline.from_pretrained(tiny_flux_path(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def generate() -> torch.Tensor:
        packed = pipe(caption, width=image.width, height=image.height, num_inference_steps=20,
                      guidance_scale=cfg.guidance, max_sequence_length=32, output_type="latent",
                      generator=torch.Generator().manual_seed(0)).images
        return FluxPipeline._unpack_latents(packed, image.height, image.width, pipe.vae_scale_factor)

    def error(a, b) -> float:
        return float((a - b).pow(2).mean())

    base = generate()
    pipe.load_lora_weights(str(result.lora_dir))
    tuned = generate()
    assert error(tuned, wanted) < 0.6 * error(base, wanted), (error(tuned, wanted), error(base, wanted))
    assert error(tuned, wanted) < 0.9 * error(tuned, unrelated), (error(tuned, wanted), error(tuned, unrelated))
    assert np.isfinite(result.losses).all()
