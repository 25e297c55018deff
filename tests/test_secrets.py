"""The one scrubber: registered secrets and credential shapes leave no message, object or log line."""

from __future__ import annotations

import io
import logging

from iclora_data.secrets import REDACTED, register_secret, scrub, scrub_obj

SECRET = "plain-registered-secret-0123456789"  # no recognisable shape: only registration catches it


def test_registered_secret_is_scrubbed_from_text_and_json_like_data():
    assert scrub(f"bad key {SECRET}") == f"bad key {SECRET}"  # not registered yet: nothing to go by
    register_secret(SECRET)
    assert scrub(f"bad key {SECRET}!") == f"bad key {REDACTED}!"
    data = {"error": [f"echo {SECRET}"], SECRET: ("x", 1)}
    assert scrub_obj(data) == {"error": [f"echo {REDACTED}"], REDACTED: ["x", 1]}
    assert scrub("Authorization: Bearer abc.def") == f"Authorization: Bearer {REDACTED}"
    assert scrub("token hf_" + "a" * 30) == f"token {REDACTED}"


def test_log_records_are_scrubbed_when_created_including_tracebacks():
    register_secret(SECRET)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    log = logging.getLogger("iclora-test-secrets")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("server answered %s", f"401 key {SECRET} invalid")
        try:
            raise RuntimeError(f"echo {SECRET}")
        except RuntimeError:
            log.exception("caption failed")
    finally:
        log.removeHandler(handler)
    text = buf.getvalue()
    assert SECRET not in text
    assert f"401 key {REDACTED} invalid" in text and f"RuntimeError: echo {REDACTED}" in text
