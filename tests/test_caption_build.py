"""The build's caption rules, through the CLI, against a loopback OpenAI-compatible server:
a captioner that fails is a failure of the run that changes nothing; a re-caption never shrinks the
dataset because the new captioner failed; a build where most sets fail says so; edited captions win."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _caption_server import SCENES, Serve, completion, dead_url, good, server_factory
from _images import image_set
from typer.testing import CliRunner

from iclora_data.cli import app

SETS = ["alpha", "bravo", "charlie"]


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every byte of the visible outputs a re-caption could damage."""
    files = {}
    for name in ("dataset", "captions", "composites"):
        for path in sorted((out / name).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(out))] = path.read_bytes()
    files["report.json"] = (out / "report.json").read_bytes()
    return files


def _dataset_rows(out: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: dict[str, dict[str, Any]] = {}
    for shard in sorted((out / "dataset").rglob("*.parquet")):
        for row in pq.read_table(shard, columns=["set_id", "caption", "captioner"]).to_pylist():
            rows[row["set_id"]] = row
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build of three two-panel sets, captioned by tiny-random (copied per test)."""
    root = tmp_path_factory.mktemp("caption-build")
    for i, name in enumerate(SETS):
        image_set(root / "src" / name, [10 * i + 1, 10 * i + 2])
    out = root / "out"
    result = CliRunner().invoke(app, ["build", str(root / "src"), "--out", str(out), "--runner", "local",
                                      "--model", "tiny-random"])
    assert result.exit_code == 0, result.output
    assert len(_dataset_rows(out)) == 3
    return out


@pytest.fixture
def out(built: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(built, copy, symlinks=True)
    return copy


@pytest.fixture
def serve() -> Iterator[Serve]:
    yield from server_factory()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "caption.yaml"
    path.write_text("caption:\n  max_attempts: 2\n  retry_backoff_s: 0.01\n  timeout_s: 5\n")
    return path


def recaption(out: Path, url: str, config: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["caption", str(out), "--backend", "openai", "--model", "served",
                                    "--base-url", url, "--runner", "local", "--config", str(config), *extra])


def test_dead_server_fails_in_seconds_and_changes_nothing(out: Path, config: Path) -> None:
    before = _snapshot(out)
    started = time.monotonic()
    result = recaption(out, dead_url(), config)
    assert time.monotonic() - started < 10
    assert result.exit_code != 0
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        line for line in result.output.splitlines() if line.strip()]
    assert "cannot reach the caption server" in result.output
    assert _snapshot(out) == before


def test_server_failing_mid_run_fails_the_build_before_its_commit(serve: Serve, out: Path, config: Path) -> None:
    """The probe passes; then the server refuses the key on the first set: the build raises from inside
    a caption shard, before the commit, and OUT is byte for byte as it was."""
    fake, url = serve(lambda body, count: (401, {"error": {"message": "key revoked"}}))
    before = _snapshot(out)
    result = recaption(out, url, config)
    assert result.exit_code != 0 and "error: the caption server refused the API key" in result.output
    assert fake.chat_requests() >= 1  # it did get as far as sending sets
    assert _snapshot(out) == before


def test_recaption_that_fails_keeps_previous_captions_and_says_so_loudly(serve: Serve, out: Path,
                                                                        config: Path) -> None:
    refusal = json.dumps({"summary": "I'm sorry, as an AI I cannot see the images.", "panels": SCENES[:2]})
    fake, url = serve(lambda body, count: (200, completion(refusal)))
    rows_before = _dataset_rows(out)
    result = recaption(out, url, config)
    assert result.exit_code == 0, result.output
    assert "warning: captioning failed for 3 of 3 sets (100%)" in result.output
    assert fake.chat_requests() == 3 * 2  # every set tried max_attempts times
    assert _dataset_rows(out) == rows_before  # the dataset did not shrink, nor change
    report = json.loads((out / "report.json").read_text())
    for entry in report["sets"]:
        assert entry["status"] == "kept"
        assert any(w.startswith("kept the previous caption: the new one failed: caption failed after 2 attempts")
                   and "refusal" in w for w in entry["warnings"]), entry
    build = json.loads((out / "build.json").read_text())
    assert build["captions"]["kept_previous"] == 3 and build["captions"]["mostly_failed"] is True


def test_good_recaption_replaces_captions(serve: Serve, out: Path, config: Path) -> None:
    fake, url = serve(good)
    result = recaption(out, url, config)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    rows = _dataset_rows(out)
    assert len(rows) == 3 and all(r["caption"].startswith("This two-panel image showcases a calm seaside town")
                                  for r in rows.values())
    # the dataset names the served model, not the server's address
    assert {r["captioner"] for r in rows.values()} == {"openai:served"}


def test_edited_captions_win_and_are_marked_human(serve: Serve, out: Path, config: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    review = tmp_path / "review"
    assert runner.invoke(app, ["captions", "export", str(out), str(review)]).exit_code == 0
    edited = json.loads((review / "bravo.json").read_text())
    edited["summary"] = "two hand-painted studies of one stormy sky"
    edited["panels"] = ['shows the sky at noon, a sign reading "Open" below it', "shows the sky at dusk"]
    (review / "bravo.json").write_text(json.dumps(edited))
    result = runner.invoke(app, ["captions", "import", str(out), str(review)])
    assert result.exit_code == 0, result.output

    fake, url = serve(good)
    result = recaption(out, url, config)
    assert result.exit_code == 0, result.output
    rows = _dataset_rows(out)
    assert rows["bravo"]["captioner"] == "human"
    assert rows["bravo"]["caption"] == ('This two-panel image showcases two hand-painted studies of one stormy sky; '
                                        '[IMAGE1] shows the sky at noon, a sign reading "Open" below it; '
                                        '[IMAGE2] shows the sky at dusk.')
    assert rows["alpha"]["captioner"].startswith("openai:")
    assert fake.chat_requests() == 2  # the edited set was not sent to the model
    caption_file = json.loads((out / "captions" / "bravo.json").read_text())
    assert caption_file["source"] == "human"


@pytest.mark.slow
def test_prefect_runner_fails_the_same_way_and_changes_nothing(serve: Serve, out: Path, config: Path) -> None:
    """Through the Prefect flow: the CaptionRunError raised in a caption task fails the flow with one
    error line, and the commit never ran."""
    fake, url = serve(lambda body, count: (401, {"error": {"message": "key revoked"}}))
    before = _snapshot(out)
    result = CliRunner().invoke(app, ["caption", str(out), "--backend", "openai", "--model", "served",
                                      "--base-url", url, "--config", str(config)])
    assert result.exit_code != 0 and "error: the caption server refused the API key" in result.output, result.output
    assert _snapshot(out) == before
