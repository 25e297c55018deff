"""Proof that the train/sample tests catch wrong math: apply each one-line mistake of issue 11 to a
copy of the code, run the tests, and report which test fails first (a mistake no test catches is a
hole in the suite).

    python scripts/mutation_check.py [--only NAME] [--tests tests/test_train_math.py ...]

Each mutant runs in its own copy of the repository with a fresh model/latent cache, so a latent
cached by correct code cannot hide a wrong encoder. Exit status 1 if any mutant survives.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_train_math.py", "tests/test_sample.py", "tests/test_train.py"]

# (name, file, the correct line's text, the mistake)
MUTANTS = [
    ("timestep scale", "iclora_train/trainer.py",
     '"timestep": sigmas.to(dev, self.weight_dtype),', '"timestep": (sigmas * 1000).to(dev, self.weight_dtype),'),
    ("target sign", "iclora_train/trainer.py", "velocity = noise - x0", "velocity = x0 - noise"),
    ("noise interpolation", "iclora_train/trainer.py",
     "noisy = (1.0 - s) * x0 + s * noise", "noisy = s * x0 + (1.0 - s) * noise"),
    ("VAE shift/scale", "iclora_train/encode.py",
     "mean=((dist.mean - shift) * scale)[0]", "mean=(dist.mean * scale)[0]"),
    ("guidance value", "iclora_train/trainer.py",
     "torch.full((bsz,), self.cfg.guidance,", "torch.full((bsz,), self.cfg.guidance * 1000,"),
    ("image-id layout", "iclora_train/trainer.py",
     "_prepare_latent_image_ids(bsz, h // 2, w // 2,", "_prepare_latent_image_ids(bsz, w // 2, h // 2,"),
    ("sampler reference mask", "iclora_train/sample.py", "mask.paste(0, box)", "mask.paste(255, box)"),
    ("gradient checkpointing off", "iclora_train/trainer.py",
     "transformer.enable_gradient_checkpointing()", "transformer.disable_gradient_checkpointing()"),
    ("Fill guidance default", "iclora_train/sample.py", "FILL_GUIDANCE = 30.0", "FILL_GUIDANCE = 3.5"),
]


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_mutant(name: str, rel: str, good: str, bad: str, tests: list[str]) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix="iclora-mutant-") as tmp:
        repo = Path(tmp) / "repo"
        _copy_repo(repo)
        path = repo / rel
        text = path.read_text(encoding="utf-8")
        if text.count(good) != 1:
            return f"NOT APPLIED: {good!r} occurs {text.count(good)} times in {rel}", 0.0
        path.write_text(text.replace(good, bad), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(repo), "ICLORA_CACHE": str(Path(tmp) / "cache"),
               "PREFECT_HOME": str(Path(tmp) / "prefect"), "DO_NOT_TRACK": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p",
                               "no:warnings", *tests], cwd=repo, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    failed = re.search(r"^FAILED (\S+)", proc.stdout, re.M)
    if proc.returncode == 0:
        return "SURVIVED (all tests passed)", seconds
    return (f"caught by {failed.group(1)}" if failed else f"caught (exit {proc.returncode})"), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only the mutant whose name contains this text")
    parser.add_argument("--tests", nargs="+", default=TESTS)
    args = parser.parse_args()
    survived = 0
    print("| mistake | file | result | seconds |\n|---|---|---|---|")
    for name, rel, good, bad in MUTANTS:
        if args.only and args.only not in name:
            continue
        result, seconds = run_mutant(name, rel, good, bad, args.tests)
        survived += not result.startswith("caught")
        print(f"| {name}: `{bad}` | {rel} | {result} | {seconds:.0f} |", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
