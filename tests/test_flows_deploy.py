"""Scheduled builds: `iclora deploy` against a real local Prefect server (SQLite, loopback, its own
PREFECT_HOME): the cron schedule fires, the second run does no work on unchanged data, a vanished
SOURCE fails the run clearly and leaves the published dataset alone, and overlapping writers of OUT
wait for the lock instead of interleaving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests._flows_helpers import REPO, folder_bytes, many_sets

SETS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """``prefect server start`` on loopback with SQLite in a private PREFECT_HOME; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Prefect server did not come up in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _client(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Session:
        def __enter__(self):
            self.settings = temporary_settings(updates={PREFECT_API_URL: url})
            self.settings.__enter__()
            self.client = get_client(sync_client=True)
            return self.client.__enter__()

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return _Session()


def _runs(url: str, deployment_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with _client(url) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def _wait_run(url: str, run_id, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _client(url) as client:
            run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout} s")


def _trigger(url: str, deployment_id, **parameters):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return run_deployment(deployment_id, parameters=parameters, timeout=0, as_subflow=False)


@pytest.mark.slow
def test_cron_deployment_runs_incrementally_fails_clearly_and_never_interleaves(prefect_server, tmp_path):
    from iclora_data.store import RunStore

    url = prefect_server
    source = many_sets(tmp_path / "SOURCE", SETS)
    out = tmp_path / "OUT"
    env = dict(os.environ, PREFECT_API_URL=url, PREFECT_RUNNER_POLL_FREQUENCY="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    serve_log = (tmp_path / "serve.log").open("wb")
    served = subprocess.Popen([sys.executable, "-m", "iclora_data.cli", "deploy", str(source), "--out", str(out),
                               "--cron", "* * * * *", "--name", "nightly", "--model", "tiny-random"],
                              cwd=tmp_path, env=env, stdout=serve_log, stderr=subprocess.STDOUT)
    try:
        deployment = None
        deadline = time.monotonic() + 120
        while deployment is None:
            assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the deployment was not registered in 120 s"
            time.sleep(1)
            with _client(url) as client:
                try:
                    deployment = client.read_deployment_by_name("build-dataset/nightly")
                except Exception:  # noqa: BLE001 - not registered yet
                    deployment = None
        assert deployment.schedules[0].schedule.cron == "* * * * *"

        # two runs fired by the schedule itself; read build.json after each
        builds: list[dict] = []
        seen: set = set()
        deadline = time.monotonic() + 200
        while len(builds) < 2:
            assert time.monotonic() < deadline, f"scheduled runs finished: {len(builds)} of 2 in 200 s"
            for run in _runs(url, deployment.id):
                if run.id not in seen and run.auto_scheduled and run.state and run.state.is_final():
                    assert run.state.is_completed(), run.state.message
                    seen.add(run.id)
                    builds.append(json.loads((out / "build.json").read_text()))
            time.sleep(1)
        assert builds[0]["decoded_images"] == 2 * SETS
        assert builds[0]["counts"]["kept"] == SETS
        assert builds[1]["decoded_images"] == 0  # unchanged SOURCE: nothing decoded or composed again
        assert builds[1]["finished_at"] >= builds[0]["finished_at"]
        published = folder_bytes(out / "dataset" / "data")

        # an overlapping writer: with lock_timeout 0 the run refuses, with a timeout it waits, never interleaves
        lock = RunStore(out).lock(timeout=-1)
        lock.__enter__()
        try:
            refused = _wait_run(url, _trigger(url, deployment.id, lock_timeout=0).id)
            assert refused.state.is_failed()
            assert "in use by another iclora run" in (refused.state.message or "")
            waiting = _trigger(url, deployment.id, lock_timeout=300)
            deadline = time.monotonic() + 120
            while True:
                with _client(url) as client:
                    state = client.read_flow_run(waiting.id).state
                if state and state.is_running():
                    break
                assert time.monotonic() < deadline, f"the waiting run never started: {state}"
                time.sleep(1)
            time.sleep(3)
            with _client(url) as client:
                assert client.read_flow_run(waiting.id).state.is_running()  # blocked on the lock
        finally:
            lock.__exit__(None, None, None)
        assert _wait_run(url, waiting.id).state.is_completed()

        # SOURCE vanished: the run fails with the reason; the published dataset stays as it was
        source.rename(tmp_path / "SOURCE-moved")
        broken = _wait_run(url, _trigger(url, deployment.id).id)
        assert broken.state.is_failed()
        assert f"SOURCE {source} does not exist" in (broken.state.message or "")
        assert folder_bytes(out / "dataset" / "data") == published
    finally:
        served.terminate()
        served.wait(timeout=30)
        serve_log.close()
