"""TLS on the submission listener as Python's ssl module (OpenSSL) meets
it: TLS 1.3 and TLS 1.2 clients both get a session, and each session is
counted under its protocol version and the key exchange group agreed
(`postern_smtp_tls_sessions_total{version,group}`, README "Security
defaults")."""

import smtplib
import socket
import ssl

import pytest

from conftest import metric_samples, wait_until


def tls_sessions(p):
    """{(version, group): count} from postern_smtp_tls_sessions_total."""
    return {
        (labels.get("version"), labels.get("group")): value
        for labels, value in metric_samples(p, "postern_smtp_tls_sessions_total")
    }


def test_tls_sessions_are_counted_by_version_and_group(postern):
    for version, name in [(ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")]:
        ctx = ssl.create_default_context(cafile=postern.cert)
        ctx.minimum_version = ctx.maximum_version = version
        with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
            s.starttls(context=ctx)
            assert s.sock.version() == name
            assert s.ehlo()[0] == 250
    # OpenSSL 3.0 offers no hybrid post-quantum group and lists X25519
    # first, so X25519 is the server's choice for both sessions. The
    # counter is incremented as the handshake ends; polled for.
    counts = wait_until(
        lambda: (c := tls_sessions(postern))
        and c.get(("TLSv1.3", "X25519")) == 1 and c.get(("TLSv1.2", "X25519")) == 1 and c,
        timeout=10, what="both sessions counted")
    assert sum(counts.values()) == 2, counts


def starttls(p, ctx, session=None):
    """An smtplib session upgraded with STARTTLS by hand, so that a saved
    TLS session can be offered (smtplib's starttls() cannot); EHLO is sent
    again over TLS (RFC 3207 §4.2), which also reads any session ticket
    the server sent after the handshake."""
    s = smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30)
    s.ehlo("client.test")
    assert s.docmd("STARTTLS")[0] == 220
    s.sock = ctx.wrap_socket(s.sock, server_hostname="127.0.0.1", session=session)
    s.file = None
    s.helo_resp = s.ehlo_resp = None
    s.esmtp_features, s.does_esmtp = {}, False
    assert s.ehlo("client.test")[0] == 250
    return s


def test_tls_sessions_are_resumed_by_ticket_and_from_the_cache(postern):
    """README, performance: TLS session resumption, with tickets and a
    session cache on the shared rustls config. TLS 1.3 resumes with a
    ticket; TLS 1.2 without tickets (OP_NO_TICKET) can only resume by
    session id, from the server's cache."""
    for version, options in [(ssl.TLSVersion.TLSv1_3, 0), (ssl.TLSVersion.TLSv1_2, ssl.OP_NO_TICKET)]:
        ctx = ssl.create_default_context(cafile=postern.cert)
        ctx.minimum_version = ctx.maximum_version = version
        ctx.options |= options
        first = starttls(postern, ctx)
        assert not first.sock.session_reused
        session = first.sock.session
        first.quit()
        second = starttls(postern, ctx, session=session)
        try:
            assert second.sock.session_reused, f"{version.name}: a full handshake again"
            # The resumed session works like any other.
            assert second.noop()[0] == 250
        finally:
            second.quit()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_and_1_0_are_refused_on_every_listener(postern):
    """README: TLS 1.2 and 1.3 only, on every listener. Python's OpenSSL
    still offers TLS 1.1 or 1.0 at security level 0, so the ClientHello is
    sent; the server must end the handshake with an alert (the error names
    an alert received from the peer, not a local refusal such as
    NO_PROTOCOLS_AVAILABLE), and no session comes of it."""
    for role in ("submission", "submissions", "mx"):
        for version in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(postern.cert)
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ctx.maximum_version = version
            if role == "submissions":
                sock = socket.create_connection(("127.0.0.1", postern.ports[role]), timeout=30)
            else:
                s = smtplib.SMTP("127.0.0.1", postern.ports[role], timeout=30)
                s.ehlo("client.test")
                assert s.docmd("STARTTLS")[0] == 220
                sock = s.sock
            try:
                with pytest.raises(ssl.SSLError) as refused:
                    ctx.wrap_socket(sock, server_hostname="127.0.0.1")
            finally:
                sock.close()
            reason = refused.value.reason or ""
            assert "ALERT" in reason, (role, version.name, refused.value)
