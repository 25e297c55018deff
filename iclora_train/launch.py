"""Data-parallel training: ``--num-processes N`` runs N copies of the trainer under torchrun.

Each process is one ``accelerate`` process (DDP; NCCL on GPUs, gloo on CPUs). The trainer splits
every global batch over them (``LoraTrainer.run``), so N processes with batch size ``b`` train
exactly as one process with batch size ``N * b``. ``accelerate launch -m iclora_data.cli train ...``
works as well: the trainer reads the same environment.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from iclora_train.config import TrainConfig
from iclora_train.errors import LaunchError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_training(dataset: str, lora_dir: Path, cfg: TrainConfig, num_processes: int,
                    resume: bool | Path = False, timeout: float | None = None) -> None:
    """Train with ``num_processes`` processes on this machine; raises LaunchError if any fails."""
    with tempfile.TemporaryDirectory(prefix="iclora-launch-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"dataset": dataset, "lora_dir": str(lora_dir), "config": cfg.model_dump(mode="json"),
                                   "resume": resume if isinstance(resume, bool) else str(resume)}), encoding="utf-8")
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={num_processes}",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "iclora_train.launch", str(job)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            # the first exception a process raised, e.g. "[rank0]: ...TrainDatasetError: dataset ... does not exist"
            found = re.search(r"^(?:\[rank\d+\]: )?[\w.]*(?:Error|Exception): (.+)$", proc.stderr or "", re.M)
            raise LaunchError(f"training with {num_processes} processes failed (exit {proc.returncode}): "
                              f"{found.group(1) if found else (proc.stderr or '').strip()[-500:]}")


def _worker(job_file: str) -> None:
    from iclora_train.trainer import train_lora

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    resume = job["resume"] if isinstance(job["resume"], bool) else Path(job["resume"])
    train_lora(job["dataset"], Path(job["lora_dir"]), TrainConfig.model_validate(job["config"]), resume=resume,
               progress=False)


if __name__ == "__main__":
    _worker(sys.argv[1])
