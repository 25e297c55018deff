"""Step time of FLUX LoRA training with cached vs uncached latents and text embeddings.

Tiny random FLUX on CPU: the same dataset, seed and steps, once with latents/embeddings
encoded up front and cached (the VAE and text encoders freed), once encoding every batch.
Prints median step times and their ratio (uncached / cached). Run: python benchmarks/bench_train_cache.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--panel", type=int, default=128, help="panel side; composites are 1x3 panels")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        import torch
        from _train_helpers import write_dataset

        from iclora_train.config import TrainConfig
        from iclora_train.trainer import train_lora

        ds = str(write_dataset(Path(tmp) / "ds", args.rows, panel=args.panel))
        common = dict(base="tiny-random", steps=args.steps, batch_size=args.batch_size, checkpoint_every=0,
                      validation_every=0, max_sequence_length=128, mixed_precision="no",
                      gradient_checkpointing=False)
        labels = ("uncached", "cached (cold cache)", "cached (warm cache)")
        steps: dict[str, list[float]] = {label: [] for label in labels}
        totals: dict[str, list[float]] = {label: [] for label in labels}
        encoded: dict[str, int] = {}
        for repeat in range(args.repeats):  # interleaved, so load from other processes hits all alike
            os.environ["ICLORA_CACHE"] = str(Path(tmp) / f"cache-{repeat}")
            for label in labels:
                t0 = time.perf_counter()
                result = train_lora(ds, Path(tmp) / f"{label.split()[0]}-{repeat}-{len(steps[label])}",
                                    TrainConfig(**common, cache_latents=label != "uncached"), progress=False)
                totals[label].append(time.perf_counter() - t0)
                steps[label] += result.step_seconds[2:]  # the first steps warm up kernels
                encoded[label] = result.encoded_images
        print(f"tiny FLUX on CPU ({torch.get_num_threads()} threads), {args.rows} composites of "
              f"{3 * args.panel}x{args.panel}, batch {args.batch_size}, {args.steps} steps, "
              f"{args.repeats} interleaved repeats")
        print(f"{'run':<22}{'median step s':>15}{'min step s':>12}{'median run s':>14}{'images encoded':>16}")
        for label in labels:
            print(f"{label:<22}{statistics.median(steps[label]):>15.4f}{min(steps[label]):>12.4f}"
                  f"{statistics.median(totals[label]):>14.2f}{encoded[label]:>16}")
        cached_steps = steps[labels[1]] + steps[labels[2]]
        print(f"step time ratio uncached / cached: median "
              f"{statistics.median(steps['uncached']) / statistics.median(cached_steps):.2f}x, "
              f"min {min(steps['uncached']) / min(cached_steps):.2f}x")
        print(f"whole-run ratio uncached / cached (warm cache): "
              f"{statistics.median(totals['uncached']) / statistics.median(totals[labels[2]]):.2f}x")

if __name__ == "__main__":
    main()
