"""Sampling: panels by the layout, reference panels unchanged, prompt files, the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from _train_helpers import composite, single_thread, write_dataset  # noqa: F401  (fixture)
from PIL import Image
from typer.testing import CliRunner

from iclora_data.errors import IcloraError
from iclora_data.layout import fit_panel
from iclora_data.presets import get_preset
from iclora_train.commands import sample, train
from iclora_train.config import TrainConfig
from iclora_train.errors import SampleError
from iclora_train.sample import read_prompts, sample_layout, sample_sets
from iclora_train.trainer import train_lora

SCALE = 0.0625  # film-storyboard 1024x1536 (3x1) -> 64x96, panels 64x32

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    ds = write_dataset(root / "ds", 2)
    cfg = TrainConfig(base="tiny-random", steps=2, batch_size=2, learning_rate=1e-2, checkpoint_every=0,
                      validation_every=0, max_sequence_length=32, mixed_precision="no",
                      gradient_checkpointing=False)
    return train_lora(str(ds), root / "lora", cfg, progress=False).lora_dir


def test_sampling_splits_a_3x1_composite_into_the_presets_panels(lora_dir, tmp_path):
    preset = get_preset("film-storyboard")
    results = sample_sets(lora_dir, ["[MOVIE-SHOTS] a [SCENE-1] b [SCENE-2] c [SCENE-3] d", "second"],
                          "film-storyboard", tmp_path, steps=2, scale=SCALE)
    assert len(results) == 2
    layout = sample_layout("film-storyboard", SCALE)
    assert (layout.rows, layout.cols) == (preset.rows, preset.cols) == (3, 1)
    expected_panel = (preset.width // preset.cols * SCALE, preset.height // preset.rows * SCALE)
    for result in results:
        image = Image.open(result.composite)
        assert image.size == (layout.width, layout.height) == (64, 96)
        panels = [Image.open(p) for p in result.panels]
        assert len(panels) == 3 and all(p.size == expected_panel for p in panels)
        for panel, box in zip(panels, layout.panel_boxes(), strict=True):  # panel k is the k-th box of the layout
            assert np.array_equal(np.asarray(panel), np.asarray(image.crop(box)))
        settings = json.loads(result.settings.read_text())
        assert settings["panel_boxes"] == [list(b) for b in layout.panel_boxes()]
        assert settings["steps"] == 2 and settings["guidance"] == 3.5 and settings["mode"] == "text"
    assert [r.settings_data["seed"] for r in results] == [0, 1]
    a, b = (np.asarray(Image.open(r.composite), dtype=np.int16) for r in results)
    assert np.abs(a - b).max() > 0  # different prompts and seeds give different sets


def test_reference_panel_comes_back_unchanged(lora_dir, tmp_path):
    reference = composite(7, cols=1, panel=64).resize((80, 50))  # any size: fitted into the slot
    ref_path = tmp_path / "ref.png"
    reference.save(ref_path)
    (result,) = sample_sets(lora_dir, ["a set"], "film-storyboard", tmp_path / "out", steps=2, scale=SCALE,
                            references=[f"2={ref_path}"])
    layout = sample_layout("film-storyboard", SCALE)
    expected = np.asarray(fit_panel(reference, layout.panel_size, "crop"))
    panels = [np.asarray(Image.open(p)) for p in result.panels]
    assert np.array_equal(panels[1], expected)  # the known panel, pixel for pixel
    for k in (0, 2):  # the masked panels were generated, not copied from the reference
        assert np.abs(panels[k].astype(int) - expected.astype(int)).mean() > 5
    settings = result.settings_data
    assert settings["mode"] == "inpaint" and settings["references"] == {"2": str(ref_path)}


def test_bad_sampling_input_is_refused(lora_dir, tmp_path):
    with pytest.raises(SampleError, match="PANEL=IMAGE"):
        sample_sets(lora_dir, ["x"], "film-storyboard", tmp_path, scale=SCALE, references=["photo.jpg"])
    with pytest.raises(SampleError, match="panel 4 does not exist"):
        sample_sets(lora_dir, ["x"], "film-storyboard", tmp_path, scale=SCALE, references=[f"4={tmp_path}"])
    with pytest.raises(SampleError, match="unknown preset"):
        sample_sets(lora_dir, ["x"], "no-such-preset", tmp_path)
    with pytest.raises(SampleError, match="holds no pytorch_lora_weights.safetensors"):
        sample_sets(tmp_path, ["x"], "film-storyboard", tmp_path / "o", scale=SCALE)


def test_prompt_file_empty_lines_are_skipped_and_reported(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first set\n\n  \nsecond set\n")
    assert read_prompts(path) == (["first set", "second set"], [2, 3])
    path.write_text("\n\n")
    with pytest.raises(SampleError, match="no prompts"):
        read_prompts(path)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train)
    app.command("sample")(sample)
    return app


def test_cli_train_then_sample(tmp_path):
    ds = write_dataset(tmp_path / "ds", 3)
    runner = CliRunner()
    cfg = tmp_path / "train.yaml"
    cfg.write_text("max_sequence_length: 32\nmixed_precision: 'no'\nbatch_size: 2\nvalidation_steps: 2\n")
    res = runner.invoke(_app(), ["train", str(ds), "--out", str(tmp_path / "lora"), "--base", "tiny-random",
                                 "--config", str(cfg), "--steps", "2", "--validation-every", "2",
                                 "--checkpoint-every", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "trained to step 2" in res.output
    lora = tmp_path / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert list((lora / "samples").glob("step-000002-1.png"))  # held-out caption sampled at the end
    assert "samples/step-000002-1.png" in (lora / "README.md").read_text()

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n\ntwo\n")
    res = runner.invoke(_app(), ["sample", str(lora), "--preset", "film-storyboard", "--prompts", str(prompts),
                                 "--steps", "2", "--scale", str(SCALE), "--out", str(tmp_path / "samples")])
    assert res.exit_code == 0, res.output
    assert f"skipped empty line 2 of {prompts}" in res.output
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["sample-001", "sample-002"]
    assert len(list((tmp_path / "samples" / "sample-002").glob("panel-*.png"))) == 3


def test_cli_errors_are_iclora_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                                 "--base", "tiny-random"])
    assert isinstance(res.exception, IcloraError) and "does not exist" in str(res.exception)
    res = runner.invoke(_app(), ["sample", str(tmp_path), "--preset", "film-storyboard", "--out",
                                 str(tmp_path / "o")])
    assert isinstance(res.exception, SampleError) and "exactly one of --prompt" in str(res.exception)


def test_a_flux_fill_base_fills_around_references(lora_dir, tmp_path):
    from _train_helpers import save_tiny_fill_base

    fill = save_tiny_fill_base(tmp_path / "fill")
    ref_path = tmp_path / "ref.png"
    composite(3, cols=1).save(ref_path)
    with pytest.raises(SampleError, match="Fill model: it needs --reference"):
        sample_sets(lora_dir, ["x"], "film-storyboard", tmp_path / "a", steps=2, scale=SCALE, base=str(fill))
    (result,) = sample_sets(lora_dir, ["x"], "film-storyboard", tmp_path / "b", steps=2, scale=SCALE,
                            base=str(fill), references=[f"1={ref_path}"])
    layout = sample_layout("film-storyboard", SCALE)
    expected = np.asarray(fit_panel(Image.open(ref_path).convert("RGB"), layout.panel_size, "crop"))
    assert result.settings_data["mode"] == "fill"
    assert result.settings_data["guidance"] == 30.0  # FLUX Fill's guidance unless one is given
    assert np.array_equal(np.asarray(Image.open(result.panels[0])), expected)


def test_without_a_preset_a_set_takes_the_grid_and_size_the_lora_trained_at(tmp_path):
    """A 2x2 layout that is no preset (as ``--layout 2x2`` or automatic grids give) at scale 0.5."""
    ds = write_dataset(tmp_path / "ds", 2, rows=2, cols=2, panel=64)  # 128x128 composites
    cfg = TrainConfig(base="tiny-random", steps=1, batch_size=2, checkpoint_every=0, validation_every=0,
                      max_sequence_length=32, mixed_precision="no", scale=0.5)
    lora = train_lora(str(ds), tmp_path / "lora", cfg, progress=False).lora_dir
    (result,) = sample_sets(lora, ["four panels"], None, tmp_path / "out", steps=2)
    assert Image.open(result.composite).size == (64, 64)  # trained at half of 128x128
    assert [Image.open(p).size for p in result.panels] == [(32, 32)] * 4
    assert result.settings_data["grid"] == "2x2" and result.settings_data["guidance"] == 3.5
    # with a preset, the preset's grid at the scale the LoRA trained at
    (result,) = sample_sets(lora, ["x"], "couple-profile", tmp_path / "preset", steps=2)
    assert Image.open(result.composite).size == (1024, 512)


def test_reference_panels_are_kept_in_the_inpainting_mask_before_any_paste_back(lora_dir, tmp_path):
    """The mask the pipeline gets, read through diffusers' own mask processor: 0 (keep the input)
    over every reference panel, 1 (generate) over the others; the input holds the references."""
    from iclora_train.sample import Sampler

    sampler = Sampler(lora_dir, references=True)
    real, seen = sampler.pipe, {}

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    sampler.pipe = spy
    layout = sample_layout("film-storyboard", SCALE)
    refs = {1: composite(3, cols=1, panel=64), 3: composite(4, cols=1, panel=64)}
    sampler.generate("x", layout, seed=0, steps=2, guidance=3.5, references=refs)
    mask = real.mask_processor.preprocess(seen["mask_image"], height=layout.height, width=layout.width)[0, 0]
    image = np.asarray(seen["image"])
    for number, (x0, y0, x1, y1) in enumerate(layout.panel_boxes(), start=1):
        region = mask[y0:y1, x0:x1]
        if number in refs:
            assert float(region.max()) == 0.0, number
            expected = np.asarray(fit_panel(refs[number], layout.panel_size, "crop"))
            assert np.array_equal(image[y0:y1, x0:x1], expected)
        else:
            assert float(region.min()) == 1.0, number


def test_fp8_sampling_stores_the_transformer_in_fp8_and_keeps_the_lora(lora_dir, tmp_path):
    import torch

    from iclora_train.sample import Sampler

    sampler = Sampler(lora_dir, quantize="fp8")
    dtypes = {n: p.dtype for n, p in sampler.pipe.transformer.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == torch.float8_e4m3fn
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    image = sampler.generate("x", sample_layout("film-storyboard", SCALE), seed=0, steps=2, guidance=3.5)
    assert image.size == (64, 96) and np.asarray(image).std() > 0


def test_offload_needs_a_gpu(lora_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without a GPU")
    with pytest.raises(SampleError, match="--offload model moves models between the CPU and a GPU"):
        sample_sets(lora_dir, ["x"], "film-storyboard", tmp_path, scale=SCALE, offload="model")
