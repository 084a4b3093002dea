"""README: logs go to stderr, and `POSTERN_LOG` (any `tracing` filter)
sets how much. The same STARTTLS session is logged at debug level ("TLS
established", with the agreed group) only when the filter asks for it;
the info line at start is there either way."""

import os
import re
import smtplib
import ssl
import tempfile

import pytest

from conftest import Postern


@pytest.mark.parametrize("level, debug_expected", [("debug", True), ("info", False), (None, False)])
def test_postern_log_sets_what_is_logged(sink, level, debug_expected):
    env = {k: v for k, v in os.environ.items() if k != "POSTERN_LOG"}
    if level is not None:
        env["POSTERN_LOG"] = level
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port).start(env=env)
        p.read_admin_key()
        with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
            s.starttls(context=ssl.create_default_context(cafile=p.cert))
            assert s.ehlo()[0] == 250
        p.stop()
        log = p.log.read_text(errors="replace")
    assert "Postern ready" in log, log[-2000:]
    assert ("TLS established" in log) == debug_expected, log[-2000:]
    if debug_expected:
        # The debug line names the agreed key exchange group.
        assert re.search(r"TLS established.* group=\w+", log), log[-2000:]
