"""End-to-end retraining on tiny random models: build -> train -> sample -> model card, artifacts,
no retraining on unchanged data, retraining when a set is added, and sampling without a preset."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests._flows_helpers import many_sets
from tests._train_helpers import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("prefect_harness", "single_thread")

PRESET = "couple-profile"  # 2048x1024, two panels side by side
SCALE = 0.0625  # 128x64 composites for training and sampling
# The default settings, shrunk to a CPU: two steps on the tiny base at 1/16 size, two denoising
# steps per validation sample. Checkpoints and validation samples stay on (every 2 steps here, as
# every 250 of a default run): the model card and the next retrain must cope with a LoRA folder
# that holds checkpoints. Mixed precision, checkpointing, EMA, optimizer: the defaults.
TRAIN = {"base": "tiny-random", "steps": 2, "batch_size": 2, "scale": SCALE, "checkpoint_every": 2,
         "validation_every": 2, "validation_steps": 2}
BUILD = {"compose": {"preset": PRESET}, "caption": {"model": "tiny-random"}}


def _retrain(source, out, lora):
    from flows.retrain import retrain

    return retrain(str(source), str(out), str(lora), BUILD, TRAIN, samples=2, sample_steps=2, sample_scale=SCALE)


def test_retrain_builds_trains_samples_and_skips_unchanged_data(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    source = many_sets(tmp_path / "SOURCE", 4)
    out, lora = tmp_path / "OUT", tmp_path / "LORA"

    first = _retrain(source, out, lora)
    assert first["trained"] and first["step"] == 2
    assert [p.name for p in (lora / "checkpoints").iterdir()] == ["step-000002"]
    assert json.loads((lora / "retrain.json").read_text())["fingerprint"] == first["fingerprint"]
    assert not (lora / "retrain-pending.json").exists()
    assert first["build"]["counts"]["kept"] == 4
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert len(first["samples"]) == 2
    for composite in first["samples"]:
        with Image.open(composite) as im:
            assert im.size == (128, 64)
        panels = sorted(p.name for p in (lora / "samples").glob(f"{composite.split('/')[-2]}/panel-*.png"))
        assert panels == ["panel-1.png", "panel-2.png"]
    card = (lora / "README.md").read_text()
    assert "![sample 1](samples/sample-001/composite.png)" in card
    assert "![sample 2](samples/sample-002/composite.png)" in card
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["iclora-lora", "iclora-samples"])))
    weights_uri = (lora / "pytorch_lora_weights.safetensors").resolve().as_uri()
    assert any(a.key == "iclora-lora" and weights_uri in str(a.data) for a in artifacts)
    assert any(a.key == "iclora-samples" and "sample-002" in str(a.data) for a in artifacts)

    second = _retrain(source, out, lora)
    assert not second["trained"]
    assert second["build"]["decoded_images"] == 0
    assert second["weights"] == first["weights"]

    many_sets(source, 1, start=4)  # one new set: the data changed, so the LoRA is trained again
    third = _retrain(source, out, lora)
    assert third["trained"]
    assert third["build"]["decoded_images"] == 2
    assert third["build"]["counts"]["kept"] == 5
    state = json.loads((lora / "retrain.json").read_text())
    assert state["fingerprint"] == third["fingerprint"] != first["fingerprint"]
    assert third["step"] == 2  # a fresh run on the new data, not a resume of the old one


def test_retrain_without_a_preset_samples_at_the_grid_it_trained_on(tmp_path):
    from datasets import load_dataset

    from flows.retrain import retrain

    source = many_sets(tmp_path / "SOURCE", 2)
    out, lora = tmp_path / "OUT", tmp_path / "LORA"
    result = retrain(str(source), str(out), str(lora), {"caption": {"model": "tiny-random"}}, TRAIN, samples=1,
                     sample_steps=2, sample_scale=SCALE)
    row = load_dataset("parquet", data_dir=str(out / "dataset" / "data"), split="train")[0]
    [composite] = result["samples"]
    with Image.open(composite) as im:
        width, height = im.size
    # automatic layout: the sample has the dataset's grid and aspect, drawn at the sampling scale
    panels = sorted((lora / "samples").glob(f"{composite.split('/')[-2]}/panel-*.png"))
    assert len(panels) == row["rows"] * row["cols"] == 2
    assert abs(width / height - row["width"] / row["height"]) < 0.15 * row["width"] / row["height"]
    assert width < row["width"] and height < row["height"]
