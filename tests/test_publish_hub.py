"""``push_dataset`` against a loopback server that speaks the hub API the upload uses.

Why a loopback server: tests run offline and must not need a hub account, yet the upload
should go through the real ``huggingface_hub`` client, on the wire, exactly as it does against
huggingface.co. So this threaded HTTP server implements the endpoints that ``create_repo``,
``create_branch``, ``repo_info``, ``list_repo_files`` and ``create_commit`` call (repo create,
YAML validation, revision info, tree, preupload, git-LFS batch + PUT, NDJSON commit), keeps
repos, branches, commits and LFS objects in memory, and records every request. Xet storage
(the hub's newer chunk store, spoken by the Rust ``hf_xet`` client) is switched off for the
test so the client uses the classic LFS protocol the server implements; the hub still serves it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from _publish_helpers import make_finished_out

from iclora_data.hub import push_dataset
from iclora_data.publish import PublishError, write_dataset

TOKEN = "hf_loopbackSECRETtoken123456789"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """State of the loopback hub: repos -> branches -> commits, and an LFS object store."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, authorization header
        self.fail_commits = 0  # answer this many commit calls with 500
        self.token = TOKEN  # the one token this hub accepts
        self.echo_auth = False  # refuse commits with a 403 whose body echoes the caller's token, as some proxies do
        self.lock = threading.Lock()
        self.url = ""

    def head(self, repo: str, branch: str) -> dict[str, Any]:
        return self.repos[repo]["branches"][branch][-1]

    def commits(self, repo: str, branch: str = "main") -> list[dict[str, Any]]:
        return self.repos[repo]["branches"][branch]

    def new_commit(self, parent: dict[str, Any] | None, files: dict[str, dict[str, Any]], title: str) -> dict[str, Any]:
        blob = json.dumps([parent["oid"] if parent else None, sorted(files), title,
                           [files[f]["oid"] for f in sorted(files)]]).encode()
        return {"oid": hashlib.sha1(blob).hexdigest(), "files": files, "title": title}

    def file_bytes(self, repo: str, path: str, branch: str = "main") -> bytes:
        entry = self.head(repo, branch)["files"][path]
        return self.lfs[entry["sha256"]] if entry["lfs"] else entry["content"]


def make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def send(self, status: int, payload: Any = None, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_any(self, method: str) -> None:
            path = urlparse(self.path).path
            with hub.lock:
                hub.requests.append((method, path, self.headers.get("Authorization", "")))
            data = self.body()
            if self.headers.get("Authorization") != f"Bearer {hub.token}" and not path.startswith("/lfs/"):
                return self.send(401, {"error": "Invalid credentials"})
            parts = [unquote(p) for p in path.strip("/").split("/")]
            with hub.lock:
                return self.route(method, parts, data)

        def route(self, method: str, parts: list[str], data: bytes) -> None:
            if method == "POST" and parts == ["api", "repos", "create"]:
                req = json.loads(data)
                repo = f"{req['organization']}/{req['name']}"
                if repo in hub.repos:
                    return self.send(409, {"error": "You already created this dataset repo",
                                           "url": f"{hub.url}/datasets/{repo}"})
                attrs = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
                first = hub.new_commit(None, {".gitattributes": {"oid": git_blob_oid(attrs), "size": len(attrs),
                                                                 "lfs": False, "content": attrs}}, "initial commit")
                hub.repos[repo] = {"private": req.get("visibility") == "private", "branches": {"main": [first]}}
                return self.send(200, {"url": f"{hub.url}/datasets/{repo}", "name": repo})
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self.send(200, {"errors": [], "warnings": []})
            if method == "POST" and parts[0] == "lfs-batch":
                req = json.loads(data)
                objects = []
                for obj in req["objects"]:
                    entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in hub.lfs:  # already stored objects get no upload action
                        entry["actions"] = {"upload": {"href": f"{hub.url}/lfs/{obj['oid']}"}}
                    objects.append(entry)
                return self.send(200, {"transfer": "basic", "objects": objects})
            if method == "PUT" and parts[0] == "lfs":
                if hashlib.sha256(data).hexdigest() != parts[1]:
                    return self.send(400, {"error": "sha256 mismatch"})
                hub.lfs[parts[1]] = data
                return self.send(200, raw=b"")
            if parts[:2] != ["api", "datasets"] or len(parts) < 5:
                return self.send(404, {"error": f"no route {method} {'/'.join(parts)}"})
            repo, action, rest = f"{parts[2]}/{parts[3]}", parts[4], parts[5:]
            if repo not in hub.repos:
                return self.send(404, {"error": "Repository not found"},)
            branches = hub.repos[repo]["branches"]
            branch = rest[0] if rest else "main"
            if action == "branch" and method == "POST":
                if branch in branches:
                    return self.send(409, {"error": "Branch already exists"})
                branches[branch] = [branches["main"][-1]]
                return self.send(200, {})
            if branch not in branches:
                return self.send(404, {"error": "Invalid rev id"})
            head = branches[branch][-1]
            if action == "revision" and method == "GET":
                return self.send(200, {"id": repo, "sha": head["oid"], "private": hub.repos[repo]["private"],
                                       "siblings": [{"rfilename": f} for f in sorted(head["files"])],
                                       "lastModified": "2026-01-01T00:00:00.000Z", "tags": []})
            if action == "tree" and method == "GET":
                return self.send(200, [
                    {"type": "file", "path": p, "size": e["size"], "oid": e["oid"],
                     **({"lfs": {"oid": e["sha256"], "size": e["size"], "pointerSize": 130}} if e["lfs"] else {})}
                    for p, e in sorted(head["files"].items())])
            if action == "preupload" and method == "POST":
                modes = []
                for f in json.loads(data)["files"]:
                    lfs = f["path"].endswith(".parquet")
                    remote = head["files"].get(f["path"])
                    oid = (remote["sha256"] if remote["lfs"] else remote["oid"]) if remote else None
                    modes.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                  "shouldIgnore": False, "oid": oid})
                return self.send(200, {"files": modes, "commitOid": head["oid"]})
            if action == "commit" and method == "POST":
                if hub.echo_auth:
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    return self.send(403, {"error": f"token {token} may not write to {repo} (request id 42)"})
                if hub.fail_commits > 0:
                    hub.fail_commits -= 1
                    return self.send(500, {"error": "Internal Error - We're working hard to fix this"})
                files = dict(head["files"])
                lines = [json.loads(line) for line in data.splitlines() if line.strip()]
                for item in lines:
                    key, value = item["key"], item["value"]
                    if key == "file":
                        content = base64.b64decode(value["content"])
                        files[value["path"]] = {"oid": git_blob_oid(content), "size": len(content),
                                                "lfs": False, "content": content}
                    elif key == "lfsFile":
                        if value["oid"] not in hub.lfs:
                            return self.send(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                        files[value["path"]] = {"oid": git_blob_oid(b"pointer " + value["oid"].encode()),
                                                "sha256": value["oid"], "size": value["size"], "lfs": True}
                    elif key == "deletedFile":
                        files.pop(value["path"], None)
                commit = hub.new_commit(head, files, lines[0]["value"]["summary"])
                branches[branch].append(commit)
                return self.send(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{commit['oid']}",
                                       "commitOid": commit["oid"], "pullRequestUrl": None})
            return self.send(404, {"error": f"no route {method} {'/'.join(parts)}"})

        def do_GET(self) -> None:
            self.handle_any("GET")

        def do_POST(self) -> None:
            # the LFS batch endpoint lives outside /api: /datasets/ORG/NAME.git/info/lfs/objects/batch
            if self.path.split("?")[0].endswith(".git/info/lfs/objects/batch"):
                self.path = "/lfs-batch"
            self.handle_any("POST")

        def do_PUT(self) -> None:
            self.handle_any("PUT")

    return Handler


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub.constants as hf_constants

    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # the test session is offline for the real hub; this server is on loopback
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the standard place a user's token comes from
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def built_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_finished_out(tmp_path_factory.mktemp("hub"))
    write_dataset(out, max_shard_bytes=150_000)  # several shards, so stale-shard deletion is exercised
    return out


@pytest.fixture
def out(built_out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_out, tmp_path / "out"))


def local_snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_upload_then_unchanged_republish_makes_no_commit(hub: FakeHub, out: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    result = push_dataset(out, "my-org/iclora-sets", private=True, endpoint=hub.url)
    assert result.committed
    repo = hub.repos["my-org/iclora-sets"]
    assert repo["private"] is True
    assert result.commit == hub.head("my-org/iclora-sets", "main")["oid"]
    # every shard arrived byte for byte through LFS; the card names the repo in its usage snippet
    shards = sorted(p.relative_to(out / "dataset").as_posix() for p in (out / "dataset/data").glob("*.parquet"))
    assert len(shards) >= 2
    for shard in shards:
        assert hub.file_bytes("my-org/iclora-sets", shard) == (out / "dataset" / shard).read_bytes()
    card = hub.file_bytes("my-org/iclora-sets", "README.md").decode()
    assert 'load_dataset("my-org/iclora-sets"' in card
    assert set(result.files) == {"README.md", *shards}

    # the same dataset again: the hub's oids match the local files, so no new commit
    n_commits = len(hub.commits("my-org/iclora-sets"))
    again = push_dataset(out, "my-org/iclora-sets", endpoint=hub.url)
    assert not again.committed
    assert "up to date" in again.summary() and "published" in result.summary()
    assert again.commit == result.commit
    assert len(hub.commits("my-org/iclora-sets")) == n_commits

    # every request was authenticated with the token from HF_TOKEN; it is nowhere in output or files
    assert all(auth == f"Bearer {TOKEN}" for method, path, auth in hub.requests if not path.startswith("/lfs/"))
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert all(TOKEN.encode() not in data for data in local_snapshot(out).values())
    assert TOKEN not in card and TOKEN not in repr(result)


def test_changed_dataset_replaces_stale_shards(hub: FakeHub, out: Path) -> None:
    push_dataset(out, "my-org/sets", endpoint=hub.url)
    before = set(hub.head("my-org/sets", "main")["files"])
    write_dataset(out)  # one big shard now: the old multi-shard names must go
    result = push_dataset(out, "my-org/sets", endpoint=hub.url)
    assert result.committed
    files = set(hub.head("my-org/sets", "main")["files"])
    assert files == {".gitattributes", "README.md", "data/train-00000-of-00001.parquet"}
    assert before - files  # stale shards were deleted, .gitattributes untouched


def test_revision_branch(hub: FakeHub, out: Path) -> None:
    result = push_dataset(out, "my-org/sets", revision="v2", endpoint=hub.url)
    assert result.revision == "v2" and result.committed
    assert "README.md" in hub.head("my-org/sets", "v2")["files"]
    assert "README.md" not in hub.head("my-org/sets", "main")["files"]


def test_commit_failing_with_500_is_reported_and_rerun_succeeds(hub: FakeHub, out: Path) -> None:
    before = local_snapshot(out)
    hub.fail_commits = 1
    with pytest.raises(PublishError) as err:
        push_dataset(out, "my-org/sets", endpoint=hub.url)
    message = str(err.value)
    assert "500" in message and "my-org/sets" in message and "run the same publish again" in message
    assert "\n" not in message and TOKEN not in message
    assert len(hub.commits("my-org/sets")) == 1  # only the repo's initial commit
    assert local_snapshot(out) == before  # local data intact
    result = push_dataset(out, "my-org/sets", endpoint=hub.url)
    assert result.committed
    assert "README.md" in hub.head("my-org/sets", "main")["files"]


@pytest.mark.parametrize("bad", ["no-namespace", "org/name/extra", "org//name", "-org/name", "org/na me",
                                 "org/name.git", "org/na--me", "org/" + "x" * 100, "../etc/passwd"])
def test_malformed_repo_id_is_rejected_before_any_request(hub: FakeHub, built_out: Path, bad: str) -> None:
    with pytest.raises(PublishError, match="ORG/NAME"):
        push_dataset(built_out, bad, endpoint=hub.url)
    assert hub.requests == []


def test_wrong_token_is_a_clear_error(hub: FakeHub, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_value")
    with pytest.raises(PublishError, match="HF_TOKEN") as err:
        push_dataset(out, "my-org/sets", endpoint=hub.url)
    assert "hf_wrong_token_value" not in str(err.value)


def test_no_dataset_written_is_a_clear_error(hub: FakeHub, out: Path) -> None:
    shutil.rmtree(out / "dataset")  # built, but no dataset folder (yet)
    with pytest.raises(PublishError, match="no written dataset"):
        push_dataset(out, "my-org/sets", endpoint=hub.url)
    assert hub.requests == []


# a token with no recognisable shape: only registering it can keep it out of messages
PLAIN_TOKEN = "loopback-Plain-Secret-0123456789"


def test_token_echoed_by_the_hub_never_reaches_the_message(hub: FakeHub, out: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    hub.token, hub.echo_auth = PLAIN_TOKEN, True
    monkeypatch.setenv("HF_TOKEN", PLAIN_TOKEN)
    with pytest.raises(PublishError) as err:
        push_dataset(out, "my-org/sets", endpoint=hub.url)
    message = str(err.value)
    assert "403" in message and "may not write to my-org/sets" in message  # the server's words still help
    assert PLAIN_TOKEN not in message and "***" in message
    assert all(auth == f"Bearer {PLAIN_TOKEN}" for _, path, auth in hub.requests if not path.startswith("/lfs/"))


def test_cli_publish_against_an_echoing_hub_prints_one_line_without_the_token(hub: FakeHub, out: Path) -> None:
    import os
    import subprocess
    import sys

    hub.token, hub.echo_auth = PLAIN_TOKEN, True
    env = {**os.environ, "HF_TOKEN": PLAIN_TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "NO_PROXY": "127.0.0.1,localhost", "COLUMNS": "400",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # upload bars are progress, not the message
    r = subprocess.run([sys.executable, "-m", "iclora_data.cli", "publish", str(out), "--repo-id", "my-org/sets",
                        "--endpoint", hub.url], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0
    assert PLAIN_TOKEN not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: upload to my-org/sets failed (HTTP 403"), r.stderr
