"""Errors a user must act on. Their message is one line that says what is wrong and what to do;
the CLI prints it as ``error: <message>`` and exits non-zero, without a traceback."""


class IcloraError(Exception):
    """A bad invocation or an input that stops the whole command (not a per-set problem)."""
