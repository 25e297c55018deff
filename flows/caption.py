"""``caption``: a one-off captioning run over an existing build, with other caption settings.

It re-runs ``build_dataset`` on the build's own SOURCE and config with the new caption
section. Every composite is found in the run store by content, so nothing is decoded again;
captions whose key (composite, model, template, generation settings) is unchanged come from
the store too, and the dataset is re-published as a new revision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from flows.build_dataset import build_dataset
from iclora_data.errors import IcloraError


class NoBuildError(IcloraError):
    pass


@flow(name="caption")
def caption(out: str, caption: dict[str, Any] | None = None, lock_timeout: float = 0) -> dict[str, Any]:
    manifest = Path(out) / "build.json"
    if not manifest.exists():
        raise NoBuildError(f"{out} holds no finished build (no build.json): run `iclora build SOURCE --out {out}`")
    build = json.loads(manifest.read_text(encoding="utf-8"))
    if not Path(build["source"]).exists():
        raise NoBuildError(f"the SOURCE of this build, {build['source']}, no longer exists")
    config = dict(build["config"])
    config["caption"] = caption or {}
    config["until"] = "publish"
    return build_dataset(build["source"], out, config, lock_timeout=lock_timeout)
