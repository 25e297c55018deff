"""Errors a user must act on. Their message is one line that says what is wrong and what to do;
the CLI prints it as ``error: <message>`` and exits non-zero, without a traceback."""

import errno


class IcloraError(Exception):
    """A bad invocation or an input that stops the whole command (not a per-set problem)."""


class EnvironmentFailure(IcloraError):
    """Something outside the data failed (a disk full or read-only, a mount gone): the run fails and
    every previous output stays as it was."""


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do when that is clear."""
    where = f" ({exc.filename})" if exc.filename else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = {errno.ENOSPC: "; free some space and run the same command again",
            errno.EDQUOT: "; free some space (quota) and run the same command again",
            errno.EROFS: "; the file system is read-only"}.get(exc.errno or 0, "")
    return f"{what}{where}{hint}"
