"""Named points where the crash-safety tests kill a run.

A promise such as "a kill at any point of the commit leaves the old or the new dataset whole" can
only be checked by killing a real process at each point. ``ICLORA_KILL_AT=<name>`` makes the process
send itself SIGKILL when it reaches the point of that name: no cleanup, no ``finally``, as a power
cut or the OOM killer would. Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "ICLORA_KILL_AT"


def crash_point(name: str) -> None:
    """Die here, at once, when ``ICLORA_KILL_AT`` names this point."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
