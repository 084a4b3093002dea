"""TLS on the delivery side, as a receiver built on Python's ssl module
(OpenSSL, behind aiosmtpd's STARTTLS) meets it. README "Security defaults":
TLS 1.2 and 1.3 only for delivery, and the agreed key exchange group is
counted (`postern_delivery_tls_total{group}`) and logged, as it is on the
listeners."""

import json
import os
import re
import smtplib
import ssl
import tempfile

import pytest

from conftest import Postern, Sink, certificate, metric, metric_samples, poll, send_as, server_context, wait_until


def opportunistic_route(domain, sink):
    """A `[[route]]` sending `domain` to `sink` with opportunistic TLS
    (STARTTLS when offered, RFC 7435), as mail to an MX host goes."""
    return f'[[route]]\ndomain = "{domain}"\nnext_hop = "127.0.0.1:{sink.port}"\ntls = "opportunistic"\n'


@pytest.fixture
def tls_1_1_sink(tmp_path):
    """A receiver that offers STARTTLS but speaks TLS 1.1 only. OpenSSL 3
    refuses TLS 1.1 at its default security level (SHA-1 signatures), so
    the level is 0, as a legacy server would run it."""
    ctx = server_context(certificate(tmp_path, "old-mx", names=["localhost"], ips=["127.0.0.1"]))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    s = Sink(tls_context=ctx)
    yield s
    s.stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_delivery_never_falls_to_tls_1_1(tls_1_1_sink):
    """A receiver that offers STARTTLS and cannot do better than TLS 1.1
    never gets the message: not over TLS 1.1, and not in plaintext after
    the failed handshake either. The attempt is deferred with the
    handshake failure as its reason, and so is the retry."""
    sink = tls_1_1_sink
    # The sink really serves TLS 1.1 and takes mail over it: a client that
    # speaks TLS 1.1 (Python's, at security level 0) delivers.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as s:
        s.starttls(context=ctx)
        assert s.sock.version() == "TLSv1.1"
        s.sendmail("control@example.org", ["control@old-tls.test"], b"Subject: control\r\n\r\nx\r\n")
    assert [(m["rcpt_tos"], m["tls"]) for m in sink.messages] == [(["control@old-tls.test"], "TLSv1.1")]
    assert sink.handshakes == ["TLSv1.1"]

    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=opportunistic_route("old-tls.test", sink)).start()
        p.read_admin_key()
        assert send_as(p, p.admin_key, "a@example.org", "a@example.org", rcpt="u@old-tls.test") == (250, "")
        # Retries come 1-2 s apart here; two deferred attempts show the
        # second one did not fall back to plaintext either.
        deferred = poll(
            lambda: json.loads(p.cli("events", "--json", "--recipient", "u@old-tls.test", "--kind", "deferred").stdout),
            lambda ev: len(ev) >= 2, timeout=30, what="two deferred attempts")
        for e in deferred:
            # STARTTLS was accepted and the handshake is what failed.
            assert "TLS handshake with 127.0.0.1" in e["detail"], e
            assert "(TLS policy: opportunistic)" in e["detail"], e
        assert [e["attempt"] for e in deferred[:2]] == [1, 2], deferred
        # The sink's side of it: every ClientHello Postern sent was refused
        # as an unsupported protocol, since it offered nothing below TLS 1.2
        # (RFC 8446 §4.2.1, RFC 5246 §E.1), not for a cipher or anything
        # else.
        failed = sink.failed_handshakes
        assert len(failed) >= 2 and set(failed) == {"UNSUPPORTED_PROTOCOL"}, failed
        # Each failed handshake is counted as one.
        assert metric(p, "postern_delivery_tls_total", result="handshake_failed", policy="opportunistic") >= 2
        # Nothing but the control message ever arrived, and no handshake
        # other than the control client's completed.
        assert [m["rcpt_tos"] for m in sink.messages] == [["control@old-tls.test"]]
        assert sink.handshakes == ["TLSv1.1"]
        queued = json.loads(p.cli("queue", "list", "--json").stdout)
        assert [m["recipients"][0]["email"] for m in queued] == ["u@old-tls.test"]
        p.stop()


@pytest.fixture
def secp384r1_sink(tmp_path):
    """A receiver that offers STARTTLS and agrees only to secp384r1 (P-384)
    for the key exchange, a group Postern's client offers but does not
    prefer: whatever Postern counts and logs must come from the handshake,
    not from its own preference."""
    ctx = server_context(certificate(tmp_path, "mx", names=["localhost"], ips=["127.0.0.1"]))
    ctx.set_ecdh_curve("secp384r1")
    s = Sink(tls_context=ctx)
    yield s
    s.stop()


def test_the_delivery_group_is_counted_and_both_sides_log_theirs(secp384r1_sink):
    sink = secp384r1_sink
    env = {k: v for k, v in os.environ.items() if k != "POSTERN_LOG"}
    env["POSTERN_LOG"] = "debug"
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=opportunistic_route("p384.test", sink)).start(env=env)
        p.read_admin_key()
        assert metric_samples(p, "postern_delivery_tls_total") == []
        # Submitted over STARTTLS by Python's client (OpenSSL 3.0 offers no
        # hybrid group and prefers X25519): the listener agrees X25519.
        assert send_as(p, p.admin_key, "a@example.org", "a@example.org", rcpt="u@p384.test") == (250, "")
        got = sink.wait_for(1)
        assert got[0]["rcpt_tos"] == ["u@p384.test"] and got[0]["tls"] == "TLSv1.3"
        # The counter is incremented right after the handshake, before the
        # transaction; polled for all the same.
        samples = poll(lambda: metric_samples(p, "postern_delivery_tls_total"), lambda s: s,
                       timeout=10, what="the delivery handshake counted")
        assert samples == [({"result": "opportunistic", "policy": "opportunistic", "group": "secp384r1"}, 1.0)], samples
        # Lines as `tracing` writes them: "DEBUG delivery{… domain=p384.test}:
        # postern_delivery::client: TLS established host=… group=…" and
        # "DEBUG postern_smtp::listener: TLS established peer=… group=…".
        delivery = re.compile(
            r"DEBUG delivery\{[^}]*domain=p384\.test\}: postern_delivery::client: TLS established host=127\.0\.0\.1 .*group=(\w+)")
        listener = re.compile(r"DEBUG postern_smtp::listener: TLS established peer=.*group=(\w+)")
        log = wait_until(lambda: (t := p.log.read_text(errors="replace")) and delivery.search(t) and t,
                         timeout=10, what="the delivery side's TLS line")
        assert [m.group(1) for m in delivery.finditer(log)] == ["secp384r1"], log[-3000:]
        assert [m.group(1) for m in listener.finditer(log)] == ["X25519"], log[-3000:]
        p.stop()
