"""Scheduled builds: ``build_dataset`` served as a Prefect deployment on a cron (or interval) schedule.

``iclora deploy SOURCE --out OUT --cron "0 3 * * *"`` registers the deployment with the Prefect
server named by ``PREFECT_API_URL`` and serves it from this process (``flow.serve``): the server's
scheduler creates the runs, this process executes them. Each run is an ordinary incremental
build: the content-addressed run store finds every finished composite and caption, sets removed
from SOURCE leave OUT. Runs of one deployment never interleave: the deployment takes one run at a
time (later ones wait in the queue, visible in the UI as AwaitingConcurrencySlot) and the flow
holds the OUT lock (``lock_timeout``) against anything else writing OUT.

For work pools instead of a serving process, deploy the entrypoint
``flows.build_dataset:build_dataset`` with ``prefect deploy`` and the same parameters (``source``,
``out``, ``config``, ``lock_timeout``); the project ships no ``prefect.yaml`` yet.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from iclora_data.errors import IcloraError

DEFAULT_NAME = "scheduled"


class DeployError(IcloraError):
    pass


def check_schedule(cron: str | None, interval: float | None, timezone: str | None = None) -> None:
    """Exactly one of cron/interval, and a cron expression and time zone that parse."""
    if (cron is None) == (interval is None):
        raise DeployError("give exactly one schedule: --cron 'MIN HOUR DOM MON DOW' or --interval SECONDS")
    if interval is not None and interval <= 0:
        raise DeployError(f"--interval must be a positive number of seconds, got {interval}")
    if cron is not None or timezone is not None:
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=cron or "0 0 * * *", timezone=timezone)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise DeployError(f"bad schedule: {str(first['msg']).removeprefix('Value error, ')}") from None


def require_server() -> str:
    """Schedules only fire on a running Prefect server, never on the temporary one a bare flow starts."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise DeployError("schedules need a running Prefect server: start one with `prefect server start` "
                          "and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    return str(url)


def build_deployment(source: str, out: str, config: dict[str, Any] | None = None, *,
                     cron: str | None = None, interval: float | None = None, timezone: str | None = None,
                     name: str = DEFAULT_NAME, lock_timeout: float = 0) -> Any:
    """The ``build-dataset/<name>`` deployment object (a prefect RunnerDeployment), not yet registered."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.deployments.runner import EntrypointType

    from flows.build_dataset import build_dataset

    check_schedule(cron, interval, timezone)
    schedule = (CronSchedule(cron=cron, timezone=timezone) if cron is not None
                else IntervalSchedule(interval=dt.timedelta(seconds=float(interval or 0)), timezone=timezone))
    return build_dataset.to_deployment(
        name=name,
        schedules=[schedule],
        parameters={"source": os.path.abspath(source), "out": os.path.abspath(out), "config": config or {},
                    "lock_timeout": lock_timeout},
        # one run at a time; a run that comes due while another runs waits for it
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description=f"Incremental iclora build of {source} into {out}",
        tags=["iclora"],
        # by module, so the serving process finds the flow wherever it was started
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_build(source: str, out: str, config: dict[str, Any] | None = None, *,
                cron: str | None = None, interval: float | None = None, timezone: str | None = None,
                name: str = DEFAULT_NAME, lock_timeout: float = 0) -> None:
    """Register the deployment and execute its runs until interrupted (stopping pauses the schedule)."""
    require_server()
    deployment = build_deployment(source, out, config, cron=cron, interval=interval, timezone=timezone,
                                  name=name, lock_timeout=lock_timeout)
    from prefect import serve

    serve(deployment, print_starting_message=True)
