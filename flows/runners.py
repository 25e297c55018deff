"""Where and how a build runs: the runner (``prefect``: Prefect tasks on a thread pool; ``ray``: the same
tasks on Ray; ``local``: no Prefect at all, a thread pool in this process) and the retry policy of the
Prefect tasks (transient I/O and HTTP failures only; bad data is reported, never retried)."""

from __future__ import annotations

import errno
import socket
from typing import Any, Literal
from urllib.parse import urlsplit

from iclora_data.errors import IcloraError

Runner = Literal["prefect", "local", "ray"]
RUNNERS: tuple[str, ...] = ("prefect", "local", "ray")
RUNNER_ALIASES = {"threads": "prefect"}  # the name of the prefect runner before --runner local existed
TASK_RETRIES = 3
RETRY_DELAYS = [1.0, 4.0, 16.0]  # seconds: backoff for a server or disk that needs a moment

# OSErrors that say something about the input or the machine, not the moment: retrying cannot help
# (a full disk stays full for the seconds a retry waits; it is one clear error at once)
_PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EINVAL,
                     errno.ENAMETOOLONG, errno.ELOOP, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class RunnerError(IcloraError):
    pass


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: I/O hiccups, timeouts, dropped connections, 5xx/429 answers."""
    if isinstance(exc, IcloraError):  # a user-facing verdict about the input or invocation
        return False
    module = type(exc).__module__.split(".")[0]
    if module in ("httpx", "requests", "urllib3"):
        status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None:
            return int(status) in _TRANSIENT_HTTP
        # no status: connection refused/reset, timeouts, protocol errors
        return any(word in type(exc).__name__ for word in ("Connect", "Timeout", "Transport", "Network",
                                                           "Protocol", "Read", "Write"))
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only when its error is transient."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the failed run's own exception, re-raised by result()
        return is_transient(exc)
    return False


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """A Ray address that does not answer is one clear error, before any work."""
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    default_port = 10001 if parts.scheme == "ray" else 6379
    host, port = parts.hostname, parts.port or default_port
    if not host:
        raise RunnerError(f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RunnerError(f"the Ray cluster at {address} does not answer ({exc.strerror or exc}); start it "
                          "(`ray start --head`) or fix --ray-address") from None


def check_runner(runner: str, ray_address: str | None = None) -> str:
    """The runner's canonical name; an unknown runner or a misplaced --ray-address is one clear error."""
    name = RUNNER_ALIASES.get(runner, runner)
    if name not in RUNNERS:
        raise RunnerError(f"unknown runner {runner!r}: use {', '.join(RUNNERS)}")
    if ray_address and name != "ray":
        raise RunnerError("--ray-address needs --runner ray")
    return name


def make_task_runner(runner: str = "prefect", workers: int = 2, ray_address: str | None = None,
                     ray_init: dict[str, Any] | None = None) -> Any:
    """The Prefect task runner: ``prefect`` (or ``threads``): a thread pool of ``workers`` on this machine.
    ``ray``: prefect-ray's RayTaskRunner on the cluster at ``ray_address``, or on a local Ray instance it
    starts when no address is given. (``local`` runs no Prefect, so it has no task runner.)"""
    name = check_runner(runner, ray_address)
    if name == "local":
        raise RunnerError("--runner local runs without Prefect: call iclora_data.build.run_build")
    if name == "prefect":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if ray_address:
        check_ray_address(ray_address)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise RunnerError("--runner ray needs prefect-ray and ray: pip install 'iclora[ray]'") from None
    return RayTaskRunner(address=ray_address, init_kwargs=ray_init or {})
