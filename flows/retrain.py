"""``retrain``: build (incremental) -> train the LoRA -> sample validation sets -> model card.

Thin wiring over ``build_dataset`` and ``iclora_train``'s library functions (``train_lora``,
``sample_sets``, ``write_model_card``). The LoRA folder remembers which dataset and training
settings made it (``retrain.json``): a scheduled retrain on unchanged data trains nothing. A
retrain on changed data starts a fresh run (the checkpoints of the superseded run are removed);
one that was killed resumes from its own checkpoints (``retrain-pending.json`` names its data).
The LoRA, the samples and the model card are flow artifacts in the Prefect UI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.build_dataset import build_dataset
from iclora_data.errors import IcloraError
from iclora_data.store import atomic_write_json, content_key, file_sha256

RETRAIN_STATE = "retrain.json"
RETRAIN_PENDING = "retrain-pending.json"
SAMPLES_DIR = "samples"


class RetrainError(IcloraError):
    pass


def dataset_fingerprint(dataset: Path) -> str:
    """Content of the published dataset (its parquet shards): what the LoRA was trained on."""
    shards = sorted((dataset / "data").glob("*.parquet"))
    if not shards:
        raise RetrainError(f"the build wrote no dataset rows to {dataset}: nothing to train on "
                           "(see report.json for rejected sets and failed captions)")
    return content_key("dataset", [(s.name, file_sha256(s)) for s in shards])


def sample_preset(config: dict[str, Any] | None, preset: str | None) -> str | None:
    """The preset validation sets are drawn at: the one given, else the build's; None when neither names
    one, and the sampler then uses the grid and size the LoRA was trained at (its training_config.json)."""
    from iclora_data.presets import UnknownPresetError, get_preset

    chosen = preset or ((config or {}).get("compose") or {}).get("preset")
    if not chosen:
        return None
    try:
        get_preset(chosen)  # an unknown name is one clear error before any work
    except UnknownPresetError as exc:
        raise RetrainError(f"--sample-preset: {exc}") from None
    return str(chosen)


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train_task(dataset: str, lora_dir: str, train: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    from iclora_train.config import TrainConfig
    from iclora_train.trainer import train_lora

    log = get_run_logger()
    result = train_lora(dataset, Path(lora_dir), TrainConfig.model_validate(train), resume=resume, progress=False,
                        log=log.info)
    return {"weights": str(result.weights), "step": result.step, "losses": result.losses}


@task(name="sample", task_run_name="sample {count} sets", cache_policy=NO_CACHE, persist_result=False)
def sample_task(dataset: str, lora_dir: str, train: dict[str, Any], preset: str | None, count: int, steps: int,
                scale: float, seed: int) -> list[str]:
    from iclora_train.config import TrainConfig
    from iclora_train.data import load_train_data
    from iclora_train.sample import sample_sets

    data = load_train_data(dataset, TrainConfig.model_validate(train))
    # held-out captions first: the LoRA has not seen those sets
    prompts = [it.caption for it in [*data.holdout, *data.train][:count]]
    results = sample_sets(Path(lora_dir), prompts, preset, Path(lora_dir) / SAMPLES_DIR, seed=seed, steps=steps,
                          scale=scale)
    return [str(r.composite) for r in results]


@task(name="model-card", cache_policy=NO_CACHE, persist_result=False)
def model_card_task(lora_dir: str, step: int, samples: list[str]) -> str:
    from iclora_train.trainer import write_model_card

    # from the training_config.json the run wrote: no trainer, so its checkpoints are no obstacle
    return str(write_model_card(Path(lora_dir), step, [Path(s) for s in samples]))


def _prepare_lora_dir(lora_dir: Path, fingerprint: str) -> bool:
    """Resume (True) when the checkpoints in ``lora_dir`` belong to an unfinished retrain of this
    fingerprint; otherwise remove the superseded run's checkpoints and record this one as pending."""
    import shutil

    from iclora_train.trainer import CHECKPOINTS, checkpoint_dirs

    pending = lora_dir / RETRAIN_PENDING
    try:
        same = json.loads(pending.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (FileNotFoundError, json.JSONDecodeError):
        same = False
    if same and checkpoint_dirs(lora_dir):
        return True
    shutil.rmtree(lora_dir / CHECKPOINTS, ignore_errors=True)
    lora_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(pending, {"version": 1, "fingerprint": fingerprint})
    return False


def _publish_artifacts(lora_dir: Path, weights: str, card: str, samples: list[str], step: int) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    create_link_artifact(Path(weights).resolve().as_uri(), link_text="pytorch_lora_weights.safetensors",
                         key="iclora-lora", description=f"LoRA trained to step {step}")
    listing = "\n".join(f"- [{Path(s).parent.name}]({Path(s).resolve().as_uri()})" for s in samples)
    create_markdown_artifact(f"## Validation sets\n\n{listing or 'none'}\n\nModel card: {card}",
                             key="iclora-samples", description=f"validation sets of {lora_dir}")


@flow(name="retrain")
def retrain(source: str, out: str, lora_dir: str, config: dict[str, Any] | None = None,
            train: dict[str, Any] | None = None, preset: str | None = None, samples: int = 2,
            sample_steps: int = 20, sample_scale: float = 1.0, force: bool = False,
            lock_timeout: float = 0) -> dict[str, Any]:
    """Build SOURCE into OUT, train a LoRA on the dataset into LORA_DIR, sample, write the card.

    Trains only when the dataset or the training settings changed since the last retrain (or ``force``)."""
    from iclora_train.config import TrainConfig

    log = get_run_logger()
    train_cfg = TrainConfig.model_validate(train or {}).model_dump(mode="json")
    chosen_preset = sample_preset(config, preset) if samples else None
    built = build_dataset(source, out, {**(config or {}), "until": "publish"}, lock_timeout=lock_timeout)
    dataset = Path(out) / "dataset"
    fingerprint = content_key(dataset_fingerprint(dataset), train_cfg, chosen_preset, samples, sample_steps,
                              sample_scale)
    state_path = Path(lora_dir) / RETRAIN_STATE
    previous = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {}
    if not force and previous.get("fingerprint") == fingerprint and Path(previous.get("weights", "")).exists():
        log.info("dataset and settings unchanged since the last retrain: nothing to train")
        return {**previous, "trained": False, "build": built}

    resume = _prepare_lora_dir(Path(lora_dir), fingerprint)
    if resume:
        log.info("resuming the unfinished retrain of this dataset from its checkpoints")
    trained = train_task(str(dataset), lora_dir, train_cfg, resume)
    sampled: list[str] = []
    if samples:
        sampled = sample_task(str(dataset), lora_dir, train_cfg, chosen_preset, samples, sample_steps,
                              sample_scale, int(train_cfg["seed"]))
    card = model_card_task(lora_dir, trained["step"], sampled)
    _publish_artifacts(Path(lora_dir), trained["weights"], card, sampled, trained["step"])
    state = {"version": 1, "fingerprint": fingerprint, "weights": trained["weights"], "step": trained["step"],
             "samples": sampled, "model_card": card, "dataset": str(dataset)}
    atomic_write_json(state_path, state)  # last: a retrain killed before this point trains again
    (Path(lora_dir) / RETRAIN_PENDING).unlink(missing_ok=True)
    return {**state, "trained": True, "losses": trained["losses"], "build": built}
