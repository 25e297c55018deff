"""Local captioning with ``transformers``: Qwen2-VL, Qwen2.5-VL and the newer Qwen-VL classes.

All panels of a set go in one chat message (multi-image); sets are batched with left padding;
decoding is constrained to the caption's JSON schema by an xgrammar logits processor. Images are
prepared by ``qwen-vl-utils`` (its resize rules are the ones the models were trained with).

CPU machines here have no usable torchvision: ``transformers`` then cannot build the Qwen video
processor, so an image-only subclass of the model's processor is used; with torchvision present
the standard ``AutoProcessor`` is used (and the image-only one if that fails to load).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from iclora_data.caption.base import RETRY_TEMPERATURE, CaptionerError, CaptionRequest, CaptionRunError
from iclora_data.caption.prompts import SYSTEM_PROMPT
from iclora_data.caption.schema import CaptionValidationError
from iclora_data.caption.settings import TINY_RANDOM, CaptionSettings

log = logging.getLogger(__name__)

# model_type -> processor class name, for the vision-language models whose images qwen-vl-utils prepares
QWEN_VL_PROCESSORS = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
}


def torchvision_usable() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


@cache
def processor_class_for(model_type: str) -> Any:
    """An image-only variant of ``model_type``'s processor class (see module docstring)."""
    import transformers

    name = QWEN_VL_PROCESSORS.get(model_type)
    if name is None or not hasattr(transformers, name):
        known = [t for t, cls in QWEN_VL_PROCESSORS.items() if hasattr(transformers, cls)]
        raise CaptionerError(f"model type {model_type!r} is not a supported Qwen-VL model; "
                             f"supported: {', '.join(known)}")
    base = getattr(transformers, name)

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        # ProcessorMixin reads the sub-processors from __init__'s signature: without video_processor it
        # neither loads nor demands one; the base sets the image/video token ids as usual
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    # same class name, so a processor saved here reloads with AutoProcessor where torchvision exists
    return type(name, (base,), {"__init__": __init__, "__module__": __name__})


@cache
def _process_vision_info() -> Callable[..., Any]:
    """qwen-vl-utils' image preparation. Its module imports torchvision for videos only; where torchvision
    is missing, a placeholder stands in during the import and is removed again, so that transformers
    still sees no torchvision."""
    if importlib.util.find_spec("torchvision") is not None:
        try:
            from qwen_vl_utils import process_vision_info

            return process_vision_info  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - a torchvision built for another torch fails to import
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.",
                                                                                         "qwen_vl_utils"))]:
                del sys.modules[name]
    names = ("torchvision", "torchvision.io", "torchvision.transforms")
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.0.0"  # type: ignore[attr-defined]
    io, transforms = types.ModuleType("torchvision.io"), types.ModuleType("torchvision.transforms")
    transforms.InterpolationMode = types.SimpleNamespace(BICUBIC=3, BILINEAR=2)  # type: ignore[attr-defined]
    tv.io, tv.transforms = io, transforms  # type: ignore[attr-defined]
    sys.modules.update(dict(zip(names, (tv, io, transforms), strict=True)))
    try:
        from qwen_vl_utils import process_vision_info
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return process_vision_info  # type: ignore[no-any-return]


def resolve_model(settings: CaptionSettings) -> tuple[str, bool]:
    """``(path or hub id, is_local)``; a path that does not exist is an error before any work."""
    if settings.model == TINY_RANDOM:
        from iclora_data.caption.tiny_random import tiny_model_dir

        return str(tiny_model_dir()), True
    path = Path(settings.model).expanduser()
    if path.is_dir():
        return str(path), True
    looks_like_path = settings.model.startswith(("/", ".", "~")) or settings.model.count("/") > 1 \
        or "\\" in settings.model or path.is_file()
    if looks_like_path:
        what = "is a file, not a model folder" if path.is_file() else "does not exist"
        raise CaptionerError(f"caption model {settings.model} {what}; pass a model folder, a hub id, "
                             "or --model tiny-random")
    return settings.model, False


def pick_device(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(setting: str, device: str, tiny: bool) -> Any:
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if tiny:
        return torch.float32  # a test model: exact, and batched == one-by-one bit for bit
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return torch.float16


@dataclass
class LoadedModel:
    """What loading a model costs: done once per process per (model, revision, device, dtype)."""

    model: Any
    processor: Any
    device: str
    dtype: Any
    stop_ids: list[int]
    pad_id: int | None
    patch_size: int
    tiny: bool = False
    compiler: Any = None  # xgrammar GrammarCompiler, made on first constrained use
    lock: threading.Lock = field(default_factory=threading.Lock)


_LOADED: dict[tuple[Any, ...], LoadedModel] = {}
_LOADED_LOCK = threading.Lock()
load_count = 0  # models loaded in this process (tests check that a model loads once)


def _load_key(settings: CaptionSettings) -> tuple[Any, ...]:
    return (settings.model, settings.revision, settings.device, settings.dtype, settings.trust_remote_code)


def check_model_folder(settings: CaptionSettings) -> None:
    """The part of :func:`check_model` that needs no import of transformers: the model resolves, and a local
    folder holds a ``config.json`` naming its model type. (tiny-random is built in: nothing to check.)"""
    if settings.model == TINY_RANDOM:
        return
    source, local = resolve_model(settings)
    if not local:
        return  # a hub id: only transformers can tell whether its cache holds it (check_model does)
    try:
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CaptionerError(f"cannot load caption model {settings.model}: no usable config.json in that "
                             f"folder: {exc}") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise CaptionerError(f"cannot load caption model {settings.model}: no usable config.json in that folder: "
                             "it names no model_type")


def check_model(settings: CaptionSettings) -> tuple[str, Any]:
    """Resolve the model and read its config, without weights: ``(source, config)``.

    Raises CaptionerError for a missing folder, a folder without a model config, or a model that is not
    a supported vision-language model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    source, local = resolve_model(settings)
    try:
        config = AutoConfig.from_pretrained(source, revision=settings.revision,
                                            trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError here
        where = "in that folder" if local else "(not in the local cache, and the hub is not reachable?)"
        raise CaptionerError(f"cannot load caption model {settings.model}: no usable config.json {where}: "
                             f"{str(exc).splitlines()[0][:160]}") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise CaptionerError(f"caption model {settings.model} is a {model_type!r} model, not a vision-language "
                             "model; use a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model")
    processor_class_for(model_type)  # raises for vision-language models this backend cannot prepare images for
    return source, config


def load_model(settings: CaptionSettings) -> LoadedModel:
    global load_count
    key = _load_key(settings)
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        from transformers import AutoModelForImageTextToText, AutoProcessor

        source, config = check_model(settings)
        common: dict[str, Any] = {"revision": settings.revision, "trust_remote_code": settings.trust_remote_code}
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device, settings.model == TINY_RANDOM)
        try:
            processor = None
            if torchvision_usable():
                try:
                    processor = AutoProcessor.from_pretrained(source, **common)
                except Exception as exc:  # noqa: BLE001 - e.g. a torchvision that does not import
                    log.info("standard processor unavailable (%s); using the image-only one", exc)
            if processor is None:
                processor = processor_class_for(config.model_type).from_pretrained(source, **common)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **common)
        except Exception as exc:  # noqa: BLE001 - a model that cannot load fails the run, not its sets
            raise CaptionRunError(f"cannot load caption model {settings.model}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        model.to(device).eval()  # type: ignore[arg-type]
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # batched generation continues every row from its own end
        gen = model.generation_config
        eos = gen.eos_token_id
        stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
            stop_ids.append(tokenizer.eos_token_id)
        loaded = LoadedModel(model=model, processor=processor, device=device, dtype=dtype, stop_ids=stop_ids,
                             pad_id=gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id,
                             patch_size=int(getattr(processor.image_processor, "patch_size", 14)),
                             tiny=settings.model == TINY_RANDOM)
        _LOADED[key] = loaded
        load_count += 1
        log.info("loaded caption model %s on %s (%s)", settings.model, device, dtype)
        return loaded


class TransformersCaptioner:
    """Generation settings over a model loaded once per process (see ``load_model``)."""

    def __init__(self, settings: CaptionSettings, captioner_id: str):
        self.id = captioner_id
        self.settings = settings.resolved()
        self.batch_size = settings.batch_size
        self.concurrency = 1  # one generate() at a time per model; batching is the parallelism
        self.notes: list[str] = []
        self.loaded = load_model(settings)
        self.generate_calls = 0  # model.generate() invocations; tests and benchmarks read it

    def probe(self) -> None:
        """Loading the model was the probe: its config, processor and weights all loaded."""

    # -- grammar -------------------------------------------------------------------------------------
    def _grammar(self, request: CaptionRequest) -> Any:
        import xgrammar as xgr

        lm = self.loaded
        with lm.lock:
            if lm.compiler is None:
                vocab = lm.model.get_output_embeddings().weight.shape[0]  # may exceed the tokenizer's (padding)
                info = xgr.TokenizerInfo.from_huggingface(lm.processor.tokenizer, vocab_size=vocab,
                                                          stop_token_ids=lm.stop_ids)
                lm.compiler = xgr.GrammarCompiler(info)  # caches compiled grammars by schema
        if request.grammar is not None:  # compiled grammars are cached by the compiler
            return lm.compiler.compile_grammar(request.grammar)
        # key order kept: the model writes the summary first, then the panels
        return lm.compiler.compile_json_schema(json.dumps(request.schema), any_whitespace=False, strict_mode=True)

    # -- generation ----------------------------------------------------------------------------------
    def messages(self, request: CaptionRequest) -> list[dict[str, Any]]:
        min_pixels, max_pixels = self.settings.pixels
        images = [{"type": "image", "image": im, "min_pixels": min_pixels, "max_pixels": max_pixels}
                  for im in request.panels]
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [*images, {"type": "text", "text": request.instruction}]}]

    def generate(self, requests: Sequence[CaptionRequest], attempt: int) -> list[str | Exception]:
        if not requests:
            return []
        try:
            return self._generate(requests, attempt)
        except Exception as exc:  # noqa: BLE001 - one failing batch must not stop the run
            log.warning("caption batch of %d failed: %s", len(requests), exc)
            return [RuntimeError(f"generation failed: {exc}") for _ in requests]

    def _generate(self, requests: Sequence[CaptionRequest], attempt: int) -> list[str | Exception]:
        import torch

        lm = self.loaded
        batch = [self.messages(r) for r in requests]
        texts = [lm.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
        images, _ = _process_vision_info()(batch, image_patch_size=lm.patch_size)
        inputs = lm.processor(text=texts, images=images, padding=True, return_tensors="pt").to(lm.device)
        kwargs: dict[str, Any] = {"max_new_tokens": self.settings.new_tokens, "pad_token_id": lm.pad_id,
                                  "eos_token_id": lm.stop_ids}
        temperature = self.settings.temperature or (RETRY_TEMPERATURE if attempt > 1 else 0.0)
        if temperature > 0:
            torch.manual_seed(attempt)  # reproducible retries
            kwargs.update(do_sample=True, temperature=temperature, top_p=0.95, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.settings.constrained:
            from xgrammar.contrib.hf import LogitsProcessor

            # one matcher per row; a fresh processor per generate() call (it keeps state)
            kwargs["logits_processor"] = [LogitsProcessor([self._grammar(r) for r in requests])]
        threads = torch.get_num_threads()
        with lm.lock, torch.inference_mode():  # one generate at a time per model
            if lm.tiny:
                # a model this small only loses to thread start-up and contention: 5-10x faster on one thread
                torch.set_num_threads(1)
            try:
                out = lm.model.generate(**inputs, **kwargs)
            finally:
                torch.set_num_threads(threads)
        self.generate_calls += 1
        start = inputs["input_ids"].shape[1]
        answers: list[str | Exception] = []
        for row in out[:, start:].tolist():
            ended = next((i for i, t in enumerate(row) if t in lm.stop_ids), None)
            if ended is None:
                answers.append(CaptionValidationError(
                    f"answer was cut off at max_new_tokens={self.settings.new_tokens}"))
                continue
            answers.append(lm.processor.tokenizer.decode(row[:ended], skip_special_tokens=True))
        return answers
