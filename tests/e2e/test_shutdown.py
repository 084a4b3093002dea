"""Graceful shutdown: SIGTERM stops accepting, tells idle sessions 421,
lets a message in the middle of DATA finish, and exits cleanly."""

import signal
import smtplib
import socket

from conftest import Postern, wait_until

import pytest


@pytest.mark.stops_server
def test_sigterm_is_graceful(postern, sink):
    idle = smtplib.SMTP("127.0.0.1", postern.ports["mx"], timeout=20)
    idle.ehlo("idle.test")

    busy = smtplib.SMTP("127.0.0.1", postern.ports["mx"], timeout=20)
    busy.ehlo("busy.test")
    busy.mail("sender@example.org")
    busy.rcpt("user@relay.test")
    code, _ = busy.docmd("DATA")
    assert code == 354
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")

    postern.proc.send_signal(signal.SIGTERM)
    # The idle session is told why it is being closed (the read waits for
    # the reply, up to the client's 20 s timeout).
    code, msg = idle.getreply()
    assert code == 421 and b"shutting down" in msg, msg
    # 421 closes the channel (RFC 5321 §3.8): EOF, not silence. 10 s is far
    # beyond the moment it takes; an open socket fails on the timeout.
    idle.sock.settimeout(10)
    assert idle.sock.recv(1) == b"", "the idle session was told 421 but left open"
    # New connections are no longer accepted (the listener closes as the
    # sessions are told; polled for a few seconds).
    def refused():
        try:
            socket.create_connection(("127.0.0.1", postern.ports["mx"]), timeout=2).close()
            return False
        except OSError:
            return True
    wait_until(refused, timeout=5, what="the listener refusing connections")
    # The message in DATA may finish and is acknowledged.
    busy.send(b"second half\r\n.\r\n")
    code, msg = busy.getreply()
    assert code == 250, msg
    busy.close()
    assert postern.proc.wait(timeout=20) == 0
    # It is delivered: before the exit, or after the next start.
    if not any(b"second half" in m["data"] for m in sink.messages):
        postern.start()
    assert any(b"second half" in m["data"] for m in sink.wait_for(1))


def test_sigterm_as_soon_as_the_ports_answer_is_graceful(sink, tmp_path):
    """The signal handlers are in place before any listener is bound: a
    SIGTERM sent the moment the ports accept (the server may still be
    starting its other parts) shuts it down cleanly, exit code 0, rather
    than killing it mid-start. Five starts, each signalled at once."""
    for i in range(5):
        workdir = tmp_path / f"n{i}"
        workdir.mkdir()
        p = Postern(workdir, sink.port).start()
        code = p.stop()
        assert code == 0 and not p.stop_failures, (code, p.stop_failures, p.log.read_text()[-2000:])
