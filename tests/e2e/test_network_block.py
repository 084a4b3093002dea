"""The brute-force defence's network block over real SMTP: once one /24 has
failed `auth.block_network_after_failures` times (small here, from
addresses that each failed once), AUTH from any address of it, even with a
good key, gets `454 4.7.0` then `421` and the connection is closed (RFC 5321
§3.8: the server may close after a 421); another /24 keeps working."""

import base64
import json
import smtplib
import ssl
import tempfile

import pytest

from conftest import Postern, poll

THRESHOLD = 4


@pytest.fixture
def guarded(sink):
    # Only the network rule can block: per-address, spraying and stuffing
    # limits and the slow-down are out of reach of these few failures.
    auth = f"""
[auth]
block_network_after_failures = {THRESHOLD}
block_ip_after_failures = 1000
delay_after_failures = 1000
spraying_accounts = 1000
stuffing_sources = 1000
"""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=auth).start()
        p.read_admin_key()
        yield p
        p.stop()


def session(p, source):
    """An SMTP session from `source` after STARTTLS and EHLO."""
    s = smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=10, source_address=(source, 0))
    s.starttls(context=ssl.create_default_context(cafile=p.cert))
    s.ehlo("client.test")
    return s


def auth_plain(s, key):
    token = base64.b64encode(f"\0apikey\0{key}".encode()).decode()
    return s.docmd("AUTH", "PLAIN " + token)


def test_a_blocked_network_gets_421_and_is_closed_while_another_sends(guarded, sink):
    p = guarded
    # One failure from each of THRESHOLD - 1 addresses in 127.9.0.0/24.
    for i in range(1, THRESHOLD):
        with session(p, f"127.9.0.{i}") as s:
            assert auth_plain(s, "pst_wrong")[0] == 535
    # Below the threshold the network still logs in.
    with session(p, "127.9.0.100") as s:
        assert auth_plain(s, p.admin_key)[0] == 235
    with session(p, f"127.9.0.{THRESHOLD}") as s:
        assert auth_plain(s, "pst_wrong")[0] == 535

    # A new connection from an address of that /24 that never failed,
    # presenting a good key: 454, then 421, then the server closes.
    s = session(p, "127.9.0.200")
    code, text = auth_plain(s, p.admin_key)
    assert (code, text[:5]) == (454, b"4.7.0"), (code, text)
    code, text = s.getreply()
    assert code == 421, (code, text)
    # Closed: the stream ends (a server that kept it open would run into
    # the 10 s socket timeout, which raises instead).
    assert s.file.read() == b""
    s.close()

    # Another /24 is not affected: it logs in and sends.
    with session(p, "127.9.1.5") as s:
        assert auth_plain(s, p.admin_key)[0] == 235
        s.sendmail("app@example.org", ["user@example.net"], b"Subject: other network\r\n\r\nok\r\n")
    assert [m["rcpt_tos"] for m in sink.wait_for(1)] == [["user@example.net"]]

    # The audit entry is written in the background: polled for.
    blocked = poll(
        lambda: [
            e
            for e in json.loads(p.cli("audit", "--kind", "defense.", "--json").stdout)
            if e["kind"] == "defense.network_blocked"
        ],
        lambda entries: entries,
        what="a defense.network_blocked audit entry",
    )
    assert len(blocked) == 1, blocked
    assert "127.9.0.0/24" in blocked[0]["detail"], blocked
