"""Fast checks of the production wiring: retry policy, runner choice, deployment definition, CLI errors,
the rejects artifact, and the sweep of partial files a killed run leaves."""

from __future__ import annotations

import errno
import json

import pytest
from typer.testing import CliRunner

from tests._flows_helpers import many_sets


@pytest.mark.parametrize(("exc", "transient"), [
    (TimeoutError("read timed out"), True),
    (ConnectionResetError("reset by peer"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (OSError(errno.ENOSPC, "No space left on device"), False),  # a full disk stays full: one error at once
    (OSError(errno.EROFS, "Read-only file system"), False),
    (FileNotFoundError(errno.ENOENT, "No such file"), False),
    (PermissionError(errno.EACCES, "Permission denied"), False),
    (ValueError("panels 1 and 3 are near-duplicates"), False),
])
def test_only_transient_failures_are_retried(exc, transient):
    from flows.runners import is_transient

    assert is_transient(exc) is transient


def test_http_failures_retry_on_5xx_429_and_dropped_connections_only():
    import httpx

    from flows.runners import is_transient
    from iclora_data.errors import IcloraError

    request = httpx.Request("POST", "http://127.0.0.1:8000/v1/chat/completions")

    def status(code: int) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))

    assert is_transient(status(503)) and is_transient(status(429))
    assert not is_transient(status(400)) and not is_transient(status(401))
    assert is_transient(httpx.ReadTimeout("slow", request=request))
    assert is_transient(httpx.ConnectError("refused", request=request))
    assert not is_transient(IcloraError("the SOURCE does not exist"))


def test_unknown_runner_and_dead_ray_address_are_one_clear_error():
    from flows.runners import RunnerError, check_ray_address, make_task_runner

    with pytest.raises(RunnerError, match="unknown runner 'dask'"):
        make_task_runner("dask")
    with pytest.raises(RunnerError, match="needs --runner ray"):
        make_task_runner("threads", ray_address="ray://127.0.0.1:1")
    with pytest.raises(RunnerError, match="needs --runner ray"):
        make_task_runner("local", ray_address="ray://127.0.0.1:1")
    with pytest.raises(RunnerError, match=r"the Ray cluster at ray://127.0.0.1:1 does not answer"):
        check_ray_address("ray://127.0.0.1:1", timeout=2)
    from prefect.task_runners import ThreadPoolTaskRunner

    assert isinstance(make_task_runner("threads", workers=3), ThreadPoolTaskRunner)  # the old name of prefect
    assert isinstance(make_task_runner("prefect", workers=3), ThreadPoolTaskRunner)


def test_deployment_carries_schedule_parameters_and_one_run_at_a_time(tmp_path):
    from flows.deploy import build_deployment

    d = build_deployment("SRC", "OUT", {"until": "compose"}, cron="0 3 * * *", timezone="Europe/Paris",
                         name="nightly", lock_timeout=60)
    assert d.name == "nightly"
    assert d.schedules[0].schedule.cron == "0 3 * * *"
    assert d.schedules[0].schedule.timezone == "Europe/Paris"
    assert d.parameters["source"].endswith("SRC") and d.parameters["source"].startswith("/")
    assert d.parameters["config"] == {"until": "compose"} and d.parameters["lock_timeout"] == 60
    assert d.concurrency_limit == 1
    assert d.entrypoint == "flows.build_dataset.build_dataset"


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "61 * * * *"], "bad schedule: Invalid cron string"),
    (["--cron", "0 3 * * *", "--timezone", "Mars/Olympus"], "Invalid timezone"),
    (["--cron", "0 3 * * *", "--interval", "60"], "give exactly one schedule"),
    ([], "give exactly one schedule"),
    (["--interval", "-5"], "--interval must be a positive number"),
])
def test_deploy_rejects_bad_invocations_in_one_line(tmp_path, monkeypatch, args, message):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from iclora_data.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    source = many_sets(tmp_path / "SOURCE", 1)
    # no server configured, even when another test's Prefect harness is active in this session
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["deploy", str(source), "--out", str(tmp_path / "OUT"), "--until",
                                          "compose", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 or "error:" in result.output.splitlines()[0]


def test_deploy_without_a_prefect_server_is_a_one_line_error(tmp_path):
    # a fresh process: no test harness server can leak in; a wrong answer would serve forever, so time out
    import os
    import subprocess
    import sys

    source = many_sets(tmp_path / "SOURCE", 1)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = subprocess.run([sys.executable, "-m", "iclora_data.cli", "deploy", str(source), "--out", str(tmp_path / "OUT"),
                        "--until", "compose", "--cron", "0 3 * * *"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 2
    assert "schedules need a running Prefect server" in r.stderr


def test_deploy_refuses_a_missing_source(tmp_path):
    from iclora_data.cli import app

    result = CliRunner().invoke(app, ["deploy", str(tmp_path / "nope"), "--out", str(tmp_path / "OUT"),
                                      "--cron", "0 3 * * *"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_partial_files_of_a_killed_run_are_removed_and_finished_files_kept(tmp_path):
    from iclora_data.store import RunStore, atomic_path, remove_partial_files

    out = tmp_path / "OUT"
    store = RunStore(out)
    kept = store.put_json("panels", "ab" * 32, {"width": 1})
    with atomic_path(out / "composites" / "set-a.jpg") as tmp:
        tmp.write_bytes(b"whole")
    # the names a kill leaves behind mid-write (mkstemp in store.atomic_write_bytes and atomic_path)
    partial = [kept.parent / f".{kept.name}.k2j_9xq1.tmp", out / "composites" / ".set-b.a8f3kz0q.jpg",
               out / ".report.json.0abcdefg.tmp"]
    for p in partial:
        p.write_bytes(b"half")
    assert remove_partial_files(out) == len(partial)
    assert not any(p.exists() for p in partial)
    assert kept.exists() and (out / "composites" / "set-a.jpg").read_bytes() == b"whole"


def test_a_transient_compose_failure_is_retried_and_bad_data_is_not(tmp_path, monkeypatch, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import flows.build_dataset as build_module
    import iclora_data.compose as compose_module

    source = many_sets(tmp_path / "SOURCE", 2)
    (source / "broken").mkdir()
    (source / "broken" / "1.jpg").write_bytes(b"not a picture")
    (source / "broken" / "2.jpg").write_bytes(b"not a picture")
    real = compose_module.compose_set
    calls: list[str] = []

    def flaky(src, settings, store, **kwargs):
        calls.append(src.set_id)
        if src.set_id == "set-0000" and calls.count("set-0000") == 1:
            raise OSError(errno.EIO, "Input/output error")  # a disk or network share hiccup
        return real(src, settings, store, **kwargs)

    monkeypatch.setattr(compose_module, "compose_set", flaky)
    # one set per shard: a retry redoes its shard, so only the set that failed is done twice
    result = build_module.build_dataset(str(source), str(tmp_path / "OUT"), {"until": "compose"}, shard_size=1)
    assert calls.count("set-0000") == 2 and calls.count("set-0001") == 1
    assert result["counts"]["kept"] == 2 and result["counts"]["rejected"] == 1
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["iclora-rejects"])))
    assert any("broken" in str(a.data) and "rejected" in str(a.data) for a in artifacts)

    calls.clear()

    def bad(src, settings, store, **kwargs):
        calls.append(src.set_id)
        if src.set_id == "set-0001":
            raise ValueError(f"{src.set_id}: impossible panel")
        return real(src, settings, store, **kwargs)

    monkeypatch.setattr(compose_module, "compose_set", bad)
    # all sets in one shard: the surprise in one set must not take its shard-mates down
    result = build_module.build_dataset(str(source), str(tmp_path / "OUT2"), {"until": "compose"}, shard_size=10)
    assert sorted(calls) == ["broken", "set-0000", "set-0001"]  # each tried once: bad data is not retried
    report = json.loads((tmp_path / "OUT2" / "report.json").read_text())
    status = {s["set_id"]: (s["status"], s["reason"]) for s in report["sets"]}
    assert status["set-0000"][0] == "kept" and status["broken"][0] == "rejected"
    assert status["set-0001"] == ("rejected", "internal error while preparing this set (ValueError: set-0001: "
                                              "impossible panel); please report it")
    assert result["counts"]["kept"] == 1


def test_retrain_with_an_unknown_sample_preset_is_one_clear_error_before_any_work(tmp_path):
    from iclora_data.cli import app

    source = many_sets(tmp_path / "SOURCE", 1)
    result = CliRunner().invoke(app, ["retrain", str(source), "--out", str(tmp_path / "OUT"), "--lora-dir",
                                      str(tmp_path / "LORA"), "--model", "tiny-random", "--base", "tiny-random",
                                      "--sample-preset", "film-storyboardd"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "film-storyboardd" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "OUT" / "report.json").exists()


def test_retrain_samples_at_the_trained_grid_when_no_preset_is_named():
    from flows.retrain import sample_preset

    assert sample_preset({"compose": {"preset": None}}, None) is None  # the sampler reads training_config.json
    assert sample_preset({"compose": {"preset": "couple-profile"}}, None) == "couple-profile"
    assert sample_preset({"compose": {"preset": "couple-profile"}}, "font-design") == "font-design"


def test_the_flow_runs_one_task_per_shard_named_by_its_sets(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.build_dataset import build_dataset

    source = many_sets(tmp_path / "SOURCE", 3)
    state = build_dataset(str(source), str(tmp_path / "OUT"), {"until": "compose"}, shard_size=2, return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert sorted(r.name for r in runs) == ["prepare shard 0 (set-0000 … set-0001, 2 sets)",
                                            "prepare shard 1 (set-0002, 1 set)"]
    assert all(r.state is not None and r.state.is_completed() for r in runs)
