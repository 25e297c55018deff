"""Crash safety: a build killed with SIGKILL while composing, then while captioning, resumes to the
same dataset as an uninterrupted run, redoes no finished set and leaves no partial file."""

from __future__ import annotations

import json

import pytest

from tests._flows_helpers import (
    dataset_rows,
    finish,
    folder_bytes,
    iclora,
    kill_when,
    many_sets,
    partial_files,
    snapshot,
)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

SETS = 60
KILL_AT = 15  # finished objects in the run store when the kill lands (of SETS)


def test_sigkill_while_composing_and_captioning_resumes_to_the_same_dataset(tmp_path):
    from flows.build_dataset import build_dataset

    source = many_sets(tmp_path / "SOURCE", SETS)
    config = {"caption": {"model": "tiny-random"}}
    reference = tmp_path / "reference"
    build_dataset(str(source), str(reference), config)

    out = tmp_path / "OUT"
    args = ("build", str(source), "--out", str(out), "--model", "tiny-random")

    composed = kill_when(iclora(*args), out, "composites", "*.jpg", KILL_AT)
    assert KILL_AT <= composed < SETS
    composed_before = snapshot(out, "composites")
    panels_before = snapshot(out, "panels")

    captioned = kill_when(iclora(*args), out, "captions", "*.json", KILL_AT)
    assert KILL_AT <= captioned < SETS
    assert not (out / "dataset").exists()
    # the sets finished before the first kill were not composed or decoded again
    assert {k: v for k, v in snapshot(out, "composites").items() if k in composed_before} == composed_before
    # every panel's facts are written before its set's composite: the only panels decoded again are those
    # of the sets the kill caught half done (two panels per set, all distinct)
    panels_after = snapshot(out, "panels")
    redone = [k for k, v in panels_before.items() if panels_after[k] != v]
    assert len(redone) == len(panels_before) - 2 * len(composed_before)
    assert len(snapshot(out, "composites")) == SETS
    captions_before = snapshot(out, "captions")

    finish(iclora(*args))
    # the captions finished before the second kill were not asked of the model again
    assert {k: v for k, v in snapshot(out, "captions").items() if k in captions_before} == captions_before
    assert len(snapshot(out, "captions")) == SETS
    build = json.loads((out / "build.json").read_text())
    assert build["decoded_images"] == 0
    assert partial_files(out) == []

    assert dataset_rows(out) == dataset_rows(reference)
    assert json.loads((out / "report.json").read_text()) == json.loads((reference / "report.json").read_text())
    assert folder_bytes(out / "composites") == folder_bytes(reference / "composites")
    assert folder_bytes(out / "captions") == folder_bytes(reference / "captions")
