"""Console logging of every role (gspo_async/process.py)."""

from __future__ import annotations

import io
import logging
import sys

from gspo_async.process import setup_logging


def test_console_logging_follows_the_current_streams(monkeypatch):
    setup_logging("role")
    log = logging.getLogger("gspo_async.test")
    first_out, first_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first_out)
    monkeypatch.setattr(sys, "stderr", first_err)
    log.info("hello")
    log.warning("careful")
    assert first_out.getvalue() == "[role] hello\n" and first_err.getvalue() == "[role] careful\n"
    # A stream replaced and closed after setup (a finished capture) must not break the next record.
    first_err.close()
    second_err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second_err)
    log.warning("still heard")
    assert second_err.getvalue() == "[role] still heard\n"
    setup_logging("role")  # called again: still one line per record
    log.warning("once")
    assert second_err.getvalue().count("once") == 1
