"""The transformers backend on the built-in tiny random Qwen-VL models: the real path, on a CPU, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _caption_helpers import make_composite

from iclora_data.caption import (
    CaptionerError,
    CaptionRequest,
    CaptionSettings,
    caption_schema,
    caption_sets,
    check_captioner,
    effective_settings,
    load_captioner,
    parse_caption,
)
from iclora_data.caption import transformers_backend as tb
from iclora_data.caption.run import _panels
from iclora_data.caption.schema import split_rendered
from iclora_data.caption.tiny_random import build_tiny_model, tiny_model_dir
from iclora_data.records import CompositeRecord
from iclora_data.store import RunStore

TINY = CaptionSettings(model="tiny-random", batch_size=4, max_attempts=1)
MIXED = [(3, "film-storyboard"), (2, None), (4, "font-design"), (2, "couple-profile"), (2, "sandstorm-vfx")]


@pytest.fixture(scope="module")
def composites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CompositeRecord]]:
    folder = tmp_path_factory.mktemp("composites")
    return folder, [make_composite(folder, f"set-{i}", n, preset, seed=i) for i, (n, preset) in enumerate(MIXED)]


def test_tiny_model_builds_once_into_the_cache() -> None:
    path = tiny_model_dir()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir() == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_every_caption_is_well_formed_with_constrained_decoding(
        tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    records = caption_sets(comps, folder, RunStore(tmp_path), TINY)
    assert len(records) == len(comps)
    for rec, comp in zip(records, comps, strict=True):
        assert rec.status == "ok", rec.error
        assert rec.attempts == 1  # structure from the grammar, not from retries
        assert rec.captioner.startswith("transformers:tiny-random@")
        assert len(rec.panels) == len(comp.panel_boxes) and rec.summary and all(rec.panels)
        back = split_rendered(rec.caption, comp)  # the preset's tags, each once, in order
        assert back is not None and list(back.panels) == rec.panels
        if comp.prefix:
            assert rec.caption.startswith(comp.prefix + " ")


def test_batched_equals_one_by_one(composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    settings = effective_settings(TINY)
    captioner = load_captioner(settings)
    requests = [CaptionRequest(c.set_id, _panels(c, folder), f"Caption set {c.set_id} " * (i + 1),
                               caption_schema(len(c.panel_boxes), settings.max_chars, plain_ascii=True))
                for i, c in enumerate(comps[:3])]  # different prompt lengths and panel counts: left padding
    batched = captioner.generate(requests, attempt=1)
    single = [captioner.generate([r], attempt=1)[0] for r in requests]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)
    for answer, request in zip(batched, requests, strict=True):
        assert isinstance(answer, str)
        parse_caption(answer, request.n)


def test_model_loads_once_per_process(tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    load_captioner(TINY)
    before = tb.load_count
    for batch_size in (1, 2):  # other generation settings: another captioner, the same weights
        caption_sets(comps[:2], folder, RunStore(tmp_path / str(batch_size)),
                     TINY.model_copy(update={"batch_size": batch_size}))
    assert tb.load_count == before
    assert load_captioner(TINY) is load_captioner(TINY)


def test_rerun_does_no_generation(tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    store = RunStore(tmp_path)
    first = caption_sets(comps[:2], folder, store, TINY)
    captioner = load_captioner(TINY)
    calls = captioner.generate_calls  # type: ignore[attr-defined]
    second = caption_sets(comps[:2], folder, store, TINY)
    assert captioner.generate_calls == calls  # type: ignore[attr-defined]
    assert [r.caption for r in second] == [r.caption for r in first]


def test_unconstrained_noise_is_retried_then_reported(
        tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    settings = TINY.model_copy(update={"constrained": False, "max_attempts": 2, "max_new_tokens": 24})
    records = caption_sets(comps[:2], folder, RunStore(tmp_path), settings)
    for rec in records:
        assert rec.status == "failed" and rec.caption == "" and rec.attempts == 2
        assert rec.error is not None and rec.error.startswith("caption failed after 2 attempts: ")


def test_tiny_qwen2_5_vl_captions_well_formed(tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    model_dir = build_tiny_model(tmp_path / "tiny-qwen2.5-vl", "qwen2_5_vl")
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    settings = CaptionSettings(model=str(model_dir), dtype="float32", max_chars=24, max_new_tokens=600,
                               min_pixels=56 * 56, max_pixels=112 * 112, max_attempts=1,
                               checks="structure")  # random weights: its words are noise
    records = caption_sets(comps[:2], folder, RunStore(tmp_path / "out"), settings)
    for rec, comp in zip(records, comps, strict=False):
        assert rec.status == "ok" and len(rec.panels) == len(comp.panel_boxes), rec.error
    assert records[0].captioner.startswith(f"transformers:{model_dir}@local-")


def test_missing_model_path_is_one_clear_error(tmp_path: Path) -> None:
    settings = CaptionSettings(model=str(tmp_path / "no-such-model"))
    with pytest.raises(CaptionerError, match="does not exist"):
        check_captioner(settings)
    with pytest.raises(CaptionerError, match="does not exist"):
        load_captioner(settings)


def test_folder_without_config_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerError, match="no usable config.json"):
        load_captioner(CaptionSettings(model=str(tmp_path / "empty")))


def test_text_only_model_is_not_a_vision_language_model(tmp_path: Path) -> None:
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32).save_pretrained(tmp_path / "text-only")
    before = tb.load_count
    with pytest.raises(CaptionerError, match="'qwen2' model, not a vision-language model"):
        load_captioner(CaptionSettings(model=str(tmp_path / "text-only")))
    assert tb.load_count == before  # refused from the config, before any weights


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (set by conftest)")
def test_hub_model_not_cached_offline_is_one_clear_error() -> None:
    with pytest.raises(CaptionerError, match="not in the local cache"):
        check_captioner(CaptionSettings(model="someone/no-such-vl-model"))


@pytest.mark.gpu
def test_tiny_random_on_cuda(tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    folder, comps = composites
    settings = TINY.model_copy(update={"device": "cuda"})
    records = caption_sets(comps, folder, RunStore(tmp_path), settings)
    assert all(r.status == "ok" and split_rendered(r.caption, c) for r, c in zip(records, comps, strict=True))


def test_retries_sample_so_they_can_differ_from_the_greedy_answer(
        composites: tuple[Path, list[CompositeRecord]]) -> None:
    folder, comps = composites
    settings = effective_settings(TINY)
    captioner = load_captioner(settings)
    request = CaptionRequest(comps[1].set_id, _panels(comps[1], folder), "Caption these.",
                             caption_schema(2, settings.max_chars, plain_ascii=True))
    greedy = captioner.generate([request], attempt=1)
    retry = captioner.generate([request], attempt=2)
    assert captioner.generate([request], attempt=1) == greedy  # greedy is deterministic
    assert captioner.generate([request], attempt=2) == retry  # and so are retries (seeded)
    assert retry != greedy
    assert isinstance(retry[0], str)
    parse_caption(retry[0], 2)


def test_model_that_cannot_load_fails_the_run_not_its_sets(
        tmp_path: Path, composites: tuple[Path, list[CompositeRecord]]) -> None:
    import shutil

    from iclora_data.caption import CaptionRunError

    broken = tmp_path / "broken-weights"
    shutil.copytree(tiny_model_dir(), broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    folder, comps = composites
    settings = TINY.model_copy(update={"model": str(broken)})
    check_captioner(settings)  # the config is fine: only loading finds the damage
    with pytest.raises(CaptionRunError, match="cannot load caption model"):
        caption_sets(comps[:2], folder, RunStore(tmp_path / "out"), settings)
