"""Hugging Face datasets as SOURCE: save_to_disk folders, parquet in the hub layout, and
``hf://datasets/...`` against a loopback server speaking the hub's file API."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest
from _http_helpers import LoopbackHub, jpeg_bytes, serve_hub, serve_images

from iclora_data.compose import compose_set
from iclora_data.config import ComposeSettings
from iclora_data.ingest import IngestResult, SourceError, ingest
from iclora_data.sources import read_source
from iclora_data.sources.download import fetch_urls
from iclora_data.sources.settings import DownloadSettings, SourceSettings
from iclora_data.store import RunStore

FEATURES = datasets.Features({"set_id": datasets.Value("string"), "caption": datasets.Value("string"),
                              "preset": datasets.Value("string"), "images": datasets.List(datasets.Image())})


def rows() -> dict[str, list[Any]]:
    """Four sets: two good, one with no images, one reusing an id; plus a bad preset."""
    img = lambda seed: {"bytes": jpeg_bytes(seed), "path": f"{seed}.jpg"}  # noqa: E731
    return {"set_id": ["alpha", "beta", None, "alpha", "delta"],
            "caption": ["a caption", None, None, None, None],
            "preset": [None, "couple-profile", None, None, "no-such-preset"],
            "images": [[img(1), img(2), img(3)], [img(4), img(5)], [], [img(6), img(7)], [img(8), img(9)]]}


def ledger_paths(result: IngestResult) -> Counter[str]:
    paths: Counter[str] = Counter()
    for s in result.sets:
        paths.update(s.files)
    paths.update(f.path for f in result.files)
    return paths


def check_rows(result: IngestResult) -> None:
    data = rows()
    assert [s.set_id for s in result.sets] == ["alpha", "beta", "row-2", "alpha (row 3)", "delta"]
    for i, (src, images) in enumerate(zip(result.sets, data["images"], strict=True)):
        assert src.files == [f"rows/{i}/images/{j}" for j in range(len(images))]
        assert [read_source(p) for p in src.paths if p] == [im["bytes"] for im in images]
    alpha, beta, empty, again, delta = result.sets
    assert alpha.caption == "a caption" and alpha.rejection is None
    assert beta.preset == "couple-profile" and beta.rejection is None
    assert empty.rejection == "row 2: column 'images' holds no images"
    assert again.rejection == "row 3: set_id 'alpha' is used twice"
    assert delta.rejection and delta.rejection.startswith("unknown preset 'no-such-preset'")


def test_save_to_disk_folder_streams_rows_into_sets(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    datasets.Dataset.from_dict(rows(), features=FEATURES).save_to_disk(root)
    result = ingest(root, work_dir=tmp_path / "work")
    assert result.kind == "dataset"
    check_rows(result)
    # every file of the folder once: data files used, the rest ignored (oracle: os.walk via rglob)
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {f.path for f in result.files if not f.path.startswith("rows/")} == on_disk
    assert [f.status for f in result.files if f.path.endswith(".arrow")] == ["used"]
    # the images were spooled once, by content, under the work folder
    assert all(Path(p).is_relative_to(tmp_path / "work" / "spool") for s in result.sets for p in s.paths if p)
    prepared = compose_set(result.sets[0], ComposeSettings(), RunStore(tmp_path / "out"))
    assert prepared.rejection is None and prepared.composite and prepared.composite.source_caption == "a caption"


def test_parquet_in_the_hub_layout_with_several_row_groups_and_splits(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(rows(), features=FEATURES)
    # three row groups in the train file, and a test split that must be left out with split=train
    pq.write_table(ds.data.table, root / "data" / "train-00000-of-00001.parquet", row_group_size=2)
    pq.write_table(ds.select([0]).data.table, root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    assert pq.ParquetFile(root / "data" / "train-00000-of-00001.parquet").num_row_groups == 3
    result = ingest(root, settings=SourceSettings(split="train"), work_dir=tmp_path / "work")
    check_rows(result)
    status = {f.path: (f.status, f.reason) for f in result.files if not f.path.startswith("rows/")}
    assert status == {"data/train-00000-of-00001.parquet": ("used", "data file of the dataset: rows 0-4"),
                      "data/test-00000-of-00001.parquet": ("ignored", "not a data file of split 'train'"),
                      "README.md": ("ignored", "dataset metadata")}
    everything = ingest(root, work_dir=tmp_path / "work")  # no split: both files, rows counted over both
    assert len(everything.sets) == 6 and everything.sets[1].set_id == "alpha (row 1)"  # test- sorts first


def test_a_column_of_urls_and_paths_with_configurable_names(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    (root / "pics").mkdir()
    (root / "pics" / "a.jpg").write_bytes(jpeg_bytes(21))
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(22))
    with serve_images() as host:
        table = datasets.Dataset.from_dict({
            "name": ["web", "local", "escape"], "prompt": ["c1", "c2", "c3"],
            "pictures": [[f"{host.url}/img/1.jpg", f"{host.url}/missing"], ["pics/a.jpg", f"{host.url}/img/2.jpg"],
                         ["../secret.jpg", "pics/none.jpg"]]}).data.table
        pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
        settings = SourceSettings(images_column="pictures", set_id_column="name", caption_column="prompt")
        result = ingest(root, settings=settings, work_dir=tmp_path / "work")
        web, local, escape = result.sets
        assert web.paths == [f"{host.url}/img/1.jpg", f"{host.url}/missing"] and web.caption == "c1"
        assert local.paths[0] == str((root / "pics" / "a.jpg").resolve())
        assert escape.rejection == ("rows/2/pictures/0: ../secret.jpg: path escapes the dataset's folder; "
                                    "rows/2/pictures/1: pics/none.jpg: file not found")
        fetched, failed = fetch_urls(result.sets, tmp_path / "work" / "downloads",
                                     DownloadSettings(allow_private_addresses=True, retries=0))
    assert {f.path: f.reason for f in failed} == {"rows/0/pictures/1": f"{host.url}/missing: HTTP 404"}
    assert fetched[0].rejection == f"rows/0/pictures/1 ({host.url}/missing): HTTP 404"
    assert [read_source(p) for p in fetched[1].paths] == [jpeg_bytes(21), jpeg_bytes(2)]
    assert ledger_paths(result)["rows/2/pictures/0"] == 2  # in its set and as a rejected file: merged by the report


def test_a_single_image_column_is_a_ready_composite_with_its_grid(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "layout": datasets.Value("string")})
    comp = {"bytes": jpeg_bytes(5, (256, 768)), "path": None}
    datasets.Dataset.from_dict({"image": [comp, comp, comp],
                                "text": ["[MOVIE-SHOTS] x [SCENE-1] a [SCENE-2] b [SCENE-3] c", "no tags", "no tags"],
                                "layout": [None, "1x2", None]}, features=features).save_to_disk(root)
    result = ingest(root, settings=SourceSettings(caption_column="text"), work_dir=tmp_path / "w")
    tags, column, none = result.sets
    assert (tags.composite_grid, column.composite_grid) == ("3x1", "1x2")
    assert tags.files == ["rows/0/image"] and read_source(tags.paths[0]) == comp["bytes"]
    assert none.rejection and "needs its grid" in none.rejection


def test_a_dataset_without_an_image_column_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    datasets.Dataset.from_dict({"a": [1, 2]}).save_to_disk(root)
    with pytest.raises(SourceError, match="no column of images; name the one"):
        ingest(root, work_dir=tmp_path / "w")


# ----- hf://datasets/... ----------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    import huggingface_hub.constants as hf_constants

    with serve_hub() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield state


def parquet_bytes(tmp_path: Path, data: dict[str, list[Any]]) -> bytes:
    path = tmp_path / "upload.parquet"
    pq.write_table(datasets.Dataset.from_dict(data, features=FEATURES).data.table, path, row_group_size=2)
    return path.read_bytes()


def test_hub_dataset_at_a_revision(tmp_path: Path, hub: LoopbackHub) -> None:
    shard = parquet_bytes(tmp_path, rows())
    hub.files[("my-org/sets", "v1")] = {"data/train-00000-of-00001.parquet": shard, "README.md": b"card"}
    hub.files[("my-org/sets", "main")] = {"data/train-00000-of-00001.parquet": parquet_bytes(
        tmp_path, {k: v[:1] for k, v in rows().items()})}
    result = ingest("hf://datasets/my-org/sets@v1", work_dir=tmp_path / "work")
    check_rows(result)
    assert {f.path: f.status for f in result.files if not f.path.startswith("rows/")} == \
        {"data/train-00000-of-00001.parquet": "used"}
    resolve = ("GET", "/datasets/my-org/sets/resolve/v1/data/train-00000-of-00001.parquet")
    assert hub.requests[resolve] == 1 and not any("README" in p for _, p in hub.requests)
    again = ingest("hf://datasets/my-org/sets@v1", work_dir=tmp_path / "work")
    assert [s.set_id for s in again.sets] == [s.set_id for s in result.sets]
    assert hub.requests[resolve] == 1  # the data file came from the cache under the run store
    assert len(ingest("hf://datasets/my-org/sets", work_dir=tmp_path / "work").sets) == 1  # main
    assert len(ingest(Path("hf://datasets/my-org/sets"), work_dir=tmp_path / "work").sets) == 1


def test_hub_errors_are_errors_of_the_run(tmp_path: Path, hub: LoopbackHub) -> None:
    hub.files[("my-org/sets", "main")] = {}
    with pytest.raises(SourceError, match="not found"):
        ingest("hf://datasets/my-org/sets@nope", work_dir=tmp_path / "w")
    with pytest.raises(SourceError, match="has no data files"):
        ingest("hf://datasets/my-org/sets", work_dir=tmp_path / "w")


def test_a_parquet_file_inside_a_folder_of_sets_does_not_make_it_a_dataset(tmp_path: Path) -> None:
    for i in (1, 2):
        (tmp_path / "src" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "a" / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    pq.write_table(datasets.Dataset.from_dict({"x": [1]}).data.table, tmp_path / "src" / "a" / "stats.parquet")
    result = ingest(tmp_path / "src")
    assert result.kind == "folder" and result.sets[0].files == ["a/1.jpg", "a/2.jpg"]
