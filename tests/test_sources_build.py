"""``iclora build`` on each kind of source, through the CLI with ``--runner local``: the ledger
accounts for every archive entry, URL and dataset row exactly once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from _http_helpers import jpeg_bytes, serve_hub, serve_images

REPO = Path(__file__).resolve().parents[1]
MOVIE = "[MOVIE-SHOTS] a harbour [SCENE-1] the pier [SCENE-2] a boat [SCENE-3] a wave"


def build(source: str | Path, out: Path, *args: str, env: dict[str, str] | None = None,
          until: str = "compose") -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "iclora_data.cli", "build", str(source), "--out", str(out),
                           "--runner", "local", "--until", until, *args],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def files_of(report: dict[str, Any]) -> Counter[str]:
    return Counter(f["path"] for f in report["files"])


def status(report: dict[str, Any]) -> dict[str, str]:
    return {s["set_id"]: s["status"] for s in report["sets"]}


def test_build_from_a_zip_of_sets(tmp_path: Path) -> None:
    archive = tmp_path / "sets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for set_id, seeds in {"a": [1, 2], "b": [3, 4, 5], "copy": [1, 2]}.items():
            for i, seed in enumerate(seeds, 1):
                zf.writestr(f"export/{set_id}/{i}.jpg", jpeg_bytes(seed))
        zf.writestr("export/b/caption.txt", "three pictures")
        zf.writestr("../../evil.jpg", jpeg_bytes(9))
        zf.writestr("__MACOSX/export/._a", b"\0")
    report = build(archive, tmp_path / "out")
    members = [i.filename for i in zipfile.ZipFile(archive).infolist() if not i.is_dir()]
    assert files_of(report) == Counter(f"sets.zip/{m}" for m in members)  # every entry exactly once
    assert status(report) == {"a": "kept", "b": "kept", "copy": "duplicate"}
    reasons = {f["path"]: (f["status"], f["reason"]) for f in report["files"]}
    assert reasons["sets.zip/../../evil.jpg"] == ("rejected", "unsafe entry: '..' in its path would leave the archive")
    assert sorted(p.name for p in (tmp_path / "out" / "composites").glob("*.jpg")) == ["a.jpg", "b.jpg"]


def test_build_from_iclora_pairs_keeps_their_captions_and_grids(tmp_path: Path) -> None:
    from PIL import Image

    archive = tmp_path / "movie.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n, seeds in {"1": [1, 2, 3], "2": [4, 5, 6]}.items():
            canvas = Image.new("RGB", (512, 3 * 272))
            for i, seed in enumerate(seeds):
                canvas.paste(Image.open(io.BytesIO(jpeg_bytes(seed, (512, 272)))), (0, 272 * i))
            buf = io.BytesIO()
            canvas.save(buf, "PNG")
            zf.writestr(f"movie/{n}.png", buf.getvalue())
            zf.writestr(f"movie/{n}.txt", MOVIE if n == "1" else MOVIE.replace("harbour", "mountain"))
    config = tmp_path / "keep.yaml"
    config.write_text("caption:\n  sidecar: keep\n")  # the captions the data came with are the prompts
    report = build(archive, tmp_path / "out", "--config", str(config), "--model", "tiny-random", until="publish")
    assert files_of(report) == Counter(["movie.zip/movie/1.png", "movie.zip/movie/1.txt",
                                        "movie.zip/movie/2.png", "movie.zip/movie/2.txt"])
    assert status(report) == {"1": "kept", "2": "kept"}  # grids read from the captions' [SCENE-n] tags
    sidecar = json.loads((tmp_path / "out" / "composites" / "1.json").read_text())
    assert (sidecar["rows"], sidecar["cols"], sidecar["width"], sidecar["height"]) == (3, 1, 512, 816)
    assert sidecar["preset"] == "film-storyboard"
    rows = datasets.load_dataset(str(tmp_path / "out" / "dataset"), split="train")
    assert sorted(rows["caption"]) == sorted([MOVIE, MOVIE.replace("harbour", "mountain")])
    assert rows["source_files"] == [["movie.zip/movie/1.png"], ["movie.zip/movie/2.png"]]


def test_build_from_a_manifest_of_urls_fetches_each_once(tmp_path: Path) -> None:
    config = tmp_path / "build.yaml"
    config.write_text("source:\n  download:\n    allow_private_addresses: true\n    retries: 0\n")
    with serve_images() as host:
        manifest = tmp_path / "web.jsonl"
        rows = [{"set_id": "web", "images": [f"{host.url}/img/1.jpg", f"{host.url}/img/2.jpg"]},
                {"set_id": "dead", "images": [f"{host.url}/img/3.jpg", f"{host.url}/missing"]},
                {"set_id": "page", "images": [f"{host.url}/img/4.jpg", f"{host.url}/page"]}]
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = build(manifest, tmp_path / "out", "--config", str(config))
        fetched = host.total()
        again = build(manifest, tmp_path / "out", "--config", str(config))
        assert host.total() == fetched  # a re-run fetches nothing
    urls = [u for r in rows for u in r["images"]]
    assert files_of(report) == Counter(["web.jsonl", *urls])
    reasons = {f["path"]: f["reason"] for f in report["files"]}
    assert reasons[f"{host.url}/missing"] == "HTTP 404" and reasons[f"{host.url}/page"] == "not an image: text/html"
    assert status(report) == {"web": "kept", "dead": "rejected", "page": "rejected"} == status(again)
    assert reasons[f"{host.url}/img/3.jpg"] == f"set 'dead' was rejected: {host.url}/missing: HTTP 404"


def dataset_rows() -> dict[str, list[Any]]:
    img = lambda seed: {"bytes": jpeg_bytes(seed), "path": None}  # noqa: E731
    return {"set_id": ["a", "b", None, "d"],
            "images": [[img(1), img(2)], [img(3), img(4), img(5)], [], [img(1), img(2)]]}


FEATURES = datasets.Features({"set_id": datasets.Value("string"), "images": datasets.List(datasets.Image())})


def expected_row_files(data: dict[str, list[Any]]) -> Counter[str]:
    return Counter(f"rows/{i}/images/{j}" for i, images in enumerate(data["images"]) for j in range(len(images)))


def test_build_from_a_local_dataset_accounts_for_every_row(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    datasets.Dataset.from_dict(dataset_rows(), features=FEATURES).save_to_disk(root)
    report = build(root, tmp_path / "out")
    loaded = datasets.load_from_disk(str(root))  # the oracle: the datasets library's own reading
    assert [s["set_id"] for s in report["sets"]] == [sid or f"row-{i}" for i, sid in enumerate(loaded["set_id"])]
    disk = Counter(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files_of(report) == expected_row_files(dataset_rows()) + disk
    assert status(report) == {"a": "kept", "b": "kept", "row-2": "rejected", "d": "duplicate"}


def test_build_from_a_hub_dataset(tmp_path: Path) -> None:
    shard = tmp_path / "train.parquet"
    pq.write_table(datasets.Dataset.from_dict(dataset_rows(), features=FEATURES).data.table, shard)
    with serve_hub() as hub:
        hub.files[("org/sets", "main")] = {"data/train-00000-of-00001.parquet": shard.read_bytes()}
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
               "NO_PROXY": "127.0.0.1,localhost", "HF_TOKEN": ""}
        report = build("hf://datasets/org/sets", tmp_path / "out", env=env)
    assert files_of(report) == expected_row_files(dataset_rows()) + Counter(["data/train-00000-of-00001.parquet"])
    assert status(report) == {"a": "kept", "b": "kept", "row-2": "rejected", "d": "duplicate"}
    manifest = json.loads((tmp_path / "out" / "build.json").read_text())
    assert manifest["source"] == "hf://datasets/org/sets" and manifest["source_kind"] == "dataset"
