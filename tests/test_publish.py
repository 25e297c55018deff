"""The dataset writer: what ``datasets.load_dataset(OUT/dataset)`` gives a user, the card, and
the failure cases (no finished build, uncaptioned build, interrupted write)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from _publish_helpers import CAPTIONER, XSS_ID, kept_captioned_ids, make_finished_out
from PIL import Image

from iclora_data import publish
from iclora_data.publish import PublishError, counts_markdown, write_dataset
from iclora_data.records import load_composites

COLUMNS = ["image", "caption", "summary", "panel_captions", "set_id", "task", "rows", "cols", "width", "height",
           "panel_boxes", "source_files", "captioner"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finished_out(tmp_path_factory.mktemp("publish"))


@pytest.fixture
def out(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "out"))


def load(out: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from datasets import load_dataset

    return load_dataset(str(out / "dataset"), split="train", cache_dir=str(tmp_path / "hf-cache"))


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_load_dataset_reads_rows_pixel_exact(out: Path, tmp_path: Path) -> None:
    summary = write_dataset(out)
    expected_ids = kept_captioned_ids(out)
    ds = load(out, tmp_path)
    assert ds.column_names == COLUMNS
    assert ds["set_id"] == expected_ids  # kept + ok caption, in set-id order
    assert summary.rows == len(expected_ids) and summary.caption_failed == ["gamma"]
    feats = ds.features
    assert type(feats["image"]).__name__ == "Image"
    assert feats["panel_boxes"].feature.length == 4
    sidecars = {rec.set_id: rec for rec in load_composites(out)}
    for row in ds:
        rec = sidecars[row["set_id"]]
        on_disk = np.asarray(Image.open(out / "composites" / rec.image).convert("RGB"))
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), on_disk)
        assert (row["width"], row["height"], row["rows"], row["cols"]) == (rec.width, rec.height, rec.rows, rec.cols)
        assert row["panel_boxes"] == rec.panel_boxes
        assert row["source_files"] == rec.source_files
        assert len(row["panel_captions"]) == rec.rows * rec.cols
        assert all(tag in row["caption"] for tag in rec.panel_tags)
        assert row["captioner"] == CAPTIONER
    # the film-storyboard row carries its preset's task
    assert ds[ds["set_id"].index("alpha")]["task"] == "three consecutive shots of one film scene"


def test_images_are_embedded_so_the_dataset_survives_moving(out: Path, tmp_path: Path) -> None:
    write_dataset(out)
    moved = tmp_path / "elsewhere"
    shutil.copytree(out / "dataset", moved / "dataset")
    shutil.rmtree(out)  # composites gone: the dataset must not point at them
    ds = load(moved, tmp_path)
    assert ds[0]["image"].size == (ds[0]["width"], ds[0]["height"])


def test_shards_by_size_stream_in_order(out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "ROW_GROUP_ROWS", 1)  # one row group per row: bounded memory per group
    summary = write_dataset(out, max_shard_bytes=100_000)
    n = len(summary.shards)
    assert n == summary.rows >= 3  # each ~100-200 kB composite gets its own shard
    files = sorted((out / "dataset/data").glob("*.parquet"))
    assert [f.name for f in files] == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert all(pq.ParquetFile(f).metadata.num_rows == 1 for f in files)
    assert load(out, tmp_path)["set_id"] == kept_captioned_ids(out)


def test_rewrite_is_byte_identical(out: Path) -> None:
    write_dataset(out)
    first = {p.name: p.read_bytes() for p in (out / "dataset").rglob("*") if p.is_file()}
    write_dataset(out)
    second = {p.name: p.read_bytes() for p in (out / "dataset").rglob("*") if p.is_file()}
    assert first == second  # so re-publishing an unchanged build changes nothing on the hub


def test_card_follows_hub_conventions(out: Path) -> None:
    from huggingface_hub import DatasetCard

    summary = write_dataset(out)
    text = (out / "dataset/README.md").read_text()
    meta = front_matter(text)
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert meta["license"] == "cc-by-4.0"
    assert "text-to-image" in meta["task_categories"]
    info = meta["dataset_info"]
    assert [f["name"] for f in info["features"]] == COLUMNS
    assert info["splits"] == [{"name": "train", "num_bytes": summary.dataset_size, "num_examples": summary.rows}]
    assert info["download_size"] == sum(p.stat().st_size for p in (out / "dataset/data").glob("*.parquet"))
    card = DatasetCard(text)  # the hub client's own parser accepts it
    assert card.data.to_dict()["license"] == "cc-by-4.0"
    report = json.loads((out / "report.json").read_text())
    body = text.split("---\n", 2)[2]
    for key in ("kept", "duplicate", "rejected"):
        assert f"| {key} | {report['counts'][key]} |" in body
    assert f"| **rows in this dataset** | **{summary.rows}** |" in body
    assert "kept but left out (caption failed or missing) | 1 |" in body
    assert "`openai:qwen2-vl`, prompt version `v1`" in body
    assert "film-storyboard, 1024x1536, 3x1 grid: 1 row" in body
    assert "max_distance: 8" in body and "fit: crop" in body  # dedup and layout settings from the build config
    assert "load_dataset(" in body
    # no endpoints, credential names or local paths of the person who built it
    for private in ("/home/someone", "10.1.2.3", "MY_SECRET_KEY_VAR", "prompt.txt", str(out.parent)):
        assert private not in text


def test_build_without_captions(tmp_path: Path) -> None:
    out = make_finished_out(tmp_path, captions=False)
    with pytest.raises(PublishError, match="without captions"):
        write_dataset(out)
    summary = write_dataset(out, require_captions=False)
    ds = load(out, tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert summary.rows == report["counts"]["kept"] == len(ds)
    assert set(ds["caption"]) == {""} and set(ds["captioner"]) == {""}
    assert all(p == [] for p in ds["panel_captions"])
    assert "none (built without captions)" in (out / "dataset/README.md").read_text()


@pytest.mark.parametrize("missing", ["report.json", "build.json"])
def test_unfinished_build_is_a_clear_error(out: Path, missing: str) -> None:
    (out / missing).unlink()
    with pytest.raises(PublishError) as err:
        write_dataset(out)
    assert missing in str(err.value) and "iclora build" in str(err.value) and "\n" not in str(err.value)
    assert not (out / "dataset").exists()


def test_kept_set_without_composite_is_a_clear_error(out: Path) -> None:
    (out / "composites/beta.jpg").unlink()
    with pytest.raises(PublishError, match="beta"):
        write_dataset(out)


def test_not_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="not a folder"):
        write_dataset(tmp_path / "nope")


def test_interrupted_write_keeps_previous_dataset(out: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_dataset(out)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "dataset").rglob("*") if p.is_file()}
    real_make_row = publish.make_row
    calls = 0

    def dying_make_row(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C half-way
        return real_make_row(*args, **kwargs)

    monkeypatch.setattr(publish, "make_row", dying_make_row)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, max_shard_bytes=100_000)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "dataset").rglob("*") if p.is_file()}
    assert after == before
    assert not list(out.glob(".dataset*"))  # no half-written folder left behind
    monkeypatch.setattr(publish, "make_row", real_make_row)
    assert write_dataset(out).rows == len(load(out, tmp_path))


def test_html_in_ids_and_captions_is_kept_verbatim(tmp_path: Path) -> None:
    from _publish_helpers import DEFAULT_SETS, SetSpec

    sets = [s for s in DEFAULT_SETS if s.status == "kept"] + [SetSpec(XSS_ID, 2, "kept")]
    out = make_finished_out(tmp_path, sets=sets)
    write_dataset(out)
    ds = load(out, tmp_path)
    assert XSS_ID in ds["set_id"]
    assert any("<script>" in s for s in ds["summary"])


def test_counts_markdown(out: Path) -> None:
    write_dataset(out)
    (out / "gallery.html").write_text("<html></html>")
    md = counts_markdown(out)
    report = json.loads((out / "report.json").read_text())
    for key, value in report["counts"].items():
        assert f"| {key} | {value} |" in md
    assert f"| rows in the dataset | {len(kept_captioned_ids(out))} |" in md
    assert "| ignored files | 1 |" in md
    assert (out / "gallery.html").resolve().as_uri() in md


def test_no_rows_writes_no_dataset_and_drops_a_stale_one(out: Path) -> None:
    write_dataset(out)
    for path in (out / "captions").glob("*.json"):  # every caption failed this time
        rec = json.loads(path.read_text())
        rec["status"] = "failed"
        path.write_text(json.dumps(rec))
    summary = write_dataset(out)
    assert summary.rows == 0 and summary.shards == []
    assert len(summary.caption_failed) == json.loads((out / "report.json").read_text())["counts"]["kept"]
    assert not (out / "dataset").exists() and not list(out.glob(".dataset*"))
