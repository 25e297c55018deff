"""Past one machine: a build whose per-set tasks run on Ray (a local instance the run starts, 2 CPUs here)
writes the same dataset as the thread runner; a Ray address that does not answer is one clear error."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests._flows_helpers import dataset_rows, finish, folder_bytes, iclora, many_sets

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.slow
def test_ray_runner_writes_the_same_dataset_as_the_thread_runner(tmp_path):
    pytest.importorskip("prefect_ray")
    from flows.build_dataset import build_dataset

    source = many_sets(tmp_path / "SOURCE", 4)
    (source / "set-0003" / "2.jpg").write_bytes(b"not a picture")  # a rejected set travels the same way
    threads = tmp_path / "threads"
    build_dataset(str(source), str(threads), {"caption": {"model": "tiny-random"}})

    on_ray = tmp_path / "ray"
    output = finish(iclora("build", str(source), "--out", str(on_ray), "--model", "tiny-random", "--runner", "ray"))
    assert "Started a local Ray instance" in output
    assert dataset_rows(on_ray) == dataset_rows(threads)
    assert json.loads((on_ray / "report.json").read_text()) == json.loads((threads / "report.json").read_text())
    assert folder_bytes(on_ray / "composites") == folder_bytes(threads / "composites")
    assert json.loads((on_ray / "build.json").read_text())["decoded_images"] == 6  # set-0003: header check, no decode


def test_a_ray_address_that_does_not_answer_is_one_clear_error(tmp_path):
    from iclora_data.cli import app

    source = many_sets(tmp_path / "SOURCE", 1)
    result = CliRunner().invoke(app, ["build", str(source), "--out", str(tmp_path / "OUT"), "--until", "compose",
                                      "--runner", "ray", "--ray-address", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert result.output.startswith("error: the Ray cluster at 127.0.0.1:1 does not answer")
    assert not (tmp_path / "OUT" / "report.json").exists()
