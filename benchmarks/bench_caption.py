"""Captioning benchmarks on the built-in tiny random Qwen2-VL, on whatever device is there (CPU here).

    python benchmarks/bench_caption.py [--sets 24] [--batch 8]

1. batched vs one-by-one: the same sets, the same model, greedy + constrained; throughput ratio.
2. constrained vs unconstrained decoding: the same number of new tokens per set, so the difference is
   the grammar's cost (xgrammar mask per step), per set and per token; plus the one-off grammar compile.
3. re-run on unchanged input: a second ``caption_sets`` over the same store, as a fraction of the first.

The tiny model's arithmetic is negligible, so ratios show per-call and per-step overheads, not what a
7B model on a GPU gains from batching (there the gain is larger: each step is memory-bound).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iclora_data.caption import CaptionRequest, CaptionSettings, caption_schema, caption_sets, load_captioner  # noqa: E402
from iclora_data.caption.run import _panels, load_template  # noqa: E402
from iclora_data.layout import Layout, preset_layout  # noqa: E402
from iclora_data.presets import get_preset  # noqa: E402
from iclora_data.records import CompositeRecord  # noqa: E402
from iclora_data.store import RunStore, content_key  # noqa: E402

PRESETS = ["film-storyboard", None, "font-design", "couple-profile", "sandstorm-vfx", None]


def make_sets(folder: Path, count: int) -> list[CompositeRecord]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(count):
        preset = PRESETS[i % len(PRESETS)]
        if preset:
            p = preset_layout(get_preset(preset))
            layout = Layout(p.rows, p.cols, p.cols * 128, p.rows * 128, panel_tags=p.panel_tags, prefix=p.prefix,
                            preset=preset)
        else:
            n = 2 + i % 3
            layout = Layout(1, n, n * 128, 128)
        Image.fromarray(rng.integers(0, 255, (layout.height, layout.width, 3), dtype=np.uint8)).save(
            folder / f"s{i}.jpg", quality=90)
        recs.append(CompositeRecord(
            set_id=f"s{i}", key=content_key("bench", i), image=f"s{i}.jpg", rows=layout.rows, cols=layout.cols,
            width=layout.width, height=layout.height, panel_boxes=[list(b) for b in layout.panel_boxes()],
            panel_tags=list(layout.panel_tags), prefix=layout.prefix, preset=preset, task=None, source_files=[]))
    return recs


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Median wall time of ``repeat`` runs (the machine is shared: medians, not means)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def bench_bigger(args: argparse.Namespace, folder: Path, comps: list[CompositeRecord], work: Path) -> None:
    """Section 1 again on a bigger random text model, where each step's arithmetic counts."""
    from iclora_data.caption.tiny_random import build_tiny_model

    path = build_tiny_model(work / "bigger", hidden_size=args.hidden, layers=args.layers)
    settings = CaptionSettings(model=str(path), dtype="float32", max_chars=24, max_new_tokens=64,
                               min_pixels=56 * 56, max_pixels=112 * 112, batch_size=args.batch,
                               max_attempts=1).resolved()
    captioner = load_captioner(settings)
    comps = comps[: args.bigger_sets]
    params = sum(p.numel() for p in captioner.loaded.model.parameters()) / 1e6  # type: ignore[attr-defined]
    template = load_template(None)
    requests = [CaptionRequest(c.set_id, _panels(c, folder), template.render(c, use_hints=False),
                               caption_schema(len(c.panel_boxes), 24)) for c in comps]
    captioner.generate(requests[: args.batch], 1)

    def batched() -> None:
        for i in range(0, len(requests), args.batch):
            captioner.generate(requests[i:i + args.batch], 1)

    def one_by_one() -> None:
        for r in requests:
            captioner.generate([r], 1)

    t_batch, t_single = timed(batched, args.repeat), timed(one_by_one, args.repeat)
    print(f"\n1b. the same on a bigger random model ({params:.1f} M parameters, hidden {args.hidden}, "
          f"{args.layers} layers, {torch_threads()} thread(s), {len(requests)} sets)")
    print(f"   one-by-one      : {t_single:7.2f} s  {len(requests) / t_single:7.2f} sets/s")
    print(f"   batch {args.batch:<3}       : {t_batch:7.2f} s  {len(requests) / t_batch:7.2f} sets/s")
    print(f"   throughput ratio: {t_single / t_batch:7.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256, help="bigger model for 1b (0: skip)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--bigger-sets", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (a shared machine with threads to spare for nobody: 1 keeps figures stable)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    os.environ.setdefault("ICLORA_CACHE", str(work / "cache"))
    folder = work / "composites"
    comps = make_sets(folder, args.sets)
    print(f"{args.sets} sets of 2-4 panels (128 px), tiny-random Qwen2-VL, greedy; median of {args.repeat}; "
          f"shared {os.cpu_count()}-core machine: figures are noisy")

    t0 = time.perf_counter()
    base = CaptionSettings(model="tiny-random", batch_size=args.batch, max_attempts=1).resolved()
    captioner = load_captioner(base)
    load_s = time.perf_counter() - t0
    template = load_template(None)
    requests = [CaptionRequest(c.set_id, _panels(c, folder), template.render(c, use_hints=False),
                               caption_schema(len(c.panel_boxes), base.max_chars, plain_ascii=True)) for c in comps]
    captioner.generate(requests[: args.batch], 1)  # warm-up: grammar compile, first-call allocations

    # 1. batched vs one-by-one
    def batched() -> None:
        for i in range(0, len(requests), args.batch):
            captioner.generate(requests[i:i + args.batch], 1)

    def one_by_one() -> None:
        for r in requests:
            captioner.generate([r], 1)

    t_batch, t_single = timed(batched, args.repeat), timed(one_by_one, args.repeat)
    print("\n1. batched vs one-by-one (constrained)")
    print(f"   one-by-one      : {t_single:7.2f} s  {len(requests) / t_single:7.2f} sets/s")
    print(f"   batch {args.batch:<3}       : {t_batch:7.2f} s  {len(requests) / t_batch:7.2f} sets/s")
    print(f"   throughput ratio: {t_single / t_batch:7.2f}x")

    if args.hidden:
        bench_bigger(args, folder, comps, work)

    # 2. constrained vs unconstrained, same new tokens per set
    tok = captioner.loaded.processor.tokenizer  # type: ignore[attr-defined]
    answers = captioner.generate(requests, 1)
    lengths = [len(tok(a).input_ids) for a in answers if isinstance(a, str)]
    new_tokens = max(16, round(statistics.mean(lengths)))
    fixed = {"max_new_tokens": new_tokens, "batch_size": 1}
    con = load_captioner(base.model_copy(update=fixed))
    unc = load_captioner(base.model_copy(update=fixed | {"constrained": False}))
    # same length both ways: the unconstrained noise never stops early, so cap the constrained one equally
    # alternate the two per set, so that load from others on the machine hits both alike
    con_times, unc_times = [], []
    for _ in range(args.repeat):
        for r in requests:
            for which, times in ((con, con_times), (unc, unc_times)):
                t0 = time.perf_counter()
                which.generate([r], 1)
                times.append(time.perf_counter() - t0)
    t_con = statistics.median(con_times) * len(requests)
    t_unc = statistics.median(unc_times) * len(requests)
    import xgrammar as xgr

    loaded = captioner.loaded  # type: ignore[attr-defined]
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=loaded.stop_ids)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    import json

    t_compile = timed(lambda: compiler.compile_json_schema(json.dumps(requests[0].schema), any_whitespace=False,
                                                           strict_mode=True), args.repeat)
    # the grammar's own work, without the model: replay each answer through a matcher
    grammars = [compiler.compile_json_schema(json.dumps(r.schema), any_whitespace=False, strict_mode=True)
                for r in requests]
    answer_ids = [tok(a).input_ids + [loaded.stop_ids[0]] for a in answers if isinstance(a, str)]
    bitmask = xgr.allocate_token_bitmask(1, vocab)

    def replay() -> None:
        for grammar, ids in zip(grammars, answer_ids, strict=False):
            matcher = xgr.GrammarMatcher(grammar)
            for t in ids:
                matcher.fill_next_token_bitmask(bitmask, 0)
                matcher.accept_token(t)

    t_replay = timed(replay, args.repeat)
    mask_us = t_replay / sum(len(ids) for ids in answer_ids) * 1e6
    per_set = (t_con - t_unc) / len(requests)
    print(f"\n2. constrained vs unconstrained, one set per call, {new_tokens} new tokens max "
          f"(mean constrained answer {statistics.mean(lengths):.0f} tokens)")
    print(f"   unconstrained   : {t_unc / len(requests) * 1000:7.1f} ms/set")
    print(f"   constrained     : {t_con / len(requests) * 1000:7.1f} ms/set")
    print(f"   overhead        : {per_set * 1000:7.1f} ms/set ({t_con / t_unc:.2f}x); grammar compile once per "
          f"panel count: {t_compile * 1000:.1f} ms")
    print(f"   grammar alone   : {mask_us:7.1f} us/token (mask + accept), "
          f"{t_replay / len(answer_ids) * 1000:.2f} ms/set")

    # 3. re-run on unchanged input
    store = RunStore(work / "out")
    t0 = time.perf_counter()
    first = caption_sets(comps, folder, store, base)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = caption_sets(comps, folder, store, base)
    t_second = time.perf_counter() - t0
    assert [r.caption for r in first] == [r.caption for r in second]
    assert all(r.status == "ok" for r in first)
    print("\n3. re-run on unchanged input (model already loaded; loading took "
          f"{load_s:.2f} s including the one-off tiny model build)")
    print(f"   first run       : {t_first:7.3f} s")
    print(f"   re-run          : {t_second:7.3f} s  = {t_second / t_first * 100:.2f}% of the first")


if __name__ == "__main__":
    main()
