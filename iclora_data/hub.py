"""Upload ``OUT/dataset/`` to a Hugging Face dataset repository.

One commit per publish through ``huggingface_hub``: shards and card are added, shards the
dataset no longer has are deleted, and the hub's own no-op detection (the preupload answer
carries each remote file's oid, compared with the local sha256 / git sha1) drops files that
did not change, so re-publishing an unchanged dataset makes no commit at all. The token comes
from the standard places (``HF_TOKEN``, the login cache) or the caller, and is never printed,
logged or written anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from iclora_data.publish import DATASET_DIR, USAGE_PLACEHOLDER, PublishError
from iclora_data.secrets import register_secret, scrub

REPO_TYPE = "dataset"
# ORG/NAME: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.', no '--' or '..', <= 96 chars
REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
REPO_ID = re.compile(rf"{REPO_PART}/{REPO_PART}")


@dataclass
class PushResult:
    repo_id: str
    revision: str
    url: str  # the dataset's page
    commit: str | None  # the head commit after the push
    committed: bool  # False when nothing had changed
    files: list[str]  # paths in the repo that the dataset consists of

    def summary(self) -> str:
        """One line for the CLI."""
        if not self.committed:
            return f"{self.repo_id}@{self.revision} is up to date (commit {self.commit}); nothing uploaded: {self.url}"
        return (f"published {len(self.files) - 1} shard(s) and the card to {self.repo_id}@{self.revision} "
                f"(commit {self.commit}): {self.url}")


def validate_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` or a PublishError, before anything touches the network."""
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id) or len(repo_id) > 96 \
            or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise PublishError(f"repo id {repo_id!r} is not of the form ORG/NAME (letters, digits, '-', '_', '.'; "
                           "at most 96 characters); pass --repo-id like my-org/my-iclora-sets")
    return repo_id


def dataset_files(dataset: Path) -> list[str]:
    """The files of ``OUT/dataset`` as repo paths, card first."""
    if not (dataset / "README.md").is_file() or not any(dataset.glob("data/*.parquet")):
        raise PublishError(f"{dataset} holds no written dataset (README.md and data/*.parquet); "
                           f"finish the build (or write the dataset) before publishing")
    return ["README.md", *sorted(p.relative_to(dataset).as_posix() for p in dataset.glob("data/*.parquet"))]


def one_line(text: object) -> str:
    """One line of a server's error text for a message, with every secret scrubbed (a hub may echo the
    Authorization header back in its error body). Scrubbed before shortening, so that a cut cannot
    leave the head of a secret that no longer matches."""
    return " ".join(scrub(str(text)).split())[:300]


def push_dataset(out: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 token: str | None = None, endpoint: str | None = None) -> PushResult:
    """Upload ``OUT/dataset`` to the dataset repo ``repo_id`` (created if missing) in one commit.

    ``revision`` is a branch (created from main if missing). Raises PublishError with one line
    when the repo id is malformed, there is no dataset, or the hub refuses; the local dataset
    is only read, so a failed upload leaves it intact and the same call can simply be re-run.
    """
    validate_repo_id(repo_id)
    out = Path(out)
    dataset = out / DATASET_DIR
    files = dataset_files(dataset)

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    # the token the client will send (given, HF_TOKEN or the login cache) is scrubbed from every message
    register_secret(token)
    register_secret(get_token())
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    try:
        url = str(api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True))
        if branch != "main":
            api.create_branch(repo_id, repo_type=REPO_TYPE, branch=branch, exist_ok=True)
        head = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha
        remote = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=branch))
        card = (dataset / "README.md").read_text(encoding="utf-8").replace(USAGE_PLACEHOLDER, repo_id)
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd("README.md", card.encode("utf-8")),
            *(CommitOperationAdd(f, dataset / f) for f in files[1:]),
            # shards of an earlier, larger dataset; nothing else in the repo is touched
            *(CommitOperationDelete(f) for f in sorted(remote - set(files))
              if re.fullmatch(r"data/[^/]+\.parquet", f)),
        ]
        info = api.create_commit(repo_id, operations, repo_type=REPO_TYPE, revision=branch,
                                 commit_message=f"Publish {len(files) - 1} shard(s) with iclora")
    except RepositoryNotFoundError:
        raise PublishError(f"the hub refused access to {repo_id}: check that you are logged in (HF_TOKEN or "
                           "`hf auth login`) with write access to it") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "no answer"
        if status == 401:
            raise PublishError(f"the hub did not accept your credentials for {repo_id}: set HF_TOKEN or run "
                               "`hf auth login` with a write token") from None
        raise PublishError(f"upload to {repo_id} failed (HTTP {status}: {one_line(e)}); "
                           f"nothing was committed and {dataset} is unchanged; run the same publish again") from None
    except ValueError as e:  # the hub rejected the card's metadata or an LFS object
        raise PublishError(f"the hub rejected the upload to {repo_id} ({one_line(e)}); "
                           f"{dataset} is unchanged") from None
    except OSError as e:  # network down, connection refused
        raise PublishError(f"upload to {repo_id} failed ({one_line(e)}); {dataset} is unchanged; "
                           "check the connection and run the same publish again") from None
    return PushResult(repo_id=repo_id, revision=branch, url=url, commit=info.oid,
                      committed=info.oid != head, files=files)
