"""The brute-force defence and `auth.deny_networks` at every door.

Wrong `Authorization: Bearer` keys over HTTP are slowed down and then block
their source exactly as failed SMTP AUTH does (one count for both doors),
while the right key from another address keeps working, and the block ends
after `auth.block_duration`. A client in a denied network cannot log in over
SMTP or HTTP with the right key, also when the listeners are dual-stack (IPv4
clients then arrive as IPv4-mapped IPv6 addresses); a client outside can.
AUTH on the mx listener is refused without any credential check: nothing is
counted or audited, and the session carries on unauthenticated.

Every client binds its own 127.x.y.z source address (all of 127/8 is local
on Linux), so each scenario has its own source and /24."""

import base64
import json
import smtplib
import ssl
import tempfile
import time

import pytest

from conftest import Postern, api, auth_plain

BLOCK_SECONDS = 3
AUTH_CONFIG = f"""
[auth]
delay_after_failures = 2
max_delay = "300ms"
block_ip_after_failures = 5
block_duration = "{BLOCK_SECONDS}s"
deny_networks = ["127.66.0.0/16"]
"""
# The defence's first slow-down step (defense.rs BASE_DELAY): a failure
# after `delay_after_failures` waits at least this long before its answer.
FIRST_DELAY = 0.25


def guarded_postern(sink, host="127.0.0.1"):
    d = tempfile.TemporaryDirectory()
    p = Postern(d.name, sink.port, extra_config=AUTH_CONFIG, host=host).start()
    p.read_admin_key()
    p.tmp = d
    return p


@pytest.fixture
def guarded(sink):
    p = guarded_postern(sink)
    yield p
    p.stop()
    p.tmp.cleanup()


def audit(p, kind="auth."):
    return json.loads(p.cli("audit", "--kind", kind, "--json").stdout)


def wait_audit(p, predicate, what, timeout=10):
    """Audit entries are appended after the reply; poll for them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        entries = audit(p)
        if any(predicate(e) for e in entries):
            return entries
        time.sleep(0.1)
    raise AssertionError(f"no audit entry {what}: {audit(p)}")


def test_wrong_bearer_keys_slow_down_then_block_their_source_until_the_block_ends(guarded):
    p = guarded
    attacker = "127.10.0.1"
    took = []
    for i in range(5):
        started = time.monotonic()
        status, body = api(p, f"pst_not-a-key-{i}", "GET", "/v3/scopes", source=attacker)
        took.append(time.monotonic() - started)
        assert status == 401, (i, status, body)
    fifth_sent = started
    # delay_after_failures = 2: the third failure and later are answered
    # only after the defence's slow-down.
    assert all(t >= FIRST_DELAY for t in took[2:]), took

    # block_ip_after_failures = 5: the source is blocked now, even with the
    # right key, at both doors.
    status, body = api(p, p.admin_key, "GET", "/v3/scopes", source=attacker)
    assert status == 429, (status, body)
    code, text = auth_plain(p, "apikey", p.admin_key, source=attacker)
    assert code == 454, (code, text)
    # The right key from another address, in the same /24 or another one,
    # is not affected.
    for elsewhere in ["127.10.0.2", "127.11.0.1"]:
        status, body = api(p, p.admin_key, "GET", "/v3/scopes", source=elsewhere)
        assert status == 200 and "mail.send" in body["scopes"], (elsewhere, status, body)
    assert auth_plain(p, "apikey", p.admin_key, source="127.11.0.1")[0] == 235

    # The block ends block_duration after the fifth failure, not before.
    deadline = time.monotonic() + BLOCK_SECONDS + 10
    while True:
        status, body = api(p, p.admin_key, "GET", "/v3/scopes", source=attacker)
        if status == 200:
            break
        assert status == 429, (status, body)
        assert time.monotonic() < deadline, "the block never ended"
        time.sleep(0.2)
    assert time.monotonic() - fifth_sent >= BLOCK_SECONDS
    assert auth_plain(p, "apikey", p.admin_key, source=attacker)[0] == 235

    entries = wait_audit(
        p, lambda e: e["kind"] == "auth.blocked" and e["client_ip"] == attacker, "auth.blocked")
    failures = [e for e in entries if e["kind"] == "auth.failure" and e["client_ip"] == attacker]
    assert len(failures) == 5 and all("mechanism=HTTP-BEARER" in e["detail"] for e in failures), failures
    assert any(e["kind"] == "defense.ip_blocked" and e["client_ip"] == attacker
               for e in audit(p, "defense.")), audit(p, "defense.")


def test_smtp_and_http_failures_share_one_count(guarded):
    p = guarded
    source = "127.12.0.1"
    for i in range(3):
        assert auth_plain(p, "apikey", f"pst_guess-{i}", source=source)[0] == 535
    for i in range(2):
        assert api(p, f"pst_guess-http-{i}", "GET", "/v3/scopes", source=source)[0] == 401
    # Three SMTP failures and two HTTP ones reach block_ip_after_failures.
    assert api(p, p.admin_key, "GET", "/v3/scopes", source=source)[0] == 429
    assert auth_plain(p, "apikey", p.admin_key, source=source)[0] == 454


def check_deny_networks(p):
    inside, outside = "127.66.1.1", "127.67.0.1"
    code, text = auth_plain(p, "apikey", p.admin_key, source=inside)
    assert code == 454, (code, text)
    status, body = api(p, p.admin_key, "GET", "/v3/scopes", source=inside)
    assert status == 429, (status, body)
    assert auth_plain(p, "apikey", p.admin_key, source=outside)[0] == 235
    status, body = api(p, p.admin_key, "GET", "/v3/scopes", source=outside)
    assert status == 200, (status, body)
    # Refused before the credentials were checked, and said why in the audit.
    entries = wait_audit(
        p, lambda e: e["kind"] == "auth.blocked" and e["client_ip"] == inside
        and "reason=denied_network" in e["detail"], "for the denied network")
    assert not [e for e in entries if e["client_ip"] == inside and e["kind"] != "auth.blocked"]
    # The peer address is recorded as the IPv4 address the client used.
    assert any(e["kind"] == "auth.success" and e["client_ip"] == outside for e in entries)


def test_a_denied_network_cannot_log_in_with_the_right_key(guarded):
    check_deny_networks(guarded)


def test_a_denied_network_cannot_log_in_through_dual_stack_listeners(sink):
    p = guarded_postern(sink, host="[::]")
    try:
        check_deny_networks(p)
    finally:
        p.stop()
        p.tmp.cleanup()


def test_auth_on_the_mx_listener_is_refused_unchecked(guarded, sink):
    p = guarded
    source = "127.20.0.1"
    ctx = ssl.create_default_context(cafile=p.cert)

    def plain(secret):
        return "PLAIN " + base64.b64encode(f"\0apikey\0{secret}".encode()).decode()

    # Plaintext and after STARTTLS, the right key and wrong ones: more
    # wrong attempts than block_ip_after_failures (5) allows.
    attempts = [p.admin_key] + [f"pst_wrong-{i}" for i in range(6)]
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30, source_address=(source, 0)) as s:
        code, ehlo = s.ehlo()
        assert b"AUTH" not in ehlo
        code, text = s.docmd("AUTH", plain(p.admin_key))
        # The mx role never takes AUTH (Postfix and Exim answer the same
        # 503 where AUTH is not offered).
        assert (code, text[:5]) == (503, b"5.5.1"), (code, text)
    for secret in attempts:
        with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30, source_address=(source, 0)) as s:
            s.starttls(context=ctx)
            code, ehlo = s.ehlo()
            assert b"AUTH" not in ehlo
            code, text = s.docmd("AUTH", plain(secret))
            assert (code, text[:5]) == (503, b"5.5.1"), (code, text)
            # The session carries on, unauthenticated: mail to a relay
            # domain is taken, relaying elsewhere is not.
            assert s.mail("someone@example.org")[0] == 250
            assert s.rcpt("elsewhere@example.com")[0] == 550
            assert s.rcpt("user@relay.test")[0] == 250
            assert s.data(b"Subject: after AUTH on mx\r\n\r\nhello\r\n")[0] == 250
    sink.wait_for(len(attempts))

    # Nothing was counted: the right key from the same address still logs
    # in on the submission listener (six counted failures would block it).
    assert auth_plain(p, "apikey", p.admin_key, source=source)[0] == 235
    # Nothing was audited as a login: once that login's own entry is
    # written, it is the only auth entry from this address.
    entries = wait_audit(
        p, lambda e: e["kind"] == "auth.success" and e["client_ip"] == source, "for the login")
    assert [e["kind"] for e in entries if e["client_ip"] == source] == ["auth.success"], entries
